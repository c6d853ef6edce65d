"""Which reference returns put a run's returns on a normalised scale.

The normalised score is ``100 · (R - R_min) / (R_max - R_min)`` (0: a random policy,
100: an expert). Which ``R_min``, ``R_max`` is a choice that changes every number:

- ``d4rl``: D4RL's reference returns, the scale of the paper's tables. They exist for the
  Gym-MuJoCo tasks the paper reports (hopper, halfcheetah, walker2d); they apply to
  Minari's ``mujoco/<env>/*`` datasets and to this project's ``local/mujoco/<env>/*``.
- ``minari``: the dataset's own ``ref_min_score`` / ``ref_max_score`` metadata (Minari's
  reference policies for ``mujoco/*``, D4RL's numbers for the local locomotion data, the
  success scale for AntMaze and PointMaze).
- ``success``: the success rate in percent, the paper's AntMaze score: an evaluation
  episode scores 100 when it earns a positive (goal) reward within the time limit, else 0.
  Minari's ``D4RL/antmaze/*-v1`` evaluation env is continuing (reward 1 on every step near
  the goal), so there a normalised *return* is not the paper's score.
- ``raw``: no reference: "scores" are the undiscounted returns themselves.

``auto`` (the recipes' default) takes ``success`` for AntMaze, else ``d4rl`` where it
applies, else ``minari`` where the metadata has both scores, else ``raw``, and the run
records which one it used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "D4RL_REF_SCORES",
    "SCORE_REFERENCES",
    "ScoreReference",
    "d4rl_env",
    "resolve_score_reference",
]

# D4RL reference returns (random, expert) of the Gym-MuJoCo tasks, as in D4RL's
# infos.REF_MIN_SCORE / REF_MAX_SCORE: the paper's normalised scale.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}

SCORE_REFERENCES = ("auto", "d4rl", "minari", "success", "raw")

_MUJOCO_ID = re.compile(r"^(local/)?mujoco/(?P<env>[^/]+)/")


@dataclass(frozen=True)
class ScoreReference:
    """The reference returns a score is normalised with.

    Attributes:
        name: ``"d4rl"``, ``"minari"`` or ``"raw"``.
        ref_min: the return that scores 0 (``None`` for ``raw``).
        ref_max: the return that scores 100 (``None`` for ``raw``).
        source: what the numbers are, in words (e.g. ``"D4RL hopper"``).
    """

    name: str
    ref_min: float | None = None
    ref_max: float | None = None
    source: str = ""

    @property
    def is_raw(self) -> bool:
        return self.name == "raw"

    @property
    def is_success(self) -> bool:
        """Scores are 100 x per-episode success (0/1), not normalised returns."""
        return self.name == "success"

    def normalize(self, returns: np.ndarray | float) -> np.ndarray:
        """``100 · (R - ref_min) / (ref_max - ref_min)``; the returns unchanged when raw."""
        returns = np.asarray(returns, dtype=np.float64)
        if self.is_raw:
            return returns
        return 100.0 * (returns - self.ref_min) / (self.ref_max - self.ref_min)

    def describe(self) -> str:
        """One line for logs and tables, e.g. ``d4rl: D4RL hopper (0 = -20.27, 100 = 3234)``."""
        if self.is_raw:
            return "raw: undiscounted returns (no reference returns for this dataset)"
        if self.is_success:
            return f"success: {self.source}"
        return f"{self.name}: {self.source} (0 = {self.ref_min:.6g}, 100 = {self.ref_max:.6g})"

    def as_dict(self) -> dict[str, object]:
        """The fields a run records in its ``summary.json``."""
        return {
            "score_reference": self.name,
            "score_reference_min": self.ref_min,
            "score_reference_max": self.ref_max,
            "score_reference_text": self.describe(),
        }


def d4rl_env(dataset_id: str) -> str | None:
    """The D4RL task of a ``mujoco/<env>/*`` (or ``local/mujoco/<env>/*``) dataset id,
    when D4RL has reference returns for it; else ``None``."""
    match = _MUJOCO_ID.match(dataset_id)
    if match and match.group("env") in D4RL_REF_SCORES:
        return match.group("env")
    return None


def resolve_score_reference(
    dataset_id: str,
    metadata: Mapping[str, object],
    choice: str = "auto",
    success_task: bool = False,
) -> ScoreReference:
    """The :class:`ScoreReference` for ``dataset_id`` under ``choice``.

    Args:
        dataset_id: the Minari id (decides whether D4RL's returns apply).
        metadata: the dataset's Minari metadata (``ref_min_score``, ``ref_max_score``).
        choice: ``auto`` (``d4rl``, else ``minari``, else ``raw``), ``d4rl``, ``minari``
            or ``raw``. Asking for a reference the dataset lacks is an error.
        success_task: the dataset is AntMaze (scored by success with ``auto``).
    """
    if choice not in SCORE_REFERENCES:
        raise ValueError(f"score reference must be one of {SCORE_REFERENCES}, got {choice!r}.")
    if choice == "success" or (choice == "auto" and success_task):
        return ScoreReference(
            "success",
            0.0,
            1.0,
            "success rate in percent (100 for an episode that reaches the goal in the time "
            "limit, else 0)",
        )
    env = d4rl_env(dataset_id)
    ref_min, ref_max = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    has_minari = ref_min is not None and ref_max is not None
    if choice == "d4rl" or (choice == "auto" and env is not None):
        if env is None:
            raise ValueError(
                f"D4RL has no reference returns for {dataset_id!r} (only for "
                f"mujoco/<env>/* with env in {sorted(D4RL_REF_SCORES)}); use "
                "score_reference=minari or raw."
            )
        low, high = D4RL_REF_SCORES[env]
        return ScoreReference("d4rl", low, high, f"D4RL {env}")
    if choice == "minari" or (choice == "auto" and has_minari):
        if not has_minari:
            raise ValueError(
                f"{dataset_id!r} has no ref_min_score/ref_max_score in its Minari metadata; "
                "use score_reference=raw (or d4rl for a mujoco/<env>/* dataset)."
            )
        return ScoreReference(
            "minari", float(ref_min), float(ref_max), f"Minari metadata of {dataset_id}"
        )
    return ScoreReference("raw")

"""Minari datasets as TorchRL transition TensorDicts.

We read Minari's own episode API (``minari.load_dataset(...).iterate_episodes()``) rather
than :class:`torchrl.data.datasets.MinariExperienceReplay`: with tensordict 0.14 the
latter returns all-zero data for local datasets (it stores ``memmap_like`` of the data,
an empty copy), it writes a second full copy of every dataset to disk on each load, and
it neither flattens goal-conditioned observations nor converts float64 to float32.
The result here is one TED-format TensorDict (``observation``, ``action``,
``("next", "observation"/"reward"/"terminated"/"truncated"/"done")``) that is put in a
TorchRL replay buffer or kept on the training device as is.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import minari
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tqdm.auto import tqdm

from torchrl_dmg.data.local import dataset_path, is_complete, validate_dataset_id
from torchrl_dmg.data.scores import ScoreReference, resolve_score_reference
from torchrl_dmg.errors import RunRefused

# Dataset id pattern -> the config family (recipes/config/family/) with the spec's settings
# for it: a run whose family does not match fails early (data.check_family=false allows it).
_FAMILIES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^(local/)?mujoco/[^/]+/(expert|medium-expert)-v\d+$"), "locomotion_expert"),
    (re.compile(r"^(local/)?mujoco/"), "locomotion"),
    (re.compile(r"^(D4RL|local)/antmaze/"), "antmaze"),
    (re.compile(r"^(D4RL|local)/pointmaze/"), "pointmaze"),
)


def expected_family(dataset_id: str) -> str | None:
    """The config family whose settings the spec gives for ``dataset_id`` (``None``: not a
    dataset of a known domain)."""
    for pattern, family in _FAMILIES:
        if pattern.match(dataset_id):
            return family
    return None


def check_family(dataset_id: str, family: str) -> None:
    """Fail early when ``family`` is not the one whose settings the spec gives for
    ``dataset_id`` (e.g. PointMaze settings on a locomotion dataset)."""
    expected = expected_family(dataset_id)
    if expected is not None and family != expected:
        raise RunRefused(
            f"dataset={dataset_id} takes the spec's {expected!r} settings, but family={family}. "
            f"Pass family={expected} (or data.check_family=false to train with the "
            f"{family!r} settings anyway)."
        )


class DatasetUnavailableError(RuntimeError):
    """A dataset id that is neither stored locally nor reachable remotely."""


def open_dataset(dataset_id: str, *, download: bool = True):
    """Return the :class:`minari.MinariDataset` for ``dataset_id``; it never generates one.

    Order: a complete local copy (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``);
    Minari's remote server (``download=True``). Anything else fails early with a message
    that names the dataset and the ways to provide it. The ``local/...`` datasets this
    project makes are made by :mod:`torchrl_dmg.datagen` (the recipes ask
    :func:`torchrl_dmg.datagen.registry.ensure_dataset`, which makes a missing one first).
    """
    validate_dataset_id(dataset_id)  # before any file system or network action
    if is_complete(dataset_id):
        return minari.load_dataset(dataset_id)
    if dataset_path(dataset_id).exists():
        raise DatasetUnavailableError(
            f"Dataset '{dataset_id}' exists at {dataset_path(dataset_id)} but is incomplete or "
            "corrupt. Delete that one directory and download or regenerate it."
        )
    if dataset_id.startswith("local/"):
        raise DatasetUnavailableError(
            f"local dataset {dataset_id!r} is not stored locally (looked in "
            f"{dataset_path(dataset_id)}); make it with torchrl_dmg.datagen "
            "(`python recipes/make_dataset.py ...`, or a recipe, which makes it on first use)."
        )
    hint = (
        f"Dataset '{dataset_id}' is not stored locally (looked in {dataset_path(dataset_id)}). "
        "Either set MINARI_DATASETS_PATH to a directory that holds it, generate a local one "
        "(e.g. dataset=local/pointmaze/medium-v0, made on first use), or download it on a "
        f"machine with internet: `minari download {dataset_id}`."
    )
    if not download:
        raise DatasetUnavailableError(hint)
    host = _remote_host()
    if host is not None and not _reachable(host):
        raise DatasetUnavailableError(
            f"Minari's remote server ({host}) is unreachable, so '{dataset_id}' cannot be "
            f"downloaded here. {hint}"
        )
    try:
        minari.download_dataset(dataset_id)
    except Exception as err:  # network errors come in many types (requests, gcs, OSError)
        raise DatasetUnavailableError(
            f"Could not download '{dataset_id}' from Minari's remote server "
            f"({type(err).__name__}: {str(err)[:200]}). {hint}"
        ) from None
    return minari.load_dataset(dataset_id)


def _remote_host() -> str | None:
    """Host behind Minari's remote (``$MINARI_REMOTE``, default Hugging Face), if known."""
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    if remote.startswith("hf://"):
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].strip("/")
    return None  # another backend: let Minari try and report


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """A TCP connection to ``host:443`` within ``timeout``: without it Minari would retry for
    half a minute before failing."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _flatten_obs(obs, obs_keys: Sequence[str] | None) -> np.ndarray:
    if isinstance(obs, dict):
        if obs_keys is None:
            raise ValueError(
                f"The dataset has dict observations with keys {sorted(obs)}; give obs_keys "
                "(e.g. ['observation', 'desired_goal']) to choose which are concatenated."
            )
        missing = [k for k in obs_keys if k not in obs]
        if missing:
            raise KeyError(f"obs_keys {missing} not in the dataset's observations {sorted(obs)}.")
        return np.concatenate([np.asarray(obs[k]) for k in obs_keys], axis=-1)
    return np.asarray(obs)


def default_obs_keys(dataset) -> list[str] | None:
    """Observation then desired goal for goal-conditioned (dict) observations, else ``None``."""
    space = dataset.observation_space
    if isinstance(space, gym.spaces.Dict):
        return [k for k in ("observation", "desired_goal") if k in space.spaces]
    return None


def load_transitions(
    dataset, obs_keys: Sequence[str] | None = None, *, progress: bool = False
) -> TensorDict:
    """Every transition of a Minari dataset as one float32 TED TensorDict.

    Dict observations are flattened by concatenating ``obs_keys`` in order (the
    evaluation env uses the same order, see :func:`torchrl_dmg.envs.make_env`).
    """
    obs, next_obs, actions, rewards, terms, truncs, episode = [], [], [], [], [], [], []
    for ep in tqdm(
        dataset.iterate_episodes(),
        total=dataset.total_episodes,
        desc="loading episodes",
        disable=not progress,
    ):
        o = _flatten_obs(ep.observations, obs_keys)
        n = len(ep.actions)
        obs.append(o[:n])
        next_obs.append(o[1 : n + 1])
        actions.append(np.asarray(ep.actions).reshape(n, -1))
        rewards.append(np.asarray(ep.rewards).reshape(n))
        terms.append(np.asarray(ep.terminations).reshape(n))
        truncs.append(np.asarray(ep.truncations).reshape(n))
        episode.append(np.full(n, ep.id))

    def cat(xs, dtype):
        return torch.from_numpy(np.concatenate(xs)).to(dtype)

    terminated = cat(terms, torch.bool).unsqueeze(-1)
    truncated = cat(truncs, torch.bool).unsqueeze(-1)
    size = terminated.shape[0]
    return TensorDict(
        {
            "observation": cat(obs, torch.float32),
            "action": cat(actions, torch.float32),
            "episode": cat(episode, torch.int64),
            "next": {
                "observation": cat(next_obs, torch.float32),
                "reward": cat(rewards, torch.float32).unsqueeze(-1),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[size],
    )


#: the transition entries :func:`data_fingerprint` reads, in this order
FINGERPRINT_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "truncated"),
)


def data_fingerprint(data: TensorDictBase) -> str:
    """A short digest of a dataset's transitions as stored (before any normalisation,
    shift or goal marking): ``sha256:`` and the first 16 hex digits of SHA-256 over
    :data:`FINGERPRINT_KEYS`' bytes. Runs record it (``summary.json``, checkpoints), so
    two runs on one dataset id can be told apart when their data differ: a local dataset
    is made by simulation, and another CPU, thread count or MuJoCo build can give other
    episodes from the same command and seed (docs/datasets.md)."""
    digest = hashlib.sha256()
    for key in FINGERPRINT_KEYS:
        value = data.get(key)
        digest.update(repr((key, str(value.dtype), tuple(value.shape))).encode())
        digest.update(value.contiguous().numpy())  # its buffer, not a copy
    return f"sha256:{digest.hexdigest()[:16]}"


def observation_stats(data: TensorDict, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``std + eps`` of the dataset's observations (the spec's state normalisation)."""
    obs = data["observation"]
    return obs.mean(0), obs.std(0) + eps


def is_antmaze(minari_dataset) -> bool:
    """Whether a Minari dataset's env is an AntMaze (gymnasium-robotics' or D4RL's ant)."""
    spec = getattr(minari_dataset.spec, "env_spec", None)
    return spec is not None and "AntMaze" in str(spec.id)


@dataclass
class OfflineDataset:
    """A loaded offline dataset and what evaluating on it needs.

    Attributes:
        dataset_id: the Minari id it came from.
        data: every transition, TED format, float32, already normalised/shifted as requested.
        obs_keys: the dict-observation keys concatenated into ``observation`` (or ``None``).
        obs_loc, obs_scale: the normalisation applied to observations (identity if off);
            the evaluation env applies the same ones.
        reward_shift: added to every dataset reward (AntMaze: -1).
        goal_terminal: whether a transition that earns the sparse goal reward (1 before the
            shift) is marked terminated (AntMaze: D4RL's ``terminals``, see
            :func:`mark_goal_terminal`); online transitions get the same rule.
        minari_dataset: the underlying :class:`minari.MinariDataset`.
        score_reference: the reference returns of the normalised score
            (:mod:`torchrl_dmg.data.scores`); ``None``: resolved with ``"auto"``.
        fingerprint: :func:`data_fingerprint` of the transitions as loaded (``""``:
            not computed).
    """

    dataset_id: str
    data: TensorDict
    obs_keys: list[str] | None
    obs_loc: torch.Tensor
    obs_scale: torch.Tensor
    reward_shift: float
    minari_dataset: object
    score_reference: ScoreReference | None = None
    goal_terminal: bool = False
    fingerprint: str = ""

    @property
    def obs_dim(self) -> int:
        return self.data["observation"].shape[-1]

    @property
    def action_dim(self) -> int:
        return self.data["action"].shape[-1]

    @property
    def action_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        space = self.minari_dataset.action_space
        return (
            torch.as_tensor(space.low, dtype=torch.float32),
            torch.as_tensor(space.high, dtype=torch.float32),
        )

    @property
    def reference(self) -> ScoreReference:
        """The :class:`~torchrl_dmg.data.scores.ScoreReference` scores are normalised with."""
        if self.score_reference is None:
            meta = self.minari_dataset.storage.metadata
            self.score_reference = resolve_score_reference(
                self.dataset_id, meta, "auto", success_task=is_antmaze(self.minari_dataset)
            )
        return self.score_reference

    def normalized_score(self, returns: np.ndarray | torch.Tensor | float) -> np.ndarray:
        """``100 · (R - R_min) / (R_max - R_min)`` with :attr:`reference`'s returns."""
        returns = np.asarray(torch.as_tensor(returns).cpu(), dtype=np.float64)
        return self.reference.normalize(returns)

    @property
    def success_scored(self) -> bool:
        """Whether the paper's score on these data is the success rate in percent: AntMaze
        (an evaluation episode scores 100 when the ant reaches the goal within the time
        limit, else 0). Minari's ``D4RL/antmaze/*-v1`` evaluation env is continuing (reward
        1 on every step near the goal), so its normalised return is not that score."""
        return self.reference.is_success

    @property
    def has_reference_scores(self) -> bool:
        return not self.reference.is_raw


def mark_goal_terminal(data: TensorDictBase) -> TensorDictBase:
    """Mark every transition whose (unshifted) reward is the sparse goal reward, 1, as
    terminated and done, in place; returns ``data``.

    D4RL's AntMaze datasets set ``terminals`` exactly where the reward is 1, and the paper's
    code (like IQL's) trains on ``d4rl.qlearning_dataset``'s terminals: the TD target of a
    step into the goal is ``r - 1 = 0``, with no bootstrap. Minari's ``D4RL/antmaze/*-v1``
    and this project's AntMaze datasets never set terminations (the task is continuing),
    so this restores D4RL's convention. ``data``: TED transitions (``("next", "reward")``,
    ``("next", "terminated")``, ``("next", "done")``).
    """
    goal = data["next", "reward"] >= 1.0
    data["next", "terminated"] = data["next", "terminated"] | goal
    data["next", "done"] = data["next", "done"] | goal
    return data


def load_offline_dataset(
    dataset_id: str,
    *,
    obs_keys: Sequence[str] | None = None,
    normalize_obs: bool = False,
    obs_eps: float = 1e-3,
    reward_shift: float = 0.0,
    goal_terminal: bool = False,
    download: bool = True,
    progress: bool = True,
    score_reference: str = "auto",
) -> OfflineDataset:
    """Load (downloading if needed, never generating: see :func:`open_dataset`) and
    preprocess an offline dataset.

    Normalisation statistics are computed here, once, and applied to the stored
    transitions; the same ``obs_loc``/``obs_scale`` go to the evaluation env.
    ``score_reference`` (``auto`` | ``d4rl`` | ``minari`` | ``raw``) chooses the reference
    returns of the normalised score (:func:`~torchrl_dmg.data.scores.resolve_score_reference`).
    ``goal_terminal``: mark the transitions that earn the goal reward terminated
    (:func:`mark_goal_terminal`), before the shift.
    """
    dataset = open_dataset(dataset_id, download=download)
    if obs_keys is None:
        obs_keys = default_obs_keys(dataset)
    data = load_transitions(dataset, obs_keys, progress=progress)
    fingerprint = data_fingerprint(data)
    obs_dim = data["observation"].shape[-1]
    if normalize_obs:
        loc, scale = observation_stats(data, obs_eps)
        data["observation"] = (data["observation"] - loc) / scale
        data["next", "observation"] = (data["next", "observation"] - loc) / scale
    else:
        loc, scale = torch.zeros(obs_dim), torch.ones(obs_dim)
    if goal_terminal:
        mark_goal_terminal(data)
    if reward_shift:
        data["next", "reward"] = data["next", "reward"] + reward_shift
    return OfflineDataset(
        dataset_id=dataset_id,
        data=data,
        obs_keys=list(obs_keys) if obs_keys is not None else None,
        obs_loc=loc,
        obs_scale=scale,
        reward_shift=float(reward_shift),
        goal_terminal=bool(goal_terminal),
        minari_dataset=dataset,
        fingerprint=fingerprint,
        score_reference=resolve_score_reference(
            dataset_id, dataset.storage.metadata, score_reference, is_antmaze(dataset)
        ),
    )

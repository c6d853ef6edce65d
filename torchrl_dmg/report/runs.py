"""Recipe run directories as per-seed records.

A run directory (``recipes/offline.py`` writes one per run, Hydra's multirun one per job
under the sweep directory) holds ``config.yaml`` (the resolved config), ``metrics.csv``
(``train`` and ``eval`` rows) and, once finished, ``summary.json``. A run of ``seeds=N``
stacked agents holds N seeds: its eval rows carry ``normalized_score/s<seed>`` per seed;
its train rows are means over the seeds.

Each seed becomes one :class:`SeedRun`: dataset, algorithm (``algo`` in the config;
``dmg`` when absent, as in every run made before the baselines; ``<algo>+online`` for a
``recipes/finetune.py`` run, whose score is after its online steps), final score, final Q,
whether it diverged, its learning curve and, when the run logged them, its overestimation
diagnostic (``q_data_mean`` beside ``mc_return_mean``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = [
    "DEFAULT_ALGO",
    "ADDED_ALGO_KEYS",
    "ADDED_KEYS",
    "IGNORED_KEYS",
    "ONLINE_SUFFIX",
    "SeedRun",
    "find_run_dirs",
    "flatten",
    "load_runs",
    "load_seed_runs",
    "success_episodes",
]

DEFAULT_ALGO = "dmg"
#: suffix of the algorithm of a fine-tuning run (``recipes/finetune.py``: its config has
#: ``online_steps``): a column of its own, never a variant of the offline runs
ONLINE_SUFFIX = "+online"

# Config keys that differ between runs without making them different experiments: seeds,
# where and how fast a run computes, how it logs. Any other key that differs between runs
# of one dataset and algorithm makes a variant (a column of its own), and so do the keys of
# NUMERIC_KEYS below an ignored one.
IGNORED_KEYS = (
    "seed",
    "seeds",
    "resume",
    "device",
    "progress",
    "logger",
    "checkpoint",
    "compile",
    "eval.processes",
    "data.download",
    "hydra",
)

#: Config keys that some committed runs' configs lack, with the value those runs ran with:
#: a run whose config lacks one is read as having it, so that it is grouped with the runs
#: that set that value, not counted as a variant of its own.
ADDED_KEYS = {
    "data.goal_terminal": False,
    "network.value_init": None,
    "compile.matmul_precision": "highest",
}

#: The same, for the runs of one algorithm only: IQL's actor was TorchRL's TanhNormal until
#: ``iql.actor`` (default ``gaussian``, its authors' policy) came in.
ADDED_ALGO_KEYS = {"iql": {"iql.actor": "tanh_normal"}}

#: Keys below an ignored one that change the numbers, not only the speed: bf16 matmuls
#: (``compile.matmul_precision=high|medium`` on a CPU) make a variant of their own.
NUMERIC_KEYS = ("compile.matmul_precision",)

Q_KEYS = ("q_data_mean", "state_action_value")  # final Q: the diagnostic's, else the batch's


@dataclass
class SeedRun:
    """One seed of one run.

    Attributes:
        run_dir: the run directory.
        config_path: its resolved ``config.yaml``.
        config: that config, flattened to dotted keys.
        dataset, algo, seed: what was trained.
        steps: the step of the last eval row.
        score: the final normalised score (the last eval row's).
        final_q: the last logged ``q_data_mean`` (this seed's, else the run's), else the
            last ``state_action_value`` (the critic's mean Q on training batches).
        final_q_key: which of those ``final_q`` is.
        diverged: the final Q is not finite, or a train row flagged ``q_out_of_bounds``.
        curve_steps, curve_scores: the eval rows (the learning curve).
        diag_steps, q_data, mc_return: the overestimation diagnostic rows (empty when the
            run did not log it).
        score_reference: the reference the scores were normalised with, in words.
        finished: the run wrote its ``summary.json``.
        success_episodes: the episodes per evaluation when the score is a success rate
            (:func:`success_episodes`), else ``None``.
    """

    run_dir: Path
    config_path: Path
    config: dict[str, Any]
    dataset: str
    algo: str
    seed: int
    steps: int
    score: float
    final_q: float
    final_q_key: str | None
    diverged: bool
    curve_steps: np.ndarray
    curve_scores: np.ndarray
    diag_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    q_data: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mc_return: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score_reference: str = "not recorded"
    finished: bool = False
    success_episodes: int | None = None

    def value(self, key: str, default: Any = None) -> Any:
        """A config value by dotted key (``loss.mixture_coef``)."""
        return self.config.get(key, default)

    @property
    def has_diagnostic(self) -> bool:
        """Whether the run logged the overestimation diagnostic (``q_data_mean``)."""
        return self.diag_steps.size > 0

    def q_passes_mc_at(self) -> int | None:
        """The first diagnostic step at which the mean Q over the fixed sample rises above the
        same transitions' Monte-Carlo return from at or below it (where the critic leaves
        the data's returns). With PyTorch's initialisation the critics start near Q = 0, so
        with negative returns (AntMaze's r - 1) Q starts above and must first come down:
        being above from the start is not a crossing. With negative returns, critics started
        elsewhere (``network.value_init``) are read the same way: a first row above the
        return is not a crossing, and only a later rise from at or below it counts; with
        returns >= 0 the start is assumed at or below them. ``None`` if it never crosses,
        or the run did not log the diagnostic."""
        below = None  # whether Q was at or below the MC return at the last finite row
        for step, q, mc in zip(self.diag_steps, self.q_data, self.mc_return, strict=True):
            if not (np.isfinite(q) and np.isfinite(mc)):
                continue
            if below is None:
                below = mc >= 0.0  # Q ~ 0 at PyTorch's initialisation
            if q > mc and below:
                return int(step)
            below = q <= mc
        return None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"dotted.key": value}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run directory at or below ``paths`` (a directory with ``metrics.csv`` and
    ``config.yaml``; Hydra's ``.hydra`` folders and submitit's logs are not runs), sorted."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        candidates = [path / "metrics.csv", *path.rglob("metrics.csv")]
        for metrics in candidates:
            run = metrics.parent
            if metrics.is_file() and (run / "config.yaml").is_file() and ".hydra" not in run.parts:
                found.add(run.resolve())
    return sorted(found)


def success_episodes(run_dir: str | os.PathLike) -> int | None:
    """The number of episodes behind each evaluation of ``run_dir`` when its normalised
    score is a success rate in percent (AntMaze: every episode scores 0 or 100), else
    ``None``.

    A finished run says which in its ``summary.json`` (``score_reference``); an unfinished
    one is read from its config as the data layer resolves it: ``data.score_reference``
    ``success``, or ``auto`` (or absent) on an AntMaze dataset. The count is
    ``eval.episodes`` (per seed in a run of stacked seeds)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return None
    config = yaml.safe_load(config_path.read_text()) or {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    reference = summary.get("score_reference")
    if reference is None:
        choice = (config.get("data") or {}).get("score_reference", "auto")
        antmaze = "antmaze" in str(config.get("dataset", "")).lower()
        success = choice == "success" or (choice == "auto" and antmaze)
    else:
        success = reference == "success"
    episodes = (config.get("eval") or {}).get("episodes")
    return int(episodes) if success and episodes else None


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell_float(row: Mapping[str, str], key: str) -> float:
    """The value of ``key`` in a ``metrics.csv`` row as a float; NaN where the cell is
    missing or empty (rows of another kind leave the column blank)."""
    value = row.get(key)
    return float(value) if value not in (None, "") else math.nan


def _series(rows: list[dict[str, str]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of the rows that have ``key``."""
    have = [r for r in rows if r.get(key) not in (None, "")]
    steps = np.array([int(float(r["step"])) for r in have], dtype=np.int64)
    return steps, np.array([cell_float(r, key) for r in have], dtype=np.float64)


def _seed_key(rows: list[dict[str, str]], key: str, seed: int) -> str:
    """``key/s<seed>`` when the rows carry per-seed columns, else ``key``."""
    per_seed = f"{key}/s{seed}"
    return per_seed if rows and per_seed in rows[0] else key


def load_seed_runs(run_dir: str | os.PathLike) -> list[SeedRun]:
    """The :class:`SeedRun` of every seed of one run directory (none when it has no eval
    row yet)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) or {}
    algo = str(config.get("algo", DEFAULT_ALGO))  # missing: a run made before baselines
    flat = {**ADDED_KEYS, **ADDED_ALGO_KEYS.get(algo, {}), **flatten(config)}
    if "online_steps" in config:
        algo += ONLINE_SUFFIX
    flat["algo"] = algo
    rows = _read_rows(run_dir / "metrics.csv")
    rows.sort(key=lambda r: int(float(r["step"])))
    evals = [r for r in rows if r.get("kind") == "eval"]
    train = [r for r in rows if r.get("kind") == "train"]
    if not evals:
        return []
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    reference = summary.get("score_reference_text") or (
        f"data.score_reference={flat['data.score_reference']} (run unfinished)"
        if "data.score_reference" in flat
        else "not recorded (run predates data.score_reference)"
    )
    out_of_bounds = any(cell_float(r, "q_out_of_bounds") == 1.0 for r in train)
    first = int(config.get("seed", 0))
    seeds = [first + i for i in range(int(config.get("seeds", 1) or 1))]
    runs = []
    for seed in seeds:
        score_key = _seed_key(evals, "normalized_score", seed)
        curve_steps, curve_scores = _series(evals, score_key)
        final_q, final_q_key = math.nan, None
        for key in Q_KEYS:
            q_key = _seed_key(train, key, seed)
            _, q = _series(train, q_key)
            if q.size:
                final_q, final_q_key = float(q[-1]), q_key
                break
        diag_q_key = _seed_key(train, "q_data_mean", seed)
        diag_mc_key = _seed_key(train, "mc_return_mean", seed)
        diag = [r for r in train if r.get(diag_q_key) not in (None, "")]
        runs.append(
            SeedRun(
                run_dir=run_dir,
                config_path=config_path,
                config=flat,
                dataset=str(config.get("dataset", "?")),
                algo=algo,
                seed=seed,
                steps=int(curve_steps[-1]) if curve_steps.size else 0,
                score=float(curve_scores[-1]) if curve_scores.size else math.nan,
                final_q=final_q,
                final_q_key=final_q_key,
                diverged=out_of_bounds or (final_q_key is not None and not math.isfinite(final_q)),
                curve_steps=curve_steps,
                curve_scores=curve_scores,
                diag_steps=np.array([int(float(r["step"])) for r in diag], dtype=np.int64),
                q_data=np.array([cell_float(r, diag_q_key) for r in diag]),
                mc_return=np.array([cell_float(r, diag_mc_key) for r in diag]),
                score_reference=reference,
                finished=summary_path.is_file(),
                success_episodes=success_episodes(run_dir),
            )
        )
    return runs


def load_runs(paths: Iterable[str | os.PathLike]) -> list[SeedRun]:
    """Every seed of every run directory at or below ``paths``."""
    return [seed for run in find_run_dirs(paths) for seed in load_seed_runs(run)]


def ignored(key: str) -> bool:
    """Whether ``key`` is one of :data:`IGNORED_KEYS` (or below one), and not one of
    :data:`NUMERIC_KEYS`."""
    if key in NUMERIC_KEYS:
        return False
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED_KEYS)


def varying_keys(runs: Iterable[SeedRun]) -> list[str]:
    """The config keys (not :data:`IGNORED_KEYS`) whose values differ among ``runs``."""
    runs = list(runs)
    keys = sorted({k for r in runs for k in r.config if not ignored(k)})
    return [k for k in keys if len({_canonical(r.config.get(k)) for r in runs}) > 1]


def _canonical(value: Any) -> Any:
    """A hashable stand-in for a config value; ``1`` and ``1.0`` are the same setting."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return repr(value)

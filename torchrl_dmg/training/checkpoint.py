"""Reproducibility and checkpoints: seeding, RNG state, safe checkpoint files, the
contents of both recipes' checkpoints and where fine-tuning starts from an offline one.

* :func:`offline_checkpoint_state` / :func:`finetune_checkpoint_state`: one format, with a
  ``recipe`` field (``"offline"`` or ``"finetune"``) and a ``format`` version
  (:data:`CHECKPOINT_FORMAT`); :func:`migrate` brings a checkpoint of an earlier format to
  it, the one place that knows earlier formats (every load goes through it);

* :func:`save_checkpoint` / :func:`load_checkpoint`: load-tested writes that keep the
  previous checkpoint, never write a non-finite tensor, and fall back to the previous
  file when the latest is missing or corrupt (:func:`save_checkpoint_safely`,
  :func:`load_checkpoint_safely`);
* :func:`lock_run_dir`: a run directory belongs to one process at a time;
* :func:`restart_collection`: the online env restarts a seeded episode at every checkpoint,
  in an uninterrupted run exactly as in a resumed one (an env's internal state is not
  saved), so a killed and resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_dmg.errors import CheckpointWriteError, RunRefused, TrainingDiverged
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.training.seed_stacking import unstack_updater_state
from torchrl_dmg.training.updater import DMGUpdater


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device} was requested but CUDA is not available; use device=cpu."
        )
    return device


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` so that a good checkpoint always survives (load-tested, the previous
    one kept, never a non-finite tensor): :func:`save_checkpoint_safely`."""
    save_checkpoint_safely(path, state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint, or the previous one when ``path`` is missing or corrupt
    (:func:`load_checkpoint_safely`); tensors on ``map_location``."""
    state = load_checkpoint_safely(path)
    return state if str(map_location) == "cpu" else _to_device(state, map_location)


def load_checkpoint_if_any(path: str | os.PathLike) -> dict | None:
    """:func:`load_checkpoint`, or ``None`` when neither ``path`` nor its previous copy
    exists (a run that has not written one yet)."""
    if not Path(path).exists() and not previous_path(path).exists():
        return None
    return load_checkpoint(path)


def _to_device(state: Any, device: str | torch.device) -> Any:
    if torch.is_tensor(state) or isinstance(state, TensorDictBase):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    return state


#: the version of the checkpoint format written here (see :func:`migrate`)
CHECKPOINT_FORMAT = 2


def offline_checkpoint_state(step: int, updater: DMGUpdater, config: dict, dataset) -> dict:
    """What an offline checkpoint holds: enough to resume training or start fine-tuning."""
    return {
        "recipe": "offline",
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "updater": updater.state_dict(),
        "rng": rng_state(),
        "config": config,
        "obs_loc": dataset.obs_loc,
        "obs_scale": dataset.obs_scale,
        "dataset_id": config["dataset"],
        "dataset_fingerprint": dataset.fingerprint,
    }


def finetune_checkpoint_state(
    step: int,
    update_step: int,
    updater: DMGUpdater,
    config: dict,
    dataset,
    *,
    online_data: TensorDictBase,
    num_offline: int,
    schedule: dict[str, float],
    start_eval: dict | None,
) -> dict:
    """What a fine-tuning checkpoint holds: the online env steps (``step``) and gradient
    steps (``update_step``, the schedules' t), the updater, the online transitions collected
    so far (the offline ones are the dataset's ``num_offline``), the schedule's values, the
    start evaluation, the RNG state and the config."""
    return {
        "recipe": "finetune",
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "update_step": update_step,
        "updater": updater.state_dict(),
        "online_data": online_data,
        "num_offline": num_offline,
        "schedule": schedule,
        "start_eval": start_eval,
        "rng": rng_state(),
        "config": config,
        "obs_loc": dataset.obs_loc,
        "obs_scale": dataset.obs_scale,
        "dataset_id": config["dataset"],
        "dataset_fingerprint": dataset.fingerprint,
    }


# ---------------------------------------------------------------- earlier formats
#: config keys a run's config may lack (the key came later), with the value the run had
_CONFIG_DEFAULTS: dict[str, Any] = {
    "algo": "dmg",
    "data.check_family": True,
    "data.goal_terminal": False,
    "data.score_reference": "auto",
    "data.reward_scale": None,
    "network.value_init": None,
    "network.vmap_critics": "auto",
    "optim.actor_cosine": False,
    "optim.actor_cosine_horizon": None,
    "compile.skip_guards": None,
    "compile.matmul_precision": "highest",
    "eval.processes": False,
    "guard.check_interval": 1,
    "guard.stop_on_q_out_of_bounds": False,
}
#: the same, for the runs of one algorithm (format 1: IQL's actor was TorchRL's TanhNormal)
_ALGO_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {"iql": {"iql.actor": "tanh_normal"}}
_OFFLINE_CONFIG_DEFAULTS: dict[str, Any] = {
    "seeds": 1,
    "compile.updates_per_call": 1,
    "diagnostic.size": 1024,
    "diagnostic.seed": 0,
    "diagnostic.drop_truncated_tails": False,
}


def migrate_config(config: dict[str, Any], recipe: str) -> dict[str, Any]:
    """A run's config (a plain dict, as saved) in the current layout: the keys it lacks
    with the values it ran with, and DMG's ``loss`` group on DMG runs only (a baseline's
    γ is its own group's: ``iql.gamma``, ``td3bc.gamma``, ``bc.gamma``)."""
    defaults = {**_CONFIG_DEFAULTS, **(_OFFLINE_CONFIG_DEFAULTS if recipe == "offline" else {})}
    defaults.update(_ALGO_CONFIG_DEFAULTS.get(config.get("algo", "dmg"), {}))
    for dotted, value in defaults.items():
        *groups, key = dotted.split(".")
        node = config
        for group in groups:
            node = node.setdefault(group, {})
        node.setdefault(key, value)
    algo = config["algo"]
    if algo != "dmg" and "loss" in config:
        gamma = config.pop("loss")["gamma"]
        config.setdefault(algo, {}).setdefault("gamma", gamma)
    return config


def migrate(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` in the current format (:data:`CHECKPOINT_FORMAT`), in place; a dict
    that is no run checkpoint (no ``updater``) is returned as it is.

    Format 0 (no ``format`` field): the recipe is read from the keys (fine-tuning
    checkpoints hold ``update_step`` and ``online_data``); the config gets the keys that
    came later (:func:`migrate_config`); DMG's γ, saved as the loss's ``gamma`` buffer
    before it lived in the TorchRL value estimator, moves to ``_value_estimator.gamma``
    (one loss, or the stacked agents of ``recipes/offline.py seeds=N``). Format 1: the
    config gets the keys that came later (an IQL run's ``iql.actor``: ``tanh_normal``)."""
    if "updater" not in checkpoint or checkpoint.get("format") == CHECKPOINT_FORMAT:
        return checkpoint
    version = checkpoint.get("format", 0)
    if version not in (0, 1):
        raise RunRefused(
            f"a checkpoint of format {version} is newer than this code reads (format "
            f"{CHECKPOINT_FORMAT}); update torchrl-dmg to load it"
        )
    if version == 0:
        finetune = "update_step" in checkpoint or "online_data" in checkpoint
        checkpoint["recipe"] = "finetune" if finetune else "offline"
        updater = checkpoint["updater"]
        if "gamma" in updater.get("loss", {}):
            updater["loss"]["_value_estimator.gamma"] = updater["loss"].pop("gamma")
        stacked = updater.get("stacked")
        if stacked is not None and "gamma" in stacked.keys():
            stacked.rename_key_("gamma", ("_value_estimator", "gamma"))
    if "config" in checkpoint:
        migrate_config(checkpoint["config"], checkpoint["recipe"])
    checkpoint["format"] = CHECKPOINT_FORMAT
    return checkpoint


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_offline_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """An offline checkpoint (``recipes/offline.py`` or the fine-tuning recipe's offline phase)."""
    state = load_checkpoint(checkpoint_file(path))
    if state.get("recipe") != "offline":
        raise ValueError(f"{checkpoint_file(path)} is not an offline DMG checkpoint.")
    return state


def offline_start_state(
    path: str | os.PathLike, loss: DMGLoss, seed: int | None = None
) -> dict[str, Any]:
    """The updater state to fine-tune from: the offline checkpoint ``path``'s; for a
    seed-stacked offline run (``recipes/offline.py seeds=N``) the agent of seed ``seed``,
    whose weights also land in ``loss``."""
    checkpoint = load_offline_checkpoint(path)
    state = checkpoint["updater"]
    if "stacked" not in state:
        return state
    saved = checkpoint["config"]
    seeds = [saved["seed"] + i for i in range(saved["seeds"])]
    if seed is None or seed not in seeds:
        raise ValueError(
            f"{path} holds {len(seeds)} agents trained together (seeds {seeds}); "
            f"choose the one to fine-tune with checkpoint_seed=<one of {seeds}>"
            + ("." if seed is None else f" (got {seed}).")
        )
    return unstack_updater_state(state, seeds.index(seed), loss)


# ---------------------------------------------------------------- one process per run directory
#: the lock file of a run directory (it holds the PID of the process that owns the run)
LOCK_NAME = ".lock"
_held_locks: dict[Path, int] = {}


def lock_run_dir(run_dir: str | os.PathLike) -> None:
    """Own ``run_dir`` (made if missing) for the rest of this process: an exclusive
    ``flock`` on ``run_dir/.lock``, which then holds this PID. The kernel releases the lock
    when the process ends, however it ends, so a killed run leaves no stale lock. Taking
    it again in the same process does nothing; a directory another process owns is
    refused in one line (:class:`~torchrl_dmg.errors.RunRefused`) naming that process."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _held_locks:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunRefused(
            f"{run_dir} is in use by process {holder} (a run writes there now); wait for it "
            "to end, or give this run another directory (hydra.run.dir=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held_locks[run_dir] = fd  # held (fd open) until the process exits


# ---------------------------------------------------------------- exact resume of collection
def restart_collection(collector: Any, seed: int) -> None:
    """Start a new episode in ``collector``'s env, seeded with ``seed``, leaving the global
    random generators as they were.

    A resumed run cannot continue the episode that was running when its checkpoint was
    written (the simulator's state is not in the checkpoint): it starts a new one from
    ``seed``. An uninterrupted run calls this right after each checkpoint, so that both
    runs collect the same transitions; the global RNG state (exploration noise, batch
    sampling) is restored afterwards, as the resumed run restores it from the checkpoint.
    """
    state = rng_state()
    collector.env.set_seed(seed)
    collector.reset()
    set_rng_state(state)


def seed_before_collector(env: Any, seed: int) -> None:
    """Seed ``env`` before a collector is built on it: the collector resets the env in its
    constructor, and an unseeded first reset draws its start state from OS entropy (two
    runs with one seed then differ from the first online step)."""
    state = rng_state()
    env.set_seed(seed)
    set_rng_state(state)


# ---------------------------------------------------------------- safe writes and reads
def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: ``<name>.prev<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors in ``state`` (nested dicts, lists, tensors
    and TensorDicts) holding a NaN or an infinity."""
    bad: list[str] = []
    if isinstance(state, TensorDictBase):
        state = state.to_dict()
    if torch.is_tensor(state):
        if state.is_floating_point() and state.numel() and not torch.isfinite(state).all():
            bad.append(prefix or "<tensor>")
    elif isinstance(state, dict):
        for key, value in state.items():
            bad += non_finite_tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            bad += non_finite_tensors(value, f"{prefix}[{i}]")
    return bad


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted write of ``path`` left behind
    (``.<name>.*.tmp`` beside it, as :func:`~torchrl_dmg.recording.atomic_write` names
    them); returns what was deleted. Only one process writes a run directory."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def save_checkpoint_safely(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` so that a good checkpoint always survives.

    * a state holding a NaN or an infinity is never written
      (:class:`~torchrl_dmg.errors.TrainingDiverged`; the previous checkpoint stays);
    * the new file is written beside ``path``, fsynced, and loaded back (a load test)
      before it replaces anything;
    * the checkpoint it replaces is kept as :func:`previous_path` until the next one is
      whole, so a corrupt latest file still has a fallback (:func:`load_checkpoint_safely`);
    * a failed write (disk full, quota) removes its partial file and raises
      :class:`~torchrl_dmg.errors.CheckpointWriteError` in one line; stale temporaries of
      an earlier, killed write are cleaned first.
    """
    path = Path(path)
    bad = non_finite_tensors(state)
    if bad:
        raise TrainingDiverged(
            f"refusing to write {path}: {len(bad)} non-finite tensor(s) (first: {bad[0]}); "
            f"the last good checkpoint is {_describe(path)}."
        )
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.new.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        torch.load(tmp, map_location="cpu", weights_only=False, mmap=True)  # the load test
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({_short(err)}; disk full?); nothing "
            f"was lost: the last good checkpoint is {_describe(path)}. Free space, then "
            "resume the run."
        ) from err
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_checkpoint_safely(
    path: str | os.PathLike, *, warn: Callable[[str], None] = print
) -> dict[str, Any]:
    """``torch.load(path)`` in the current format (:func:`migrate`); when ``path`` is
    missing, truncated or not a checkpoint, the previous checkpoint (:func:`previous_path`)
    with a one-line warning, or a one-line :class:`~torchrl_dmg.errors.RunRefused` naming
    the file when there is none."""
    path = Path(path)
    try:
        return _load(path)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        problem = "is missing" if not path.exists() else f"is unreadable ({_short(err)})"
        previous = previous_path(path)
        if previous.is_file():
            try:
                state = _load(previous)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError):
                pass
            else:
                warn(
                    f"[dmg] WARNING: {path} {problem}; using the previous checkpoint "
                    f"{previous} (step {state.get('step', '?')})."
                )
                return state
        raise RunRefused(
            f"the checkpoint {path} {problem} (truncated or corrupt), and there is no "
            "earlier checkpoint beside it to fall back to."
        ) from err


def _load(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a checkpoint dict")
    return migrate(state)


def _describe(path: Path) -> str:
    """``path`` (or its previous copy) and its step, for an error message."""
    for candidate in (path, previous_path(path)):
        if candidate.is_file():
            try:
                step = torch.load(candidate, map_location="cpu", weights_only=False).get("step")
            except Exception:  # noqa: BLE001 - a description must not fail
                continue
            return f"{candidate} (step {step})"
    return "none (no checkpoint was written yet)"


def _short(err: BaseException) -> str:
    """The first line of ``err``, without torch's C++ source locations."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "PytorchStreamWriter failed" in str(err) or "enforce fail" in text:
        text = "the file system refused the write"
    return text[:160]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

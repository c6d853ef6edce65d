"""Reproducibility and checkpoints: seeding, RNG state, atomic checkpoint files, the
offline checkpoint's contents and where fine-tuning starts from one."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.recording import atomic_write
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
    """Write ``state`` with ``torch.save`` atomically (:func:`~torchrl_dmg.recording.atomic_write`):
    a crash never leaves a half-written file."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    return torch.load(path, map_location=map_location, weights_only=False)


def offline_checkpoint_state(step: int, updater: DMGUpdater, config: dict, dataset) -> dict:
    """What an offline checkpoint holds: enough to resume training or start fine-tuning."""
    return {
        "step": step,
        "updater": updater.state_dict(),
        "rng": rng_state(),
        "config": config,
        "obs_loc": dataset.obs_loc,
        "obs_scale": dataset.obs_scale,
        "dataset_id": config["dataset"],
    }


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_offline_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """An offline checkpoint (``recipes/offline.py`` or the fine-tuning recipe's offline phase)."""
    state = load_checkpoint(checkpoint_file(path))
    if "updater" not in state or "config" not in state:
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
    seeds = [saved["seed"] + i for i in range(saved.get("seeds", 1))]
    if seed is None or seed not in seeds:
        raise ValueError(
            f"{path} holds {len(seeds)} agents trained together (seeds {seeds}); "
            f"choose the one to fine-tune with checkpoint_seed=<one of {seeds}>"
            + ("." if seed is None else f" (got {seed}).")
        )
    return unstack_updater_state(state, seeds.index(seed), loss)

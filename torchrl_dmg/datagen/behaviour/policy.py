"""Behaviour policies as data-collection tools: loading a trained actor, acting with it
(stochastic, as D4RL collected) and evaluating it; the files of a training run
(checkpoints, ``progress.csv``)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor

from torchrl_dmg.datagen.behaviour.tasks import resolve_env_name
from torchrl_dmg.modules import make_sac_actor
from torchrl_dmg.recording import atomic_write


# ---------------------------------------------------------------- running a behaviour actor
def load_behaviour_actor(path: str | os.PathLike) -> tuple[ProbabilisticActor, dict]:
    """Rebuild the actor saved in a ``checkpoints/step_*.pt`` file.

    Returns ``(actor, meta)``; ``meta`` is the checkpoint without the weights (``env``,
    ``step``, ``obs_dim``, ``act_dim``, ``num_cells``, ``eval_return_mean`` ...).
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    act_dim = int(ckpt["act_dim"])
    low = torch.as_tensor(ckpt.get("action_low", [-1.0] * act_dim), dtype=torch.float32)
    high = torch.as_tensor(ckpt.get("action_high", [1.0] * act_dim), dtype=torch.float32)
    spec = Bounded(low, high, shape=(act_dim,))
    actor = make_sac_actor(int(ckpt["obs_dim"]), act_dim, spec, tuple(ckpt["num_cells"]))
    actor.load_state_dict(ckpt["actor"])
    actor.eval()
    meta = {k: v for k, v in ckpt.items() if k != "actor"}
    return actor, meta


@torch.no_grad()
def act(
    actor: ProbabilisticActor,
    obs: np.ndarray,
    deterministic: bool,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Actions of ``actor`` for a batch of observations ``[B, obs_dim]`` (or one ``[obs_dim]``).

    ``deterministic``: ``tanh(loc)`` scaled to the bounds (the evaluation action).
    Otherwise a sample of the TanhNormal, as D4RL collected its data; the Gaussian noise
    is drawn from ``generator`` (the global torch RNG when ``None``), so a seeded
    generator gives reproducible datasets. Returns float32 actions of the same batch shape.
    """
    obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
    single = obs_t.ndim == 1
    if single:
        obs_t = obs_t.unsqueeze(0)
    dist = actor.get_dist(TensorDict({"observation": obs_t}, batch_size=obs_t.shape[:1]))
    if deterministic:
        action = dist.deterministic_sample
    else:
        noise = torch.randn(dist.loc.shape, generator=generator, dtype=dist.loc.dtype)
        action = dist.loc + dist.scale * noise
        for transform in dist.transforms:
            action = transform(action)
    action = action.numpy().astype(np.float32, copy=False)
    return action[0] if single else action


def evaluate_actor(
    actor: ProbabilisticActor,
    env_name: str,
    *,
    episodes: int = 10,
    max_steps: int | None = None,
    seed: int = 0,
    deterministic: bool = True,
) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes (episode ``i`` seeded ``seed + i``),
    the episodes stepped side by side so that each actor call is one batch.
    ``max_steps``: a time limit below Gymnasium's (1000 steps for the v5 tasks)."""
    env_id = resolve_env_name(env_name)
    kwargs = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
    envs = [gym.make(env_id, **kwargs) for _ in range(episodes)]
    generator = torch.Generator().manual_seed(seed)
    try:
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
        returns = np.zeros(episodes, dtype=np.float64)
        active = list(range(episodes))
        while active:
            actions = act(actor, np.stack([obs[i] for i in active]), deterministic, generator)
            still = []
            for i, a in zip(active, actions, strict=True):
                obs[i], reward, terminated, truncated, _ = envs[i].step(a)
                returns[i] += float(reward)
                if not (terminated or truncated):
                    still.append(i)
            active = still
    finally:
        for env in envs:
            env.close()
    return returns


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


_PROGRESS_COLUMNS = (
    "step",
    "eval_return_mean",
    "eval_return_std",
    "wall_s",
    "updates_per_s",
    "env_steps_per_s",
    "num_updates",
    "alpha",
    "entropy",
    "loss_qvalue",
    "loss_actor",
)


def read_progress(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_progress(path: Path, rows: list[dict]) -> None:
    lines = [",".join(_PROGRESS_COLUMNS)]
    lines += [",".join(str(row.get(c, "")) for c in _PROGRESS_COLUMNS) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:08d}.pt"


def evaluated_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, float, Path]]:
    """``(step, eval_return_mean, checkpoint path)`` of every evaluated checkpoint of a
    :func:`~torchrl_dmg.datagen.behaviour.trainer.train_sac` run, in step order (its ``progress.csv``); an error if there is none."""
    run_dir = Path(run_dir)
    rows = read_progress(run_dir / "progress.csv")
    if not rows:
        raise ValueError(f"{run_dir} has no evaluated checkpoints yet (no progress.csv rows).")
    return [
        (int(r["step"]), float(r["eval_return_mean"]), checkpoint_path(run_dir, int(r["step"])))
        for r in rows
    ]

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


class PortableActions:
    """The deterministic action of a behaviour actor (``tanh(loc)`` within the bounds, as
    :func:`act` with ``deterministic=True`` gives it, to ~1e-5), computed so that every
    machine gets the same bits: the data a simulated dataset holds must not depend on the
    CPU that made it.

    Why: a float32 matmul (MKL's, or any BLAS's) sums its products in an order that
    depends on the CPU's vendor, vector units and thread count, and one different last bit
    in an action sends a MuJoCo ant elsewhere a few hundred steps later. On this project's
    two machines, a Xeon and an AMD EPYC, the same command made AntMaze large-play data
    with 1,172 and 1,194 episodes; on one machine, MKL's reproducible mode
    (``MKL_CBWR=COMPATIBLE``) alone changed the data.

    How: the MLP runs in float64, each layer as ``bias + sum_i x[:, i] * W[:, i]`` taken in
    index order by elementwise NumPy operations: every multiply and add is one IEEE-754
    rounding whatever the vector width, with no reduction whose order a library chooses.
    The result is rounded to float32 at the end, which also absorbs the last-bit
    differences of ``tanh`` between math libraries (a float64 ulp moves the float32
    result with probability ~1e-9). The parameters are read once, at construction: build
    it from a frozen actor (a loaded behaviour policy).
    """

    def __init__(self, actor: ProbabilisticActor) -> None:
        leaves = [type(m).__name__ for m in actor.modules() if not list(m.children())]
        linears = [m for m in actor.modules() if isinstance(m, torch.nn.Linear)]
        mlp = ["Linear", "ReLU"] * (len(linears) - 1) + ["Linear"]
        if not linears or leaves[: len(mlp)] != mlp or "Linear" in leaves[len(mlp) :]:
            raise ValueError(
                "PortableActions takes a ReLU-MLP SAC actor (torchrl_dmg.modules."
                f"make_sac_actor); got the modules {leaves}"
            )
        act_dim = linears[-1].out_features // 2  # (loc, scale) halves; loc comes first
        with torch.no_grad():
            weights = [m.weight.detach().double().numpy() for m in linears]
            biases = [m.bias.detach().double().numpy() for m in linears]
        weights[-1], biases[-1] = weights[-1][:act_dim], biases[-1][:act_dim]
        # W^T rows: row i holds the weights of input i, contiguous for the sums below
        self.layers = [
            (np.ascontiguousarray(w.T), b.copy()) for w, b in zip(weights, biases, strict=True)
        ]
        spec = actor.spec["action"]
        low = np.asarray(spec.space.low, dtype=np.float64)
        high = np.asarray(spec.space.high, dtype=np.float64)
        # tanh's [-1, 1] mapped onto the bounds, or None for [-1, 1] itself
        self.affine = (
            None
            if np.all(low == -1.0) and np.all(high == 1.0)
            else ((high + low) / 2, (high - low) / 2)
        )
        self.lim = 1.0 - float(torch.finfo(torch.float32).resolution)  # TorchRL's safe tanh
        self.obs_dim, self.act_dim = linears[0].in_features, act_dim

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Float32 actions ``[B, act_dim]`` of float32 observations ``[B, obs_dim]``."""
        x = np.asarray(obs, dtype=np.float32).astype(np.float64)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"expected observations [B, {self.obs_dim}], got {x.shape}")
        product = np.empty(0)
        for k, (w_t, b) in enumerate(self.layers):
            y = np.repeat(b[None], len(x), axis=0)
            if product.shape != y.shape:
                product = np.empty_like(y)
            for i in range(w_t.shape[0]):
                np.multiply(x[:, i : i + 1], w_t[i], out=product)
                y += product
            x = np.maximum(y, 0.0) if k < len(self.layers) - 1 else y
        t = np.clip(np.tanh(x), -self.lim, self.lim)
        if self.affine is not None:
            t = self.affine[0] + self.affine[1] * t
        return t.astype(np.float32)


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

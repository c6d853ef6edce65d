"""Behaviour policies for D4RL-style Gym-MuJoCo datasets, trained online with TorchRL's SAC.

D4RL collected its locomotion datasets with policies from an online SAC run (rlkit:
256-256 ReLU networks, double Q, automatic entropy tuning, one gradient step per env
step): *medium* from a checkpoint at about a third of expert return, *expert* from the
final policy, *medium-replay* from everything that run's replay buffer saw until the
medium checkpoint. :func:`train_sac` reproduces such a run with stock TorchRL pieces
(:class:`~torchrl.envs.GymEnv`, a :class:`~torchrl.collectors.Collector`,
:class:`~torchrl.data.TensorDictReplayBuffer` on a
:class:`~torchrl.data.LazyTensorStorage`, :class:`~torchrl.objectives.SACLoss`,
:class:`~torchrl.objectives.SoftUpdate`) and keeps what building those datasets needs:

* ``out_dir/checkpoints/step_<steps:08d>.pt``: the actor and its deterministic return,
  every ``checkpoint_interval`` env steps (:func:`~torchrl_dmg.datagen.behaviour.policy.load_behaviour_actor`,
  :func:`~torchrl_dmg.datagen.behaviour.policy.act`);
* ``out_dir/transitions/``: every transition collected, in collection order, with the
  env step it was collected at, in a TorchRL :class:`~torchrl.data.LazyMemmapStorage`
  (:func:`~torchrl_dmg.datagen.behaviour.transitions.load_transitions`);
* ``out_dir/progress.csv``: one row per checkpoint;
* ``out_dir/state.pt``: the full trainer state, so that ``train_sac(..., resume=True)``
  continues an interrupted run (the replay buffer is rebuilt from the transitions).

Speed (one CPU thread): the update is SACLoss's forward, one backward of the summed
losses and a step of each network's fused Adam, as in TorchRL's SAC example, run by the
project's :class:`~torchrl_dmg.training.updater.ActorCriticUpdater`
(:func:`~torchrl_dmg.datagen.behaviour.sac.make_sac_updater`). By default the whole step runs under
``torch.compile`` with the ``aot_eager`` backend, which removes TensorDict's per-op Python
overhead but runs the ATen kernels eagerly.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, ParallelEnv, SerialEnv, TransformedEnv
from tqdm.auto import tqdm

from torchrl_dmg.datagen.behaviour.policy import (
    atomic_torch_save,
    checkpoint_path,
    evaluate_actor,
    load_behaviour_actor,
    read_progress,
    write_progress,
)
from torchrl_dmg.datagen.behaviour.sac import (
    SACSettings,
    check_settings,
    load_updater_state,
    make_sac_updater,
)
from torchrl_dmg.datagen.behaviour.tasks import MIRROR_AUGMENTATIONS, resolve_env_name
from torchrl_dmg.datagen.behaviour.transitions import TransitionStore, replay_entries, store_rows
from torchrl_dmg.modules import make_sac_actor, make_sac_qvalue
from torchrl_dmg.training.checkpoint import (
    restart_collection,
    rng_state,
    seed_before_collector,
    set_rng_state,
)
from torchrl_dmg.training.guards import StopRequest

__all__ = ["SACSettings", "train_sac"]  # SACSettings: re-exported, train_sac's options


def _load_state(out_dir: Path, env_id: str, resume: bool) -> dict[str, Any] | None:
    """The saved trainer state to resume (``None``: a fresh start, whose stale leftovers of
    an earlier run cut short before its first state are cleared)."""
    state_path = out_dir / "state.pt"
    if state_path.is_file():
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a run (state.pt); pass resume=True to continue it "
                "or choose another out_dir."
            )
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["env"] != env_id:
            raise ValueError(f"{out_dir} holds a {state['env']} run, not {env_id}.")
        return state
    for stale in ("transitions", "checkpoints"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    (out_dir / "progress.csv").unlink(missing_ok=True)
    return None


def _augmentation(env_id: str, s: SACSettings) -> Callable[[dict], dict] | None:
    """What makes the extra replay entries of a batch of rows: the task's mirror images
    (``mirror_augment``), or nothing."""
    if not s.mirror_augment:
        return None
    if env_id not in MIRROR_AUGMENTATIONS:
        raise ValueError(
            f"mirror_augment=True needs a mirror-symmetric task "
            f"({', '.join(MIRROR_AUGMENTATIONS)}), not {env_id}."
        )
    return MIRROR_AUGMENTATIONS[env_id]


def _make_envs(env_id: str, num_envs: int, processes: bool):
    """The training env(s): one TorchRL GymEnv, or ``num_envs`` of them batched."""

    def make() -> TransformedEnv:
        resolve_env_name(env_id)  # registers the project's tasks in a fresh worker process
        return TransformedEnv(GymEnv(env_id), DoubleToFloat())

    if num_envs == 1:
        return make()
    return (ParallelEnv if processes else SerialEnv)(num_envs, make)


def _warm_start(
    actor: nn.Module,
    path: str | os.PathLike,
    *,
    obs_dim: int,
    act_dim: int,
    num_cells: tuple[int, ...],
) -> None:
    """Load an earlier actor's weights into ``actor``; a clear error when its sizes differ."""
    source, meta = load_behaviour_actor(path)
    got = (int(meta["obs_dim"]), int(meta["act_dim"]), tuple(int(c) for c in meta["num_cells"]))
    if got != (obs_dim, act_dim, num_cells):
        raise ValueError(
            f"init_actor={path} has obs_dim, act_dim, num_cells = {got}, but this run has "
            f"{(obs_dim, act_dim, num_cells)}; warm-start from an actor of the same task "
            "and network size (network.num_cells)."
        )
    actor.load_state_dict(source.state_dict())


@torch.no_grad()
def _sync_actor(actor: nn.Module, train_actor: nn.Module) -> None:
    """Copy the trained weights into the acting (CPU) actor; nothing when they are one."""
    if actor is not train_actor:
        for dst, src in zip(actor.parameters(), train_actor.parameters(), strict=True):
            dst.copy_(src)


@dataclass
class _Window:
    """Throughput since the last checkpoint row."""

    update_time: float = 0.0
    updates: int = 0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)


class _SACRun:
    """One :func:`train_sac` call: the env, the networks and updater, the transition store
    and replay buffer, and the loop's bookkeeping."""

    def __init__(self, env_id: str, total_steps: int, out_dir: Path, s: SACSettings) -> None:
        self.stop: StopRequest | None = None  # set by train_sac
        self.env_id, self.total_steps, self.out_dir, self.s = env_id, total_steps, out_dir, s
        self.device = torch.device(s.device)
        self.state = _load_state(out_dir, env_id, s.resume)
        self.num_cells = tuple(int(c) for c in s.num_cells)
        self.seed = s.seed
        if self.state is not None:
            self.num_cells, self.seed = tuple(self.state["num_cells"]), int(self.state["seed"])
        out_dir.mkdir(parents=True, exist_ok=True)
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        self._build_networks()
        self.store = TransitionStore(
            out_dir / "transitions", self.obs_dim, self.act_dim, capacity=total_steps
        )
        self.capacity = min(s.buffer_size, total_steps)
        self.augment = _augmentation(env_id, s)
        # batches are drawn sample_chunk at a time, the size given at each sample() call
        storage = LazyTensorStorage(
            self.capacity * (1 if self.augment is None else 2), device=self.device
        )
        self.replay = TensorDictReplayBuffer(storage=storage)
        self.steps, self.wall_before, self.rows = 0, 0.0, []
        self._restore()
        write_progress(out_dir / "progress.csv", self.rows)

    def _build_networks(self) -> None:
        s, device = self.s, self.device
        self.env = _make_envs(self.env_id, s.num_envs, s.env_processes)
        obs_dim = self.obs_dim = int(self.env.observation_spec["observation"].shape[-1])
        act_dim = self.act_dim = int(self.env.action_spec.shape[-1])
        self.action_spec = spec = self.env.action_spec_unbatched.clone()
        # ``actor`` steps the envs and is evaluated (CPU); ``train_actor`` is the one trained
        # (the same module on a CPU run, a copy on ``device`` otherwise)
        self.actor = make_sac_actor(obs_dim, act_dim, spec, self.num_cells)
        if s.init_actor is not None and self.state is None:
            _warm_start(
                self.actor, s.init_actor, obs_dim=obs_dim, act_dim=act_dim, num_cells=self.num_cells
            )
        self.train_actor = self.actor
        if device.type != "cpu":
            self.train_actor = make_sac_actor(obs_dim, act_dim, spec.to(device), self.num_cells)
            self.train_actor.load_state_dict(self.actor.state_dict())
            self.train_actor.to(device)
        qvalue = make_sac_qvalue(obs_dim, act_dim, self.num_cells).to(device)
        self.updater = make_sac_updater(self.train_actor, qvalue, spec.to(device), s)

    def to_replay(self, rows: dict[str, np.ndarray]) -> None:
        self.replay.extend(replay_entries(rows).to(self.device))
        if self.augment is not None:
            self.replay.extend(replay_entries(self.augment(rows)).to(self.device))

    def _restore(self) -> None:
        """Continue from the saved state: transitions after it are redone."""
        state = self.state
        if state is None:
            self.store.truncate(0)
            return
        self.steps = steps = int(state["steps"])
        self.wall_before = float(state["wall_s"])
        load_updater_state(self.updater, state["updater"])
        self.store.truncate(steps)  # transitions after the state are redone
        self.store.mark_last_truncated()  # the episode running at the state ends there
        if steps:
            self.to_replay(self.store.read(max(0, steps - self.capacity), steps))
        rows = read_progress(self.out_dir / "progress.csv")
        self.rows = [r for r in rows if int(r["step"]) <= steps]
        for path in (self.out_dir / "checkpoints").glob("step_*.pt"):
            if int(path.stem.split("_")[1]) > steps:
                path.unlink()
        _sync_actor(self.actor, self.train_actor)  # the RNG: restored in _collector, last

    def summary(self, session: dict[str, float]) -> dict[str, Any]:
        rows, out_dir = self.rows, self.out_dir
        best_row = max(rows, key=lambda r: float(r["eval_return_mean"]), default=None)
        return {
            "env": self.env_id,
            "out_dir": str(out_dir),
            "steps": self.steps,
            "best_step": int(best_row["step"]) if best_row else None,
            "best_return": float(best_row["eval_return_mean"]) if best_row else None,
            "best_checkpoint": (
                str(checkpoint_path(out_dir, int(best_row["step"]))) if best_row else None
            ),
            "final_return": float(rows[-1]["eval_return_mean"]) if rows else None,
            "checkpoints": {
                int(p.stem.split("_")[1]): str(p)
                for p in sorted((out_dir / "checkpoints").glob("step_*.pt"))
            },
            **session,
        }

    def _collector(self) -> Collector:
        s = self.s
        # the episode restarts, seeded, at every state save (as a resume from it must)
        seed_before_collector(self.env, self.seed * 1_000_003 + self.steps)
        collector = Collector(
            self.env,
            self.actor,
            frames_per_batch=s.frames_per_batch,
            total_frames=self.total_steps - self.steps,
            init_random_frames=max(0, s.init_random_steps - self.steps),
            reset_when_done=True,
            trust_policy=True,
            auto_register_policy_transforms=False,  # the actor is stateless
        )
        if self.state is not None:  # last: nothing built above may shift the generators
            set_rng_state(self.state["rng"])
        return collector

    def _progress_bar(self):
        if not self.s.progress:
            return None
        pbar = tqdm(
            total=self.total_steps,
            initial=self.steps,
            unit="step",
            desc=f"SAC {self.env_id}",
            dynamic_ncols=True,
            smoothing=0.05,
        )
        if self.rows:
            pbar.set_postfix(eval=f"{float(self.rows[-1]['eval_return_mean']):.0f}")
        return pbar

    def update_phase(self, updates: int) -> Any:
        """``updates`` gradient steps on batches drawn ``sample_chunk`` at a time; the
        acting actor gets the new weights after them. Returns the last step's losses."""
        s, last_losses = self.s, None
        remaining = updates
        while remaining:
            k = min(s.sample_chunk, remaining)
            draws = self.replay.sample(s.batch_size * k).reshape(k, s.batch_size)
            for i in range(k):
                train_actor = self.updater.num_updates >= s.actor_freeze_updates
                last_losses = self.updater.update(draws[i], train_actor=train_actor)
            remaining -= k
        _sync_actor(self.actor, self.train_actor)
        return last_losses

    def checkpoint(self, session_start: float, window: _Window, last_losses) -> dict[str, Any]:
        """Evaluate the acting actor, then write its checkpoint, the progress row and the
        trainer state (each atomically). Returns the row."""
        s, steps = self.s, self.steps
        returns = evaluate_actor(
            self.actor,
            self.env_id,
            episodes=s.eval_episodes,
            max_steps=s.eval_max_steps,
            seed=10_000 * (self.seed + 1),
        )
        now = time.perf_counter()
        wall = self.wall_before + now - session_start
        row = {
            "step": steps,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "wall_s": round(wall, 2),
            "updates_per_s": round(
                window.updates / window.update_time if window.updates else 0.0, 2
            ),
            "env_steps_per_s": round(window.steps / (now - window.start), 2),
            "num_updates": self.updater.num_updates,
        }
        if last_losses is not None:
            for key in ("alpha", "entropy", "loss_qvalue", "loss_actor"):
                row[key] = f"{float(last_losses[key]):.5g}"
        atomic_torch_save(checkpoint_path(self.out_dir, steps), self._actor_file(row))
        self.rows.append({k: str(v) for k, v in row.items()})
        write_progress(self.out_dir / "progress.csv", self.rows)
        atomic_torch_save(self.out_dir / "state.pt", self._state_file(wall))
        return row

    def save_state(self, session_start: float) -> None:
        """The trainer state alone (a stop between checkpoints): a resume continues from
        ``self.steps``, where the transitions store already ends."""
        wall = self.wall_before + time.perf_counter() - session_start
        atomic_torch_save(self.out_dir / "state.pt", self._state_file(wall))

    def _actor_file(self, row: dict[str, Any]) -> dict[str, Any]:
        spec = self.action_spec
        return {
            "env": self.env_id,
            "step": self.steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "num_cells": list(self.num_cells),
            "action_low": spec.space.low.tolist(),
            "action_high": spec.space.high.tolist(),
            "actor": {k: v.clone() for k, v in self.actor.state_dict().items()},
            "eval_return_mean": row["eval_return_mean"],
            "eval_return_std": row["eval_return_std"],
        }

    def _state_file(self, wall: float) -> dict[str, Any]:
        return {
            "env": self.env_id,
            "seed": self.seed,
            "num_cells": list(self.num_cells),
            "steps": self.steps,
            "wall_s": wall,
            "updater": self.updater.state_dict(),
            "rng": rng_state(),
            "hparams": self.s.hparams(self.total_steps),
        }

    def train(self) -> dict[str, Any]:
        s = self.s
        if self.steps >= self.total_steps:
            self.env.close()
            zero = {"session_steps": 0, "updates_per_s": 0.0, "env_steps_per_s": 0.0}
            return self.summary({**zero, "wall_s": self.wall_before})
        updates_per_batch = max(1, round(s.frames_per_batch * s.updates_per_step))
        collector, pbar = self._collector(), self._progress_bar()
        session_start = time.perf_counter()
        session_steps = session_updates = 0
        session_update_time = 0.0
        window, last_losses = _Window(), None
        try:
            for batch in collector:
                n = batch.numel()
                new_rows = store_rows(batch, self.steps + 1)
                self.store.append(new_rows)
                self.to_replay(new_rows)
                self.steps += n
                session_steps += n
                window.steps += n
                if self.steps >= s.init_random_steps:
                    t0 = time.perf_counter()
                    last_losses = self.update_phase(updates_per_batch)
                    dt = time.perf_counter() - t0
                    session_update_time += dt
                    session_updates += updates_per_batch
                    window.update_time += dt
                    window.updates += updates_per_batch
                if pbar is not None:
                    pbar.update(n)
                if self.steps % s.checkpoint_interval == 0 or self.steps >= self.total_steps:
                    row = self.checkpoint(session_start, window, last_losses)
                    if self.steps < self.total_steps:  # as a resume from this state would
                        self.store.mark_last_truncated()
                        restart_collection(collector, self.seed * 1_000_003 + self.steps)
                    if pbar is not None:
                        pbar.set_postfix(
                            eval=f"{row['eval_return_mean']:.0f}", upd_s=row["updates_per_s"]
                        )
                    window = _Window()
                elif self.stop is not None:
                    self.stop.check(self.steps, lambda _: self.save_state(session_start))
        finally:
            collector.shutdown()
            if pbar is not None:
                pbar.close()
        session_s = time.perf_counter() - session_start
        return self.summary(
            {
                "session_steps": session_steps,
                "updates_per_s": session_updates / session_update_time if session_updates else 0.0,
                "env_steps_per_s": session_steps / session_s,
                "wall_s": self.wall_before + session_s,
            }
        )


def train_sac(
    env_name: str,
    *,
    total_steps: int,
    out_dir: str | os.PathLike,
    stop: StopRequest | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a SAC behaviour policy on a Gym-MuJoCo task (or the goal-reaching ant),
    checkpointing along the way.

    Args:
        env_name: ``hopper``/``halfcheetah``/``walker2d`` (or their ``*-v5`` ids),
            ``antgoal``, ``antgoal-uniform``.
        total_steps: env steps of the whole run (a resumed run continues up to it).
        out_dir: the run directory (see the module docstring).
        stop: an active :class:`~torchrl_dmg.training.guards.StopRequest`: on SIGTERM or
            SIGINT the trainer state is saved after the current collector batch (no
            evaluation) and :class:`~torchrl_dmg.errors.RunInterrupted` is raised; rerunning
            the command resumes from there.
        **settings: the :class:`SACSettings` fields (seed, update_mode, device, ...).

    Returns:
        A summary: ``steps``, ``best_step``, ``best_return``, ``best_checkpoint``,
        ``final_return``, ``checkpoints`` (step -> path), ``session_steps``,
        ``updates_per_s`` and ``env_steps_per_s`` (this call), ``wall_s`` (all calls),
        ``out_dir``.
    """
    env_id = resolve_env_name(env_name)
    s = SACSettings(**settings)
    check_settings(env_id, total_steps, s)
    _augmentation(env_id, s)  # an unusable mirror_augment fails before any file is touched
    run = _SACRun(env_id, total_steps, Path(out_dir), s)
    run.stop = stop
    return run.train()

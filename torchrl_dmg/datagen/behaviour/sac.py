"""The SAC of the behaviour-policy trainer: its settings, checked early, and its updater:
TorchRL's :class:`~torchrl.objectives.SACLoss` driven by the project's one update machinery,
:class:`~torchrl_dmg.training.updater.ActorCriticUpdater` (the SAC steps are in
:mod:`torchrl_dmg.training.steps`), eager, compiled or (CUDA) replayed as CUDA graphs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import SACLoss

from torchrl_dmg.training.compile import UpdateMode
from torchrl_dmg.training.updater import ActorCriticUpdater

__all__ = [
    "UPDATE_MODES",
    "SACSettings",
    "check_settings",
    "load_updater_state",
    "make_sac_updater",
]

#: ``SACSettings.update_mode`` -> the updater's mode and ``torch.compile`` backend
UPDATE_MODES: dict[str, tuple[UpdateMode, str | None]] = {
    "eager": ("eager", None),
    "compile": ("compile", "aot_eager"),
    "compile-inductor": ("compile", "inductor"),
    "cudagraphs": ("cudagraphs", "inductor"),
}


def make_sac_updater(
    actor: ProbabilisticActor,
    qvalue: ValueOperator,
    action_spec: Bounded,
    s: SACSettings,
    *,
    cudagraph_warmup: int = 5,
) -> ActorCriticUpdater:
    """TorchRL's :class:`~torchrl.objectives.SACLoss` (double Q, Polyak critic targets,
    entropy target ``-act_dim``) in the project's :class:`ActorCriticUpdater`: one update
    per call (``policy_freq=1``), the SAC steps of :mod:`torchrl_dmg.training.steps`."""
    mode, backend = UPDATE_MODES[s.update_mode]
    vmap_critics = s.vmap_critics
    if vmap_critics is None:
        # Measured on one CPU thread: vmapped critics are faster in eager (fewer Python
        # calls), two plain matmuls faster once compiled (the vmapped linear layers
        # become slower batched matmuls). On a GPU fewer kernels win.
        vmap_critics = mode in ("eager", "cudagraphs")
    loss = SACLoss(
        actor,
        qvalue,
        num_qvalue_nets=2,
        loss_function="l2",
        alpha_init=s.alpha_init,
        fixed_alpha=s.fixed_alpha,
        action_spec=action_spec,
        target_entropy="auto",  # -act_dim
        delay_actor=False,
        delay_qvalue=True,
        deactivate_vmap=not vmap_critics,
    )
    loss.make_value_estimator(gamma=s.gamma)
    _ = loss.target_entropy  # registers its buffer now, outside any compiled code
    return ActorCriticUpdater(
        loss,
        lr=s.lr,
        tau=s.tau,
        policy_freq=1,
        mode=mode,
        compile_backend=backend,
        cudagraph_warmup=cudagraph_warmup,
    )


def load_updater_state(updater: ActorCriticUpdater, state: dict[str, Any]) -> None:
    """Load a saved updater state, also one of the earlier ``SACUpdater`` (one grouped
    optimiser, ``"optimizer"``), converted to the updater's one Adam per network."""
    if "optimizer" in state:
        state = {**state, **_split_group_state(state.pop("optimizer"), updater)}
    updater.load_state_dict(state)


def _split_group_state(group: dict[str, Any], updater: ActorCriticUpdater) -> dict[str, Any]:
    """TorchRL's ``GroupOptimizer`` state (its optimisers' groups in order, parameters
    numbered across all of them) as one state per optimiser, each numbered from 0."""
    names = updater.steps.networks
    if len(group["param_groups"]) != len(names):
        raise ValueError(
            f"This state.pt was written by an older version with "
            f"{len(group['param_groups'])} optimiser groups, but this run trains {names}; "
            "resume it with the settings (fixed_alpha) it was started with."
        )
    out = {}
    for name, param_group in zip(names, group["param_groups"], strict=True):
        ids = param_group["params"]
        out[f"optim_{name}"] = {
            "state": {i: group["state"][j] for i, j in enumerate(ids) if j in group["state"]},
            "param_groups": [{**param_group, "params": list(range(len(ids)))}],
        }
    return out


@dataclass(frozen=True)
class SACSettings:
    """Every option of :func:`~torchrl_dmg.datagen.behaviour.trainer.train_sac` besides the task, its length and the run directory.

    Standard SAC (double Q with Polyak targets, ``tau``; TanhNormal actor; automatic
    entropy tuning towards ``-act_dim``; Adam, ``lr``), update-to-data ratio 1: after each
    collector batch of ``frames_per_batch`` env steps, that many gradient steps on
    ``batch_size`` transitions drawn uniformly from the replay buffer (the last
    ``buffer_size`` transitions). The first ``init_random_steps`` env steps use uniform
    random actions, and no update happens before they are collected.

    Every ``checkpoint_interval`` env steps (and at ``total_steps``): ``eval_episodes``
    deterministic episodes (``tanh(loc)``; Gymnasium's 1000-step limit, or
    ``eval_max_steps``), then ``checkpoints/step_<steps:08d>.pt``, a ``progress.csv`` row
    and ``state.pt`` (the trainer state), each written atomically. Transitions are
    appended to ``transitions/`` after every batch.

    Attributes:
        env_name: ``hopper``/``halfcheetah``/``walker2d`` or their ``*-v5`` ids.
        update_mode: ``"compile"`` (default; ``torch.compile`` of the update step with
            the ``aot_eager`` backend), ``"eager"``, ``"compile-inductor"`` (the inductor
            backend; slower than ``aot_eager`` on CPU, kept for comparison), or
            ``"cudagraphs"`` (CUDA only: the step compiled with inductor and replayed as a
            CUDA graph), as :class:`~torchrl_dmg.training.updater.ActorCriticUpdater`
            runs every loss. Compiling costs ~10-60 s once.
        vmap_critics: vmap the two critics (SACLoss's default) or loop over them; ``None``
            picks the faster one for ``update_mode``.
        updates_per_step: gradient steps per env step (the update-to-data ratio): after
            each collector batch, ``round(frames_per_batch * updates_per_step)`` updates.
            Below 1 on a CPU, where the updates cost far more than the env steps.
        sample_chunk: updates whose batches are drawn from the buffer in one ``sample``
            call (the same uniform draws as one call per update: the buffer does not change
            during an update phase; fewer Python calls). 1: one ``sample`` per update.
        device: where the networks, the update and the replay buffer live. The envs
            step on the CPU with a CPU copy of the actor, refreshed after every update
            phase (so a collector batch is collected with the weights of its start).
        num_envs: envs stepped side by side (``frames_per_batch / num_envs`` steps each
            per batch; in-process :class:`~torchrl.envs.SerialEnv`, or one process each
            with ``env_processes`` (:class:`~torchrl.envs.ParallelEnv`)). With more than
            one env, ``transitions/`` holds each env's part of a batch in turn and an
            episode that continues into the next batch is cut there (marked truncated):
            every transition is exact, episodes are split at batch boundaries.
        init_actor: warm start: the actor's initial weights, from a checkpoint of an
            earlier run (``checkpoints/step_*.pt``) or a shipped policy with the same
            observation and action sizes and hidden layers (e.g. to go on training an
            ant on a changed task). The critics start fresh; with ``init_random_steps=0``
            the warm-started actor collects from the first step.
        alpha_init: the entropy coefficient's start value (1.0: SAC's usual start; for a
            warm start, the trained run's last ``alpha`` avoids a burst of entropy).
        fixed_alpha: keep alpha at ``alpha_init`` (no entropy tuning). For a warm start:
            fresh Adam moments let an adaptive alpha move ~``lr`` per step in log space, and
            a walking ant's entropy sits just below the target, so alpha rose x7 within 10k
            steps of the actor's release and the gait degraded.
        actor_freeze_updates: the first this many gradient steps update the critics
            and their targets only (actor and alpha held), so that fresh critics learn
            the warm-started actor's values before its first gradient.
        mirror_augment: mirror-symmetric tasks only (the AntGoal tasks,
            :data:`~torchrl_dmg.datagen.behaviour.tasks.MIRROR_AUGMENTATIONS`): every
            transition also enters the replay buffer as its mirror image, made by the task
            (the ant's: y -> -y in the torso frame; the ant, its physics and the reward are
            symmetric), so SAC sees twice the data and both turning directions
            alike (a plain run's ant turned right far better than left). The buffer holds
            ``buffer_size`` real transitions and their images; ``transitions/`` keeps the
            real ones only.
        resume: continue from ``out_dir/state.pt`` if there is one (a fresh start
            otherwise). Without it, an ``out_dir`` holding a state is an error.

    """

    seed: int = 0
    checkpoint_interval: int = 10_000
    eval_episodes: int = 10
    eval_max_steps: int | None = None
    init_random_steps: int = 5_000
    frames_per_batch: int = 1_000
    updates_per_step: float = 1.0
    batch_size: int = 256
    buffer_size: int = 1_000_000
    num_cells: Sequence[int] = (256, 256)
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    update_mode: str = "compile"
    vmap_critics: bool | None = None
    sample_chunk: int = 50
    device: str | torch.device = "cpu"
    num_envs: int = 1
    env_processes: bool = False
    init_actor: str | os.PathLike | None = None
    alpha_init: float = 1.0
    fixed_alpha: bool = False
    actor_freeze_updates: int = 0
    mirror_augment: bool = False
    resume: bool = False
    progress: bool = True

    def hparams(self, total_steps: int) -> dict[str, Any]:
        """What ``state.pt`` records of the run's settings."""
        return {
            "total_steps": total_steps,
            "checkpoint_interval": self.checkpoint_interval,
            "init_random_steps": self.init_random_steps,
            "frames_per_batch": self.frames_per_batch,
            "updates_per_step": self.updates_per_step,
            "batch_size": self.batch_size,
            "buffer_size": self.buffer_size,
            "lr": self.lr,
            "gamma": self.gamma,
            "tau": self.tau,
            "num_envs": self.num_envs,
            "update_mode": self.update_mode,
            "device": str(torch.device(self.device)),
            "init_actor": None if self.init_actor is None else str(self.init_actor),
            "alpha_init": self.alpha_init,
            "fixed_alpha": self.fixed_alpha,
            "actor_freeze_updates": self.actor_freeze_updates,
            "mirror_augment": self.mirror_augment,
        }


def check_settings(env_id: str, total_steps: int, s: SACSettings) -> None:
    """Fail early on settings that cannot work (before any file is touched)."""
    for name, value in (
        ("total_steps", total_steps),
        ("frames_per_batch", s.frames_per_batch),
        ("checkpoint_interval", s.checkpoint_interval),
        ("batch_size", s.batch_size),
        ("eval_episodes", s.eval_episodes),
        ("sample_chunk", s.sample_chunk),
        ("num_envs", s.num_envs),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if not s.updates_per_step > 0:
        raise ValueError(f"updates_per_step must be > 0, got {s.updates_per_step}.")
    if s.actor_freeze_updates < 0:
        raise ValueError(f"actor_freeze_updates must be >= 0, got {s.actor_freeze_updates}.")
    if not s.alpha_init > 0:
        raise ValueError(f"alpha_init must be > 0, got {s.alpha_init}.")
    if s.init_actor is not None and not Path(s.init_actor).is_file():
        raise FileNotFoundError(
            f"init_actor={s.init_actor} is not a file; give a checkpoints/step_*.pt of an "
            "earlier train_sac run or a shipped policy file."
        )
    _check_batching(total_steps, s)


def _check_batching(total_steps: int, s: SACSettings) -> None:
    fpb, interval = s.frames_per_batch, s.checkpoint_interval
    if total_steps % fpb or interval % fpb:
        raise ValueError(
            f"total_steps ({total_steps}) and checkpoint_interval ({interval}) "
            f"must be multiples of frames_per_batch ({fpb})."
        )
    if fpb % s.num_envs:
        raise ValueError(f"frames_per_batch ({fpb}) must be a multiple of num_envs ({s.num_envs}).")
    if s.update_mode not in UPDATE_MODES:
        raise ValueError(
            f"update_mode must be one of {tuple(UPDATE_MODES)}, got {s.update_mode!r}."
        )
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for, but torch sees no CUDA device.")

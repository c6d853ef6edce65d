"""The online (fine-tuning) loop and its pieces: the collector, collected steps in the
offline data's format, what a fine-tuning checkpoint keeps of the buffer, and event timing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.envs import EnvBase
from tqdm.auto import tqdm

from torchrl_dmg.data.offline import mark_goal_terminal
from torchrl_dmg.training.checkpoint import restart_collection
from torchrl_dmg.training.schedules import FinetuneSchedule
from torchrl_dmg.training.updater import ActorCriticUpdater


@dataclass
class OnlineState:
    """Where a fine-tuning run stands, besides its weights and buffer: ``step`` online env
    steps, ``update_step`` online gradient steps (the schedules' ``t``), the λ/ν in force
    (``coefs``; empty without a schedule) and the score before any online step
    (``start_eval``; ``None`` until it is measured)."""

    step: int = 0
    update_step: int = 0
    coefs: dict[str, float] = field(default_factory=dict)
    start_eval: dict[str, float] | None = None


def train_online(
    updater: ActorCriticUpdater,
    buffer: TensorDictReplayBuffer,
    collector: Collector,
    state: OnlineState,
    *,
    steps: int,
    logger,
    log_interval: int,
    evaluate: Callable[[], dict[str, float]],
    eval_interval: int,
    checkpoint: Callable[[OnlineState], None],
    checkpoint_interval: int,
    seed: int,
    utd: int = 1,
    schedule: FinetuneSchedule | None = None,
    to_buffer: Callable[[TensorDictBase], TensorDict] | None = None,
    progress: bool = True,
    desc: str = "dmg online",
    guard=None,
    stop=None,
) -> dict[str, float]:
    """The online loop of fine-tuning, from ``state`` (a new run's or a resumed one's) to
    ``steps`` online env steps; ``state`` is updated in place. Returns the final evaluation.

    Each ``collector`` batch (``frames`` env steps of the exploring actor) goes into
    ``buffer`` as ``to_buffer(batch)`` (default :func:`to_transitions` with no change of
    reward: the recipe passes the offline data's reward shift, scale and goal terminals),
    followed by ``utd · frames`` updates on ``buffer.sample()``, with
    λ_t, ν_t of ``schedule`` (DMG's; ``None``: none) written into ``updater.loss`` where
    ``d_t`` steps. ``guard(update_step, metrics)`` runs after every update.

    Events, when a batch crosses a multiple of their interval (in env steps): a ``train``
    row every ``log_interval``; ``evaluate() -> dict`` logged as an ``eval`` row every
    ``eval_interval`` before the end; ``checkpoint(state)`` every ``checkpoint_interval``,
    after which the env restarts a seeded episode (``seed + step``), as a resume from that
    checkpoint does. ``stop`` (:class:`~torchrl_dmg.training.guards.StopRequest`):
    checkpoint, then stop, at the next batch boundary. Without a ``start_eval`` the actor is
    evaluated first (``eval`` row at 0); at the end, evaluated, logged and checkpointed
    (unless a resumed finished run holds that row), and the collector is shut down."""
    bar = _begin(
        updater, state, schedule, evaluate, logger, steps=steps, progress=progress, desc=desc
    )
    train_time = 0.0
    for batch in collector:
        frames = batch.numel()
        buffer.extend((to_buffer or to_transitions)(batch))
        for episode_return in finished_episode_returns(batch):
            logger.log(state.step + frames, "online", {"episode_return": episode_return})
        t0 = time.perf_counter()
        metrics = _updates(updater, buffer, state, utd * frames, schedule, guard)
        train_time += time.perf_counter() - t0
        state.step += frames
        bar.update(frames)
        if crossed(state.step, frames, log_interval):
            speed = utd * log_interval / max(train_time, 1e-9)
            logger.log(state.step, "train", _train_row(metrics, state, updater, buffer, speed))
            train_time = 0.0
        if crossed(state.step, frames, eval_interval) and state.step < steps:
            result = evaluate()
            logger.log(state.step, "eval", {**result, **state.coefs})
            bar.set_postfix(score=f"{result['normalized_score']:.1f}")
        if crossed(state.step, frames, checkpoint_interval):
            checkpoint(state)
            if state.step < steps:  # as a resume from this checkpoint would
                restart_collection(collector, seed + state.step)
        if stop is not None and state.step < steps:  # SIGTERM / Ctrl-C: checkpoint, stop
            stop.check(state.step, lambda _: checkpoint(state), unit="online step")
    bar.close()
    collector.shutdown()
    result = evaluate()
    if not logger.has_row(state.step, "eval"):  # a resumed finished run has its final row
        logger.log(state.step, "eval", {**result, **state.coefs})
        checkpoint(state)
    return result


def _begin(
    updater: ActorCriticUpdater,
    state: OnlineState,
    schedule: FinetuneSchedule | None,
    evaluate: Callable[[], dict[str, float]],
    logger,
    *,
    steps: int,
    progress: bool,
    desc: str,
) -> tqdm:
    """λ, ν at ``state.update_step``; the start score, when not measured yet; the bar."""
    if schedule is not None:
        state.coefs = schedule.apply(updater.loss, state.update_step)
    if state.start_eval is None:  # the offline policy's score, before any online step
        state.start_eval = evaluate()
        logger.log(0, "eval", {**state.start_eval, **state.coefs})
    score = state.start_eval["normalized_score"] if state.step == 0 else math.nan
    bar = tqdm(
        total=steps,
        initial=min(state.step, steps),
        disable=not progress,
        desc=desc,
        unit="step",
        mininterval=1.0,
    )
    bar.set_postfix(score=f"{score:.1f}")
    return bar


def _train_row(
    metrics: dict, state: OnlineState, updater: ActorCriticUpdater, buffer, speed: float
) -> dict[str, float]:
    """A ``train`` row: the last update's metrics, λ, ν, the actor's lr, the buffer's size
    and the updates per second of training time."""
    row = {k: v.item() for k, v in metrics.items()}
    row.update(state.coefs, actor_lr=updater.actor_lr, buffer_size=len(buffer))
    row["updates_per_s"] = speed
    return row


def _updates(
    updater: ActorCriticUpdater,
    buffer: TensorDictReplayBuffer,
    state: OnlineState,
    count: int,
    schedule: FinetuneSchedule | None,
    guard,
) -> dict[str, torch.Tensor]:
    """``count`` updates on ``buffer.sample()``, each after the schedule's λ_t, ν_t where
    they change; the last update's metrics."""
    for _ in range(count):
        if schedule is not None and schedule.changes_at(state.update_step):
            state.coefs = schedule.apply(updater.loss, state.update_step)
        metrics = updater.update(buffer.sample())
        state.update_step += 1
        if guard is not None:
            # a NaN/inf loss or Q: stop now, name the step
            guard(state.update_step, metrics, updater.last_finite)
    return metrics


def make_collector(
    env: EnvBase, policy: TensorDictModuleBase, *, total_frames: int, frames_per_batch: int = 1
) -> Collector:
    """A single-process TorchRL :class:`~torchrl.collectors.Collector` (the successor of
    ``SyncDataCollector``) that steps ``env`` with ``policy`` and resets it when done."""
    return Collector(
        env,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        reset_when_done=True,
        trust_policy=True,
        auto_register_policy_transforms=False,  # the actor is stateless: no InitTracker
    )


def finished_episode_returns(batch: TensorDictBase) -> list[float]:
    """Raw returns (``episode_reward``) of the episodes that ended in a collected batch."""
    done = batch["next", "done"].reshape(-1)
    returns = batch["next", "episode_reward"].reshape(done.shape[0], -1)[:, 0]
    return [float(r) for r in returns[done].cpu()]


def to_transitions(
    batch: TensorDictBase,
    *,
    reward_shift: float = 0.0,
    reward_scale: float = 1.0,
    goal_terminal: bool = False,
    device: torch.device | str | None = None,
) -> TensorDict:
    """Collected env steps in the offline data's format: the TED transition keys only, float32
    observations/actions/rewards; with ``goal_terminal`` a step that earns the goal reward is
    marked terminated (:func:`~torchrl_dmg.data.offline.mark_goal_terminal`, AntMaze), then
    the dataset's ``reward_shift`` is added (AntMaze: r - 1) and its algorithm's
    ``reward_scale`` applied (IQL on Gym-MuJoCo), as on the offline data."""
    batch = batch.reshape(-1)
    out = TensorDict(
        {
            "observation": batch["observation"].float(),
            "action": batch["action"].float(),
            "next": {
                "observation": batch["next", "observation"].float(),
                "reward": batch["next", "reward"].float(),
                "terminated": batch["next", "terminated"].bool(),
                "truncated": batch["next", "truncated"].bool(),
                "done": batch["next", "done"].bool(),
            },
        },
        batch_size=batch.batch_size,
    )
    if goal_terminal:
        mark_goal_terminal(out)
    reward = out["next", "reward"] + reward_shift
    out["next", "reward"] = reward * reward_scale if reward_scale != 1.0 else reward
    return out.to(device) if device is not None else out


def online_data(buffer: TensorDictReplayBuffer, num_offline: int) -> TensorDict:
    """The online transitions of a fine-tuning buffer (everything after the offline part),
    copied to CPU for a checkpoint."""
    index = torch.arange(num_offline, len(buffer))
    return buffer.storage.get(index).cpu().clone()


def crossed(step: int, frames: int, interval: int | None) -> bool:
    """Whether ``(step - frames, step]`` contains a multiple of ``interval`` (events every
    ``interval`` env steps when a collector batch holds ``frames`` of them)."""
    if not interval:
        return False
    return step // interval > (step - frames) // interval

"""Offline-to-online fine-tuning (spec: "Offline-to-online fine-tuning", paper appendix C.2).

The pieces ``recipes/finetune.py`` is built from:

* :class:`FinetuneSchedule`: the λ_t / ν_t schedules of the online phase, applied to the
  loss in place with :meth:`DMGLoss.set_coefficients`;
* :class:`RolloutActor` and :func:`make_exploration_policy`: the deterministic actor with its
  current training weights, plus Gaussian exploration noise N(0, (0.1·max_action)²) clipped to
  the action bounds (TorchRL's :class:`~torchrl.modules.AdditiveGaussianModule`);
* :func:`make_online_env` and :func:`make_collector`: the dataset's (non-evaluation) env with the
  data's observation pipeline, and a TorchRL :class:`~torchrl.collectors.Collector` on it;
* :func:`make_finetune_buffer`, :class:`OfflineFractionSampler`, :func:`to_transitions`,
  :func:`online_data`: one replay buffer holding every offline transition followed by the
  online ones, sampled uniformly over the union (paper) or with a fixed offline fraction;
* :func:`run_offline_phase`, :func:`offline_start_state`, :func:`with_offline_config`,
  :func:`make_online_updater`: where the online phase starts from (an offline checkpoint or an
  offline phase run here with the offline recipe's settings).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler
from torchrl.envs import EnvBase, RewardSum, TransformedEnv
from torchrl.modules import AdditiveGaussianModule

from torchrl_dmg.checkpointing import previous_path
from torchrl_dmg.data.offline import DatasetUnavailableError, OfflineDataset, load_offline_dataset
from torchrl_dmg.envs import make_env
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.training import (
    DMGUpdater,
    ParamsPolicy,
    load_checkpoint,
    make_updater,
    offline_checkpoint_state,
    save_checkpoint,
    set_rng_state,
    train_offline,
    unstack_updater_state,
    value_bounds,
)

ANTMAZE_PREFIX = "D4RL/antmaze/"
# What an offline checkpoint fixes for the online phase: the data pipeline and the networks.
OFFLINE_CONFIG_KEYS = ("dataset", "family", "data", "network", "loss")


# ---------------------------------------------------------------- schedules
@dataclass(frozen=True)
class FinetuneSchedule:
    """The online schedules of λ (``mixture_coef``) and ν (``penalty_coef``).

    With ``t`` the number of online gradient steps and ``d_t = decay ** floor(t / interval)``
    (spec: ``0.99 ** floor(t / 1000)``)::

        λ_t = λ_end - (λ_end - λ_0) · d_t        (spec: 0.25 -> 0.5)
        ν_t = ν_end + (ν_0 - ν_end) · d_t        (spec: 0.5 -> 0.005)

    A pure function of ``t``: resuming at step ``t`` only needs :meth:`apply` at ``t``.
    """

    mixture_start: float = 0.25  # λ_0
    mixture_end: float = 0.5  # λ_end
    penalty_start: float = 0.5  # ν_0
    penalty_end: float = 0.005  # ν_end
    decay: float = 0.99
    interval: int = 1000

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"schedule interval must be >= 1, got {self.interval}.")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"schedule decay must lie in (0, 1], got {self.decay}.")

    def decay_factor(self, t: int) -> float:
        """``d_t = decay ** floor(t / interval)``."""
        return self.decay ** (int(t) // self.interval)

    def mixture_coef(self, t: int) -> float:
        """λ_t."""
        return self.mixture_end - (self.mixture_end - self.mixture_start) * self.decay_factor(t)

    def penalty_coef(self, t: int) -> float:
        """ν_t."""
        return self.penalty_end + (self.penalty_start - self.penalty_end) * self.decay_factor(t)

    def coefficients(self, t: int) -> dict[str, float]:
        return {"mixture_coef": self.mixture_coef(t), "penalty_coef": self.penalty_coef(t)}

    def apply(self, loss: DMGLoss, t: int) -> dict[str, float]:
        """Write λ_t and ν_t into the loss's buffers (in place: nothing is recompiled)."""
        coefs = self.coefficients(t)
        loss.set_coefficients(**coefs)
        return coefs

    def changes_at(self, t: int) -> bool:
        """Whether ``d_t`` steps at ``t`` (the only steps where :meth:`apply` has work to do)."""
        return int(t) % self.interval == 0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> FinetuneSchedule:
        """From ``cfg.schedule``; ``null`` start values mean the offline λ / ν (``cfg.loss``)."""
        s = cfg.schedule
        return cls(
            mixture_start=float(
                cfg.loss.mixture_coef if s.mixture_start is None else s.mixture_start
            ),
            mixture_end=float(s.mixture_end),
            penalty_start=float(
                cfg.loss.penalty_coef if s.penalty_start is None else s.penalty_start
            ),
            penalty_end=float(s.penalty_end),
            decay=float(s.decay),
            interval=int(s.interval),
        )


# ---------------------------------------------------------------- acting
class RolloutActor(ParamsPolicy):
    """The deterministic actor π_φ of ``loss`` with the weights being trained (see
    :class:`~torchrl_dmg.training.ParamsPolicy`)."""

    def __init__(self, loss: DMGLoss) -> None:
        super().__init__(loss.actor_network, loss.actor_network_params)


def exploration_sigma(action_spec: Bounded, noise: float) -> float:
    """``noise · max_action`` with ``max_action`` the largest action magnitude of the spec."""
    space = action_spec.space
    max_action = torch.maximum(space.low.abs(), space.high.abs()).max()
    return float(noise * max_action)


def make_exploration_policy(
    actor: TensorDictModuleBase, action_spec: Bounded, *, noise: float = 0.1
) -> TensorDictSequential:
    """``clip(π(s) + ε, low, high)`` with ``ε ~ N(0, (noise · max_action)²)`` (spec: noise 0.1).

    TorchRL's :class:`~torchrl.modules.AdditiveGaussianModule` adds ``sigma · N(0, 1)`` (an
    absolute scale) and projects onto the bounded spec; ``sigma`` is held constant. The
    noise is only added under ``ExplorationType.RANDOM`` (collectors); evaluation with
    ``DETERMINISTIC`` exploration gets the actor's action.
    """
    sigma = exploration_sigma(action_spec, noise)
    explore = AdditiveGaussianModule(
        action_spec,
        sigma_init=sigma,
        sigma_end=sigma,
        annealing_num_steps=1,
        device=action_spec.device,
    )
    return TensorDictSequential(actor, explore)


def make_online_env(
    dataset: OfflineDataset, *, device: torch.device | str = "cpu"
) -> TransformedEnv:
    """The dataset's data-collection env (``eval_env=False``) with the data's observation
    pipeline, plus ``episode_reward`` (TorchRL's :class:`~torchrl.envs.RewardSum`, raw env
    rewards) to report online returns. Time limits give ``truncated``, never ``terminated``.
    """
    env = make_env(dataset, eval_env=False, device=device)
    env.append_transform(RewardSum())
    return env


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


# ---------------------------------------------------------------- replay buffer
class OfflineFractionSampler(RandomSampler):
    """Draws ``round(offline_fraction · batch)`` indices from the offline part of the storage
    (its first ``num_offline`` entries) and the rest from the online part, uniformly in each.
    Uniform over what there is while the online part is still empty."""

    def __init__(self, num_offline: int, offline_fraction: float) -> None:
        super().__init__()
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must lie in [0, 1], got {offline_fraction}.")
        self.num_offline = int(num_offline)
        self.offline_fraction = float(offline_fraction)

    def sample(self, storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        size = len(storage)
        if size <= self.num_offline or self.num_offline == 0:
            return super().sample(storage, batch_size)
        device = getattr(storage, "device", None)
        n_offline = round(self.offline_fraction * batch_size)
        offline = torch.randint(0, self.num_offline, (n_offline,), device=device)
        online = torch.randint(self.num_offline, size, (batch_size - n_offline,), device=device)
        return torch.cat([offline, online]), {}


def make_finetune_buffer(
    offline_data: TensorDict,
    *,
    online_capacity: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    offline_fraction: float | None = None,
) -> TensorDictReplayBuffer:
    """One TorchRL buffer: every offline transition, then room for ``online_capacity`` online
    ones (nothing is ever overwritten). Sampled uniformly over the union (the paper), or
    with a fixed ``offline_fraction`` of each batch from the offline part."""
    data = offline_data.exclude("episode")
    num_offline = data.shape[0]
    sampler = (
        RandomSampler()
        if offline_fraction is None
        else OfflineFractionSampler(num_offline, offline_fraction)
    )
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(num_offline + max(int(online_capacity), 0), device=device),
        sampler=sampler,
        batch_size=batch_size,
    )
    buffer.extend(data)
    return buffer


def to_transitions(
    batch: TensorDictBase, *, reward_shift: float = 0.0, device: torch.device | str | None = None
) -> TensorDict:
    """Collected env steps in the offline data's format: the TED transition keys only, float32
    observations/actions/rewards, and the dataset's ``reward_shift`` added (AntMaze: r - 1)."""
    batch = batch.reshape(-1)
    out = TensorDict(
        {
            "observation": batch["observation"].float(),
            "action": batch["action"].float(),
            "next": {
                "observation": batch["next", "observation"].float(),
                "reward": batch["next", "reward"].float() + reward_shift,
                "terminated": batch["next", "terminated"].bool(),
                "truncated": batch["next", "truncated"].bool(),
                "done": batch["next", "done"].bool(),
            },
        },
        batch_size=batch.batch_size,
    )
    return out.to(device) if device is not None else out


def online_data(buffer: TensorDictReplayBuffer, num_offline: int) -> TensorDict:
    """The online transitions of a fine-tuning buffer (everything after the offline part),
    copied to CPU for a checkpoint."""
    index = torch.arange(num_offline, len(buffer))
    return buffer.storage.get(index).cpu().clone()


# ---------------------------------------------------------------- where the online phase starts
def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_offline_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """An offline checkpoint (``recipes/offline.py`` or :func:`run_offline_phase`)."""
    state = load_checkpoint(checkpoint_file(path))
    if "updater" not in state or "config" not in state:
        raise ValueError(f"{checkpoint_file(path)} is not an offline DMG checkpoint.")
    return state


def offline_start_state(cfg: DictConfig, loss: DMGLoss) -> dict[str, Any]:
    """The updater state to fine-tune from: ``cfg.checkpoint``'s; for a seed-stacked offline
    run (``recipes/offline.py seeds=N``) the agent of seed ``cfg.checkpoint_seed``, whose
    weights also land in ``loss``."""
    checkpoint = load_offline_checkpoint(cfg.checkpoint)
    state = checkpoint["updater"]
    if "stacked" not in state:
        return state
    saved = checkpoint["config"]
    seeds = [saved["seed"] + i for i in range(saved.get("seeds", 1))]
    choice = cfg.get("checkpoint_seed")
    if choice is None or choice not in seeds:
        raise ValueError(
            f"{cfg.checkpoint} holds {len(seeds)} agents trained together (seeds {seeds}); "
            f"choose the one to fine-tune with checkpoint_seed=<one of {seeds}>"
            + ("." if choice is None else f" (got {choice}).")
        )
    return unstack_updater_state(state, seeds.index(choice), loss)


def with_offline_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg`` with the dataset, data, network and loss settings of ``cfg.checkpoint``'s run
    (the weights only fit those), or unchanged when no checkpoint is given. The evaluation
    settings also follow the checkpoint's family (10 PointMaze episodes, not the 100 of the
    default AntMaze family), except the ``eval.*`` keys given in ``overrides`` (the
    command line's)."""
    if not cfg.checkpoint:
        return cfg
    saved = OmegaConf.create(load_offline_checkpoint(cfg.checkpoint)["config"])
    cfg = cfg.copy()
    for key in OFFLINE_CONFIG_KEYS:
        if key in saved:
            if key == "dataset" and saved.dataset != cfg.dataset:
                print(f"[dmg] using the checkpoint's dataset {saved.dataset} (not {cfg.dataset})")
            cfg[key] = saved[key]
    keys = (o.split("=", 1)[0].lstrip("+~") for o in overrides)
    given = {k.removeprefix("eval.") for k in keys if k.startswith("eval.")}
    for key, value in saved.get("eval", {}).items():
        if key in cfg.eval and key not in given:
            cfg.eval[key] = value
    cfg.checkpoint = str(checkpoint_file(cfg.checkpoint).resolve())
    return cfg


def load_finetune_dataset(cfg: DictConfig, *, progress: bool = True) -> OfflineDataset:
    """:func:`load_offline_dataset` with ``cfg.data``; a ``D4RL/antmaze/*`` id that is not
    available fails early, naming the local AntMaze dataset this project makes instead
    (``local/antmaze/<variant>-v0``, generated on first use like any local dataset)."""
    try:
        return load_offline_dataset(
            cfg.dataset,
            obs_keys=cfg.data.obs_keys,
            normalize_obs=cfg.data.normalize_obs,
            reward_shift=cfg.data.reward_shift,
            download=cfg.data.download,
            progress=progress,
        )
    except DatasetUnavailableError as err:
        if str(cfg.dataset).startswith(ANTMAZE_PREFIX):
            variant = str(cfg.dataset).removeprefix(ANTMAZE_PREFIX).rsplit("-v", 1)[0]
            raise DatasetUnavailableError(
                f"AntMaze data '{cfg.dataset}' is not available here (no internet?). This "
                "project makes D4RL-style AntMaze data itself: use "
                f"dataset=local/antmaze/{variant}-v0 (generated on first use from the shipped "
                "goal-reaching ant; `python recipes/make_dataset.py env=antmaze-"
                f"{variant}` makes it ahead). Details: {err}"
            ) from None
        raise


def make_online_updater(
    loss: DMGLoss, cfg: DictConfig, state: dict[str, Any] | None = None
) -> DMGUpdater:
    """The online :class:`DMGUpdater`: no cosine schedule (constant actor lr ``cfg.optim.lr``,
    spec), networks, targets and optimiser states loaded from ``state``. The actor lr is reset
    after loading: an offline optimiser state carries the end of its cosine schedule (~0)."""
    updater = make_updater(cfg, loss, steps=None)
    if state is not None:
        updater.load_state_dict(state)
    updater.set_actor_lr(cfg.optim.lr)
    return updater


def run_offline_phase(
    cfg: DictConfig,
    loss: DMGLoss,
    buffer: TensorDictReplayBuffer,
    dataset: OfflineDataset,
    out_dir: str | os.PathLike,
    *,
    logger_backend: str = "csv",
    guard=None,
    stop=None,
) -> dict[str, Any]:
    """The offline phase when no checkpoint is given: ``cfg.offline_steps`` DMG updates on
    ``buffer`` (offline data only at this point) with the offline recipe's settings (cosine
    actor lr). Writes ``out_dir/metrics.csv`` and an offline-recipe-style ``out_dir/checkpoint.pt``
    (every ``cfg.checkpoint_interval`` steps and at the end; usable later as ``checkpoint=``),
    and continues from that checkpoint when one exists. Returns ``DMGUpdater.state_dict()``.
    """
    from torchrl_dmg.recording import MetricsLogger

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = int(cfg.offline_steps)
    updater = make_updater(cfg, loss, steps=steps)
    step = 0
    saved = out_dir / "checkpoint.pt"
    if saved.exists() or previous_path(saved).exists():  # the previous one: a killed swap
        state = load_checkpoint(out_dir / "checkpoint.pt")
        updater.load_state_dict(state["updater"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        print(f"[dmg] offline phase resumed from {out_dir} at step {step}")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["steps"] = steps  # so the checkpoint reads like one of recipes/offline.py

    def checkpoint(step: int) -> None:
        save_checkpoint(
            out_dir / "checkpoint.pt", offline_checkpoint_state(step, updater, config, dataset)
        )

    logger = MetricsLogger(out_dir, backend=logger_backend, project=cfg.logger.project)
    logger.truncate_after(step)
    step = train_offline(
        updater,
        buffer,
        start=step,
        steps=steps,
        logger=logger,
        log_interval=cfg.logger.log_interval,
        checkpoint=checkpoint,
        checkpoint_interval=cfg.checkpoint_interval,
        progress=cfg.progress,
        desc="dmg offline",
        value_bounds=value_bounds(dataset.data["next", "reward"], float(cfg.loss.gamma)),
        guard=guard,  # NaN/inf stop and SIGTERM handling (torchrl_dmg.guards)
        stop=stop,
    )
    checkpoint(step)
    return updater.state_dict()


def crossed(step: int, frames: int, interval: int | None) -> bool:
    """Whether ``(step - frames, step]`` contains a multiple of ``interval`` (events every
    ``interval`` env steps when a collector batch holds ``frames`` of them)."""
    if not interval:
        return False
    return step // interval > (step - frames) // interval


def check_config(cfg: DictConfig) -> None:
    """Fail early on fine-tuning settings that cannot work."""
    if int(cfg.utd) < 1:
        raise ValueError(f"utd (gradient steps per env step) must be >= 1, got {cfg.utd}.")
    if int(cfg.online_steps) < 0 or int(cfg.offline_steps) < 0:
        raise ValueError("online_steps and offline_steps must be >= 0.")
    if cfg.offline_fraction is not None and not 0.0 <= float(cfg.offline_fraction) <= 1.0:
        raise ValueError(f"offline_fraction must be null or in [0, 1], got {cfg.offline_fraction}.")
    if int(cfg.collector.frames_per_batch) < 1:
        raise ValueError("collector.frames_per_batch must be >= 1.")

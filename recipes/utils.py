"""What the recipes build from their Hydra configs: the config-reading side of the
project (the package itself reads no config, as TorchRL's sota-implementations keep a
``utils.py`` beside their scripts)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.objectives import LossModule

from torchrl_dmg.data.offline import DatasetUnavailableError, OfflineDataset, load_offline_dataset
from torchrl_dmg.data.returns import monte_carlo_returns
from torchrl_dmg.datagen.antmaze.mazes import ANTMAZE_VARIANTS, antmaze_dataset_id
from torchrl_dmg.datagen.registry import make_if_missing
from torchrl_dmg.recording import say
from torchrl_dmg.training import (
    ActorCriticUpdater,
    FinetuneSchedule,
    SeedStackedUpdater,
)
from torchrl_dmg.training.checkpoint import (
    checkpoint_file,
    load_offline_checkpoint,
)
from torchrl_dmg.training.checkpoint import offline_start_state as _offline_start_state
from torchrl_dmg.training.compile import resolve_mode

ANTMAZE_PREFIX = "D4RL/antmaze/"
# What an offline checkpoint fixes for the online phase: the data pipeline and the networks
# (and a baseline's own settings, config/algo/<algo>.yaml's group).
OFFLINE_CONFIG_KEYS = ("dataset", "family", "data", "network", "loss")
ALGO_CONFIG_KEYS = ("iql", "td3bc")


def register_resolvers() -> None:
    """The configs' ``${sanitize:...}`` resolver (idempotent); call before ``main``."""
    if not OmegaConf.has_resolver("sanitize"):
        # dataset ids contain slashes; run directory names must not
        OmegaConf.register_new_resolver("sanitize", lambda s: str(s).replace("/", "-"))


def save_config(cfg: DictConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as ``config.yaml`` (and return its path)."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path


def load_dataset(cfg: DictConfig, progress: bool | None = None) -> OfflineDataset:
    """``cfg.dataset`` with ``cfg.data``'s preprocessing; a ``local/...`` id this project makes
    is generated first when it is missing. ``progress``: default ``cfg.progress``."""
    progress = cfg.progress if progress is None else progress
    make_if_missing(cfg.dataset, progress=progress)
    return load_offline_dataset(
        cfg.dataset,
        obs_keys=cfg.data.obs_keys,
        normalize_obs=cfg.data.normalize_obs,
        reward_shift=cfg.data.reward_shift,
        goal_terminal=cfg.data.get("goal_terminal", False),
        download=cfg.data.download,
        progress=progress,
        score_reference=cfg.data.get("score_reference", "auto"),
    )


def discount(cfg: DictConfig) -> float:
    """γ of ``cfg.algo``: DMG's ``loss.gamma``, a baseline's own (``iql.gamma``,
    ``td3bc.gamma``; BC, which has no critic, discounts its diagnostic's returns with
    ``bc.gamma``)."""
    algo = str(cfg.algo)
    return float(cfg.loss.gamma if algo == "dmg" else cfg[algo].gamma)


def value_init(cfg, dataset) -> float | None:
    """The critics' and V's starting output (``network.value_init``): ``None`` (PyTorch's
    default initialisation, the paper's), a number, or ``mc``: the mean discounted
    Monte-Carlo return of the training data (rewards as trained on, γ :func:`discount`)."""
    init = cfg.network.value_init
    if init is None:
        return None
    if init == "mc":
        returns = monte_carlo_returns(dataset.data, discount(cfg))
        return float(returns.mean())
    return float(init)


def make_updater(cfg, loss, *, steps: int | None) -> ActorCriticUpdater:
    """:class:`ActorCriticUpdater` of any loss from a recipe config (``optim``, ``compile``);
    a list of losses gives a :class:`SeedStackedUpdater`. The actor's cosine schedule
    (``optim.actor_cosine``) for a run of ``steps`` gradient steps: see
    :func:`actor_cosine_steps`; ``steps=None``: constant lr."""
    cls = SeedStackedUpdater if isinstance(loss, list) else ActorCriticUpdater
    return cls(
        loss,
        lr=cfg.optim.lr,
        tau=cfg.optim.tau,
        policy_freq=cfg.optim.policy_freq,
        actor_cosine_steps=actor_cosine_steps(cfg, steps),
        mode=cfg.compile.mode,
        skip_guards=cfg.compile.skip_guards,
        matmul_precision=cfg.compile.matmul_precision,
    )


def updates_per_call(cfg, device: torch.device, start: int) -> int:
    """``compile.updates_per_call`` for a run on ``device`` from step ``start``: the number
    given, or for ``auto`` 2 where one seed's iterations compile on a CPU (``compile.mode``
    auto or compile) and ``steps``, ``start``, every interval and ``policy_freq`` allow it,
    else 1. Two iterations per compiled call pay the per-call cost outside the graph once:
    +9% updates/s in the offline recipe on an AMD EPYC (docs/benchmarks.md). The batches of
    a call are drawn together, so for one seed K = 1 and K = 2 draw other samples."""
    k = cfg.compile.updates_per_call
    if k != "auto":
        return int(k)
    compiled = resolve_mode(cfg.compile.mode, device) == "compile"
    if device.type != "cpu" or not compiled or int(cfg.seeds) > 1 or 2 % int(cfg.optim.policy_freq):
        return 1
    counts = (cfg.steps, start, cfg.logger.log_interval, cfg.eval.interval, cfg.checkpoint.interval)
    return 2 if all(int(c) % 2 == 0 for c in counts) else 1


def actor_cosine_steps(cfg, steps: int | None) -> int | None:
    """The actor updates the actor's lr anneals over: ``optim.actor_cosine_horizon`` (the
    authors': 500k, whatever the run's length), or with ``null`` the run's own
    ``steps // policy_freq``; ``None`` (constant lr) when ``optim.actor_cosine`` is false
    or ``steps`` is ``None``."""
    if steps is None or not cfg.optim.actor_cosine:
        return None
    horizon = cfg.optim.actor_cosine_horizon
    return int(horizon) if horizon is not None else steps // cfg.optim.policy_freq


def finetune_schedule(cfg: DictConfig) -> FinetuneSchedule:
    """From ``cfg.schedule``; ``null`` start values mean the offline λ / ν (``cfg.loss``)."""
    s = cfg.schedule
    return FinetuneSchedule(
        mixture_start=float(cfg.loss.mixture_coef if s.mixture_start is None else s.mixture_start),
        mixture_end=float(s.mixture_end),
        penalty_start=float(cfg.loss.penalty_coef if s.penalty_start is None else s.penalty_start),
        penalty_end=float(s.penalty_end),
        decay=float(s.decay),
        interval=int(s.interval),
    )


def offline_start_state(cfg: DictConfig, loss: LossModule) -> dict[str, Any]:
    """The updater state to fine-tune from: ``cfg.checkpoint``'s (the agent of seed
    ``cfg.checkpoint_seed`` for a seed-stacked offline run, see
    :func:`torchrl_dmg.training.offline_start_state`)."""
    return _offline_start_state(cfg.checkpoint, loss, cfg.get("checkpoint_seed"))


def with_offline_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg`` with the dataset, data, network and loss settings of ``cfg.checkpoint``'s run
    (the weights only fit those) and its algorithm's (``iql:``; the algorithm itself is
    checked by ``runs.check_start_checkpoint``), or unchanged when no checkpoint is given.
    The evaluation
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
                say(f"[dmg] using the checkpoint's dataset {saved.dataset} (not {cfg.dataset})")
            cfg[key] = saved[key]
    for key in ALGO_CONFIG_KEYS:
        if key in saved and key in cfg:
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
    (:func:`~torchrl_dmg.datagen.antmaze.mazes.antmaze_dataset_id`, generated on first
    use like any local dataset)."""
    try:
        return load_dataset(cfg, progress)
    except DatasetUnavailableError as err:
        variant = str(cfg.dataset).removeprefix(ANTMAZE_PREFIX).rsplit("-v", 1)[0]
        if str(cfg.dataset).startswith(ANTMAZE_PREFIX) and variant in ANTMAZE_VARIANTS:
            raise DatasetUnavailableError(
                f"AntMaze data '{cfg.dataset}' is not available here (no internet?). This "
                "project makes D4RL-style AntMaze data itself: use "
                f"dataset={antmaze_dataset_id(variant)} (generated on first use from the shipped "
                "goal-reaching ant; `python recipes/make_dataset.py env=antmaze-"
                f"{variant}` makes it ahead). Details: {err}"
            ) from None
        raise


def make_online_updater(
    loss: LossModule, cfg: DictConfig, state: dict[str, Any] | None = None
) -> ActorCriticUpdater:
    """The online updater: no cosine schedule (constant actor lr ``cfg.optim.lr``,
    spec), networks, targets and optimiser states loaded from ``state``. The actor lr is reset
    after loading: an offline optimiser state carries the end of its cosine schedule (~0)."""
    updater = make_updater(cfg, loss, steps=None)
    if state is not None:
        updater.load_state_dict(state)
    updater.set_actor_lr(cfg.optim.lr)
    return updater


#: fine-tuning keys that are no part of its offline phase's (an offline run's) config
FINETUNE_ONLY_KEYS = (
    "budget",
    "offline_steps",
    "online_steps",
    "checkpoint",
    "checkpoint_seed",
    "checkpoint_interval",
    "utd",
    "offline_fraction",
    "gamma",
    "schedule",
    "exploration",
    "collector",
    "resume",
)


def offline_phase_config(cfg: DictConfig) -> DictConfig:
    """The config of fine-tuning's offline phase (no ``checkpoint=``): an offline run's,
    ``recipes/offline.py``'s keys, of ``cfg.offline_steps`` steps with ``cfg``'s data,
    networks, loss and optimiser (its checkpoint is then usable as ``checkpoint=``)."""
    phase = OmegaConf.to_container(cfg, resolve=True)
    for key in FINETUNE_ONLY_KEYS:
        phase.pop(key, None)
    phase.update(
        steps=int(cfg.offline_steps),
        seeds=1,
        resume=None,
        checkpoint={"interval": int(cfg.checkpoint_interval)},
    )
    phase["compile"]["updates_per_call"] = 1
    return OmegaConf.create(phase)

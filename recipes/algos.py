"""The ``algo=`` choice of the recipes: each algorithm's loss from its config group
(config/algo/<algo>.yaml, specialised per family in config/algo_family/), the data
changes an algorithm's paper makes (IQL's reward scale), and how it acts and discounts
when fine-tuned (dmg and iql, the paper's Table 4)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Bounded
from torchrl.objectives import LossModule
from utils import value_init

from torchrl_dmg.data.offline import OfflineDataset
from torchrl_dmg.data.rewards import scale_rewards
from torchrl_dmg.modules import clip_actions, make_exploration_policy
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.objectives.baselines import (
    make_bc_loss,
    make_dmg_loss,
    make_iql_loss,
    make_td3bc_loss,
)
from torchrl_dmg.recording import say
from torchrl_dmg.training.compile import vmap_critics_by_default


def algo_name(cfg: DictConfig) -> str:
    """``cfg.algo``: dmg, iql, td3bc or bc."""
    return str(cfg.algo)


def _deactivate_vmap(cfg: DictConfig, device: torch.device) -> bool:
    """``network.vmap_critics``; ``auto``: :func:`vmap_critics_by_default`."""
    vmap = cfg.network.vmap_critics
    if vmap != "auto":
        return not vmap
    return not vmap_critics_by_default(device, cfg.compile.matmul_precision)


def _networks(cfg: DictConfig, dataset: OfflineDataset, device: torch.device) -> dict:
    low, high = dataset.action_bounds
    kwargs = {"num_cells": tuple(cfg.network.num_cells), "device": device}
    return {
        "obs_dim": dataset.obs_dim,
        "action_dim": dataset.action_dim,
        "low": low,
        "high": high,
        **kwargs,
    }


def _dmg(cfg: DictConfig, dataset: OfflineDataset, device: torch.device) -> LossModule:
    settings = dict(cfg.loss)  # λ, ν, τ, α, ... and γ, which goes to the value estimator
    return make_dmg_loss(
        **_networks(cfg, dataset, device),
        layer_norm=cfg.network.layer_norm,
        dropout=cfg.network.dropout,
        value_init=value_init(cfg, dataset),
        deactivate_vmap=_deactivate_vmap(cfg, device),
        gamma=float(settings.pop("gamma")),
        **settings,
    )


def _iql(cfg: DictConfig, dataset: OfflineDataset, device: torch.device) -> LossModule:
    return make_iql_loss(
        **_networks(cfg, dataset, device),
        **dict(cfg.iql),
        deactivate_vmap=_deactivate_vmap(cfg, device),
    )


def _td3bc(cfg: DictConfig, dataset: OfflineDataset, device: torch.device) -> LossModule:
    return make_td3bc_loss(
        **_networks(cfg, dataset, device),
        **dict(cfg.td3bc),
        deactivate_vmap=_deactivate_vmap(cfg, device),
    )


def _bc(cfg: DictConfig, dataset: OfflineDataset, device: torch.device) -> LossModule:
    return make_bc_loss(**_networks(cfg, dataset, device))


LOSSES = {"dmg": _dmg, "iql": _iql, "td3bc": _td3bc, "bc": _bc}


def make_loss(cfg: DictConfig, dataset: OfflineDataset, device: torch.device) -> LossModule:
    """The loss of ``cfg.algo`` for ``dataset`` (networks of ``cfg.network``'s sizes)."""
    algo = algo_name(cfg)
    if algo not in LOSSES:
        raise ValueError(f"algo={algo!r} is not one of {sorted(LOSSES)}.")
    return LOSSES[algo](cfg, dataset, device)


def prepare_rewards(cfg: DictConfig, dataset: OfflineDataset) -> float:
    """``cfg.data.reward_scale`` applied to the dataset's rewards (printed when not 1);
    returns the factor (fine-tuning applies it to the online rewards too)."""
    factor = scale_rewards(dataset.data, cfg.data.get("reward_scale"))
    if factor != 1.0:
        say(f"[dmg] rewards x {factor:.4g} (data.reward_scale={cfg.data.reward_scale})")
    return factor


def exploration_policy(
    algo: str, actor: TensorDictModuleBase, action_spec: Bounded, noise: float
) -> TensorDictModuleBase:
    """How ``algo``'s ``actor`` acts while fine-tuning. DMG's deterministic actor gets
    Gaussian noise (``noise · max_action``, clipped; spec); IQL's stochastic actor samples
    its actions, clipped to the bounds, as IQL's fine-tuning does. Both act
    deterministically under ``ExplorationType.DETERMINISTIC`` (evaluation)."""
    if algo == "iql":
        return clip_actions(actor, action_spec)  # samples under a collector's RANDOM
    return make_exploration_policy(actor, action_spec, noise=noise)


def set_discount(loss: LossModule, gamma: float) -> None:
    """γ of ``loss``, in place (after its state is loaded, which carries the offline γ):
    DMG's buffer, or the value estimator's of a TorchRL loss (IQL's ``r + γ V(s')``)."""
    if isinstance(loss, DMGLoss):
        loss.set_coefficients(gamma=gamma)
    else:
        with torch.no_grad():
            loss.value_estimator.gamma.fill_(gamma)

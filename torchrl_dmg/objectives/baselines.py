"""Every loss the recipes train, built on this project's networks from plain arguments:
DMG (:class:`~torchrl_dmg.objectives.DMGLoss`) and the baselines of the paper's Table 2 as
TorchRL's own losses, IQL (``IQLLoss``), TD3+BC (``TD3BCLoss``) and behaviour cloning
(``BCLoss``).

Defaults are their papers' Gym-MuJoCo settings; the recipes' ``algo`` config groups set the
per-family values (IQL on AntMaze: τ = 0.9, β = 10). Every baseline's critic loss is the
squared error (``loss_function="l2"``, as both papers; TorchRL's default is smooth L1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchrl.data import Bounded
from torchrl.objectives import BCLoss, IQLLoss, TD3BCLoss

from torchrl_dmg.modules import (
    make_actor,
    make_dmg_networks,
    make_iql_actor,
    make_qvalue,
    make_sac_actor,
    make_value,
)
from torchrl_dmg.objectives.dmg import DMGLoss

__all__ = ["make_bc_loss", "make_dmg_loss", "make_iql_loss", "make_td3bc_loss"]


def make_dmg_loss(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    gamma: float = 0.99,
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
    value_init: float | None = None,
    deactivate_vmap: bool = False,
    device: torch.device | str = "cpu",
    **loss_kwargs: Any,
) -> DMGLoss:
    """:class:`~torchrl_dmg.objectives.DMGLoss` on the paper's networks
    (:func:`~torchrl_dmg.modules.make_dmg_networks`), with γ set through its value estimator
    as TorchRL's losses take it (``make_value_estimator(gamma=...)``).

    ``loss_kwargs`` are :class:`DMGLoss`'s own (λ ``mixture_coef``, ν ``penalty_coef``,
    τ ``expectile``, α ``temperature``, ...); ``value_init`` starts the critics' and V's
    output near that value (``None``: PyTorch's initialisation, the paper's)."""
    actor, qvalue, value = make_dmg_networks(
        obs_dim,
        action_dim,
        low,
        high,
        num_cells=num_cells,
        layer_norm=layer_norm,
        dropout=dropout,
        value_init=value_init,
        device=device,
    )
    loss = DMGLoss(
        actor,
        qvalue,
        value,
        bounds=(low.to(device), high.to(device)),
        deactivate_vmap=deactivate_vmap,
        **loss_kwargs,
    )
    loss.make_value_estimator(gamma=gamma)
    return loss.to(device)


class _StackableIQLLoss(IQLLoss):
    """:class:`IQLLoss` whose targets without a copy of their own (the critic target's
    ``V``; the actor's, which IQLLoss names when it clears references under compile) read
    the current network through ``detach()`` instead of TorchRL's ``.data`` fallback, which
    ``torch.vmap`` (stacked seeds) forbids. The same tensors, without gradients."""

    def __getattr__(self, item: str):
        # in __getattr__, not a property: Dynamo, tracing stacked seeds, resolves these
        # names through __getattr__ (a property was bypassed for LossModule's fallback)
        if (
            item.startswith("target_")
            and item.endswith("_network_params")
            and item not in self._modules
        ):
            return getattr(self, item[len("target_") :]).detach()
        return super().__getattr__(item)


def make_iql_loss(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    expectile: float = 0.7,
    temperature: float = 3.0,
    gamma: float = 0.99,
    actor: str = "gaussian",
    num_cells: Sequence[int] = (256, 256),
    deactivate_vmap: bool = False,
    device: torch.device | str = "cpu",
) -> IQLLoss:
    r"""Implicit Q-Learning (Kostrikov, Nair, Levine; ICLR 2022), TorchRL's :class:`IQLLoss`.

    ``actor="gaussian"``: its authors' policy (:func:`~torchrl_dmg.modules.make_iql_actor`:
    a Gaussian, mean ``tanh`` of the network, a state-independent standard deviation, not
    squashed); ``"tanh_normal"``: the TanhNormal SAC actor
    (:func:`~torchrl_dmg.modules.make_sac_actor`) the project's IQL used before 2026-12-06,
    under which a dataset action on the bounds has a log-probability near ``-inf``.
    Evaluation acts with the deterministic action. Two critics with Polyak targets, a state
    value :math:`V`.
    :math:`V` regresses on :math:`\min_i Q_{\theta_i'}(s, a)` with the expectile loss
    (τ = ``expectile``); the critics on :math:`r + \gamma (1 - \text{terminated}) V(s')`;
    the actor by advantage-weighted regression,
    :math:`-\min(e^{\beta (Q' - V)}, 100) \log \pi(a|s)` (β = ``temperature``).
    """
    spec = Bounded(low.to(device), high.to(device), shape=(action_dim,), device=device)
    builders = {"gaussian": make_iql_actor, "tanh_normal": make_sac_actor}
    if actor not in builders:
        raise ValueError(
            f"iql actor must be one of {sorted(builders)}, got {actor!r} (iql.actor=gaussian "
            "is its authors' policy)."
        )
    policy = builders[actor](obs_dim, action_dim, spec, num_cells=num_cells).to(device)
    loss = _StackableIQLLoss(
        policy,
        make_qvalue(obs_dim, action_dim, num_cells=num_cells).to(device),
        make_value(obs_dim, num_cells=num_cells).to(device),
        expectile=expectile,
        temperature=temperature,
        loss_function="l2",
        deactivate_vmap=deactivate_vmap,
    )
    loss.make_value_estimator(gamma=gamma)
    return loss.to(device)


def make_td3bc_loss(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    alpha: float = 2.5,
    policy_noise: float = 0.2,
    noise_clip: float = 0.5,
    gamma: float = 0.99,
    num_cells: Sequence[int] = (256, 256),
    deactivate_vmap: bool = False,
    device: torch.device | str = "cpu",
) -> TD3BCLoss:
    r"""TD3+BC (Fujimoto, Gu; NeurIPS 2021), TorchRL's :class:`TD3BCLoss`.

    TD3's clipped double-Q critics with target-policy smoothing (noise σ = 0.2 clipped
    at 0.5, in action units) and a deterministic actor maximising
    :math:`\alpha Q(s, \pi(s)) / \text{mean}|Q| - (\pi(s) - a)^2` (α = 2.5); the actor
    and targets update every second critic step (the updater's ``policy_freq``). The
    paper normalises states: the recipes' ``algo=td3bc`` does.
    """
    loss = TD3BCLoss(
        make_actor(obs_dim, action_dim, low, high, num_cells=num_cells).to(device),
        make_qvalue(obs_dim, action_dim, num_cells=num_cells).to(device),
        bounds=(low.to(device), high.to(device)),
        alpha=alpha,
        policy_noise=policy_noise,
        noise_clip=noise_clip,
        loss_function="l2",
        deactivate_vmap=deactivate_vmap,
    )
    loss.make_value_estimator(gamma=gamma)
    return loss.to(device)


def make_bc_loss(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    num_cells: Sequence[int] = (256, 256),
    device: torch.device | str = "cpu",
) -> BCLoss:
    """Behaviour cloning, TorchRL's :class:`BCLoss`: the mean squared error between the
    deterministic actor's action (DMG's tanh-squashed actor) and the dataset's."""
    actor = make_actor(obs_dim, action_dim, low, high, num_cells=num_cells).to(device)
    return BCLoss(actor, loss_function="mse").to(device)

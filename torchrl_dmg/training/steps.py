"""What one update of each actor-critic loss is: which networks get an optimiser, which
keep Polyak targets, and the critic step and the (delayed) actor step as plain functions
of the updater and a batch.

:class:`~torchrl_dmg.training.updater.ActorCriticUpdater` builds, compiles, captures,
repeats (``K`` per call) and seed-stacks these steps the same way for every loss, so
DMG, IQL, TD3+BC, BC and SAC differ only here:

=========  ==========================  =====================  ===========  =============
loss       networks (one Adam each)    critic step            actor step   targets
=========  ==========================  =====================  ===========  =============
DMGLoss    value, qvalue, actor        V then Q (shared       DMG actor    actor, qvalue
                                       ``min_i Q_θi'(s,a)``)
IQLLoss    value, qvalue, actor        V (expectile τ) then   AWR (β)      qvalue
                                       Q
TD3BCLoss  qvalue, actor               Q (clipped noise)      TD3+BC (α)   actor, qvalue
BCLoss     actor                       none                   MSE to a     none
SACLoss    actor, qvalue, log_alpha    none (critic-only      Q, actor     qvalue
           (no log_alpha: fixed α)     warm-up: Q alone)      and α in one
                                                              backward
=========  ==========================  =====================  ===========  =============

Each step is a plain function of the updater and a batch: losses, their gradients
(``updater.descend``: ``torch.autograd.grad`` then Adam as a function of the gradients), and
for an actor step the target update. Nothing in it breaks a ``torch.compile`` graph, so the
updater compiles a whole iteration, backward pass and optimiser steps included, as one
graph.

TorchRL's losses are called through :func:`loss_method`: their public ``*_loss`` methods
and ``forward`` are wrapped by TorchRL in exploration / recurrent-mode context managers
that break ``torch.compile`` graphs; the steps call the bodies underneath, which is what
those methods compute (none of them samples from the actor: IQL's actor loss only reads a
log-probability, TD3+BC's actor is deterministic; SAC's ``forward`` is wrapped by
``dispatch`` alone, and its actor loss sets its own random exploration inside).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import BCLoss, IQLLoss, LossModule, SACLoss, TD3BCLoss

from torchrl_dmg.objectives import DMGLoss

if TYPE_CHECKING:
    from torchrl_dmg.training.updater import ActorCriticUpdater

__all__ = ["CARRY_PREFIX", "LossSteps", "checked_metrics", "loss_method", "steps_for"]

#: critic-step outputs whose key starts with this are not metrics: they are handed to
#: the actor step of the same iteration (DMG's ``min_i Q_θi'(s, a)``) and then dropped
CARRY_PREFIX = "_"
TARGET_Q_KEY = "_target_min_q"


def checked_metrics(metrics) -> dict[str, torch.Tensor]:
    """The entries of a step's metrics (a TensorDict or a mapping) that the NaN stop
    checks: floating-point tensors, the carried entries (``CARRY_PREFIX``) left out. One
    rule for the update's in-graph all-finite flag and for
    :class:`~torchrl_dmg.training.guards.FiniteGuard`, which names the culprit."""
    return {
        k: v
        for k, v in metrics.items()
        if not k.startswith(CARRY_PREFIX) and torch.is_tensor(v) and v.is_floating_point()
    }


Step = Callable[["ActorCriticUpdater", TensorDictBase], TensorDict]


def loss_method(loss: LossModule, name: str) -> Callable:
    """``loss.<name>`` without TorchRL's context-manager wrapper (compile-safe)."""
    function = getattr(type(loss), name)
    return getattr(function, "__wrapped__", function).__get__(loss)


@dataclass(frozen=True)
class LossSteps:
    """How an :class:`~torchrl_dmg.training.updater.ActorCriticUpdater` drives one loss.

    Attributes:
        name: the algorithm (``"dmg"``, ``"iql"``, ``"td3bc"``, ``"bc"``, ``"sac"``).
        networks: the trained networks (``loss.<name>_network_params``, or a parameter
            of the loss itself such as SAC's ``log_alpha``), one Adam each.
        targets: the networks whose ``target_<name>_network_params`` follow by Polyak
            averaging after each actor step.
        critic: the step run at every iteration, or ``None`` (no critic).
        actor: the step run every ``policy_freq`` iterations; it ends with
            ``updater.update_targets()``.
        critic_only: the iteration that trains the critics and leaves the actor as it
            is (``updater.update(batch, train_actor=False)``: a warm-started actor's
            critic warm-up); ``None``: the critic step alone.
    """

    name: str
    networks: tuple[str, ...]
    targets: tuple[str, ...]
    critic: Step | None
    actor: Step
    critic_only: Step | None = None


def _scalars(u: ActorCriticUpdater, metadata: dict) -> dict[str, torch.Tensor]:
    """Metadata as detached means over the batch, one per agent of a seed-stacked updater
    (its metadata lead with the agent dimension): what is logged (and copied out of a CUDA
    graph)."""
    lead = 0 if u._single_agent else 1
    return {
        k: v.detach().float().reshape(*v.shape[:lead], -1).mean(-1) for k, v in metadata.items()
    }


# ------------------------------------------------------------------------------ DMG
def _dmg_critic(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """Value step then critic step (the reference's order). Also returns
    ``min_i Q_θi'(s, a)``: the targets do not change before the actor step's Polyak update,
    so the actor step of the same iteration reuses it."""
    loss_value, md_value = u.loss_call("value_loss", batch)
    target_q = md_value.pop("target_min_q")
    u.descend("value", loss_value)
    loss_qvalue, md_qvalue = u.loss_call("qvalue_loss", batch)
    del md_qvalue["td_error"]
    u.descend("qvalue", loss_qvalue)
    return TensorDict(
        {
            "loss_value": loss_value.detach(),
            "loss_qvalue": loss_qvalue.detach(),
            **_scalars(u, md_value),
            **_scalars(u, md_qvalue),
            TARGET_Q_KEY: target_q,
        }
    )


def _dmg_actor(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    loss_actor, md_actor = u.loss_call("actor_loss", batch, batch.get(TARGET_Q_KEY))
    u.descend("actor", loss_actor)
    u.update_targets()
    return TensorDict({"loss_actor": loss_actor.detach(), **_scalars(u, md_actor)})


# ------------------------------------------------------------------------------ IQL
def _iql_critic(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """Expectile value step (τ) then the critic's TD(0) step on ``r + γ V(s')``."""
    loss_value, _ = u.loss_call("value_loss", batch)
    u.descend("value", loss_value)
    loss_qvalue, _ = u.loss_call("qvalue_loss", batch)
    u.descend("qvalue", loss_qvalue)
    return TensorDict({"loss_value": loss_value.detach(), "loss_qvalue": loss_qvalue.detach()})


def _iql_actor(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """Advantage-weighted regression: ``-min(exp(β (Q' - V)), 100) log π(a|s)``."""
    loss_actor, _ = u.loss_call("actor_loss", batch)
    u.descend("actor", loss_actor)
    u.update_targets()
    return TensorDict({"loss_actor": loss_actor.detach()})


# ------------------------------------------------------------------------------ TD3+BC
def _td3bc_critic(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """TD3's clipped double-Q step with target-policy smoothing."""
    loss_qvalue, md = u.loss_call("qvalue_loss", batch)
    u.descend("qvalue", loss_qvalue)
    md = _scalars(u, md)
    return TensorDict(
        {
            "loss_qvalue": loss_qvalue.detach(),
            "state_action_value": md["pred_value"],
            "target_value": md["target_value"],
        }
    )


def _td3bc_actor(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """``-α Q(s, π(s)) / mean|Q| + (π(s) - a)²``."""
    loss_actor, md = u.loss_call("actor_loss", batch)
    u.descend("actor", loss_actor)
    u.update_targets()
    md = _scalars(u, md)
    return TensorDict(
        {
            "loss_actor": loss_actor.detach(),
            "bc_loss": md["bc_loss"],
            "actor_q": md["state_action_value_actor"],
        }
    )


# ------------------------------------------------------------------------------ BC
def _bc_actor(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """Behaviour cloning: the actor's action regressed onto the dataset's (MSE)."""
    loss = u.loss_call("forward", batch).get("loss_bc")
    u.descend("actor", loss)
    u.update_targets()
    return TensorDict({"loss_actor": loss.detach()})


# ------------------------------------------------------------------------------ SAC
def _sac_step(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """SAC's whole iteration, as TorchRL's SAC example: one backward of
    ``loss_actor + loss_qvalue + loss_alpha`` (each reaches its own network only: the
    actor's loss reads detached critics, the TD target is computed without gradient), the
    optimiser steps, then the Polyak update of the critics' targets."""
    losses = u.loss_call("forward", batch)
    total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
    u.descend(u.steps.networks, total)
    u.update_targets()
    return losses.detach()


def _sac_critic_only(u: ActorCriticUpdater, batch: TensorDictBase) -> TensorDict:
    """The critics' step alone (the same forward, only ``loss_qvalue`` back-propagated),
    then their targets. α stays too: with the actor held, its loss would push it one way
    for the whole warm-up (x20 in 10k steps)."""
    losses = u.loss_call("forward", batch)
    u.descend("qvalue", losses["loss_qvalue"])
    u.update_targets()
    return losses.detach()


SAC_STEPS = LossSteps(
    "sac",
    ("actor", "qvalue", "log_alpha"),
    ("qvalue",),
    None,
    _sac_step,
    critic_only=_sac_critic_only,
)

STEPS: dict[type, LossSteps] = {
    DMGLoss: LossSteps(
        "dmg", ("value", "qvalue", "actor"), ("actor", "qvalue"), _dmg_critic, _dmg_actor
    ),
    IQLLoss: LossSteps("iql", ("value", "qvalue", "actor"), ("qvalue",), _iql_critic, _iql_actor),
    TD3BCLoss: LossSteps(
        "td3bc", ("qvalue", "actor"), ("actor", "qvalue"), _td3bc_critic, _td3bc_actor
    ),
    BCLoss: LossSteps("bc", ("actor",), (), None, _bc_actor),
    SACLoss: SAC_STEPS,
}


def steps_for(loss: LossModule) -> LossSteps:
    """The :class:`LossSteps` of ``loss`` (by its class, subclasses included); a SAC with
    a fixed α trains no ``log_alpha``."""
    for cls in type(loss).__mro__:
        if cls in STEPS:
            steps = STEPS[cls]
            if steps is SAC_STEPS and loss.fixed_alpha:
                steps = replace(steps, networks=("actor", "qvalue"))
            return steps
    raise TypeError(
        f"No update steps are defined for {type(loss).__name__}; the updater drives "
        f"{', '.join(c.__name__ for c in STEPS)} (pass steps=LossSteps(...) for another loss)."
    )

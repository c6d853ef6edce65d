"""The behaviour trainer's SAC update is the project's ActorCriticUpdater driving TorchRL's
SACLoss, and it computes what the removed ``SACUpdater`` computed, bit for bit.

``_OldSACStep`` is a frozen copy of that class's eager step math, kept here only as the
reference: one backward of ``loss_actor + loss_qvalue + loss_alpha``, one step of the
grouped fused Adams, then the Polyak update; the critic-only warm-up step back-propagates
``loss_qvalue`` alone."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.objectives import SACLoss, SoftUpdate, group_optimizers

from torchrl_dmg.datagen.behaviour.sac import SACSettings, load_updater_state, make_sac_updater
from torchrl_dmg.modules import make_sac_actor, make_sac_qvalue
from torchrl_dmg.training.compile import leaves

SPEC = Bounded(-1.0, 1.0, shape=(3,))


class _OldSACStep:
    """The removed ``SACUpdater`` in eager mode (vmapped critics, its eager default)."""

    def __init__(self, lr: float, alpha_init: float = 1.0, fixed_alpha: bool = False):
        self.loss = SACLoss(
            make_sac_actor(11, 3, SPEC, (16, 16)),
            make_sac_qvalue(11, 3, (16, 16)),
            num_qvalue_nets=2,
            loss_function="l2",
            alpha_init=alpha_init,
            fixed_alpha=fixed_alpha,
            action_spec=SPEC,
            target_entropy="auto",
            delay_actor=False,
            delay_qvalue=True,
            deactivate_vmap=False,
        )
        self.loss.make_value_estimator(gamma=0.99)
        _ = self.loss.target_entropy
        self.target_updater = SoftUpdate(self.loss, tau=0.005)
        alpha = [] if fixed_alpha else [torch.optim.Adam([self.loss.log_alpha], lr=lr, fused=True)]
        self.optimizer = group_optimizers(
            torch.optim.Adam(leaves(self.loss.actor_network_params), lr=lr, fused=True),
            torch.optim.Adam(leaves(self.loss.qvalue_network_params), lr=lr, fused=True),
            *alpha,
        )
        self.num_updates = 0

    def update(self, batch, train_actor: bool = True):
        losses = self.loss(batch)
        if train_actor:
            (losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]).backward()
        else:
            losses["loss_qvalue"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.target_updater.step()
        self.num_updates += 1
        return losses.detach()

    def state_dict(self):
        return {
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_updates": self.num_updates,
        }


def _new(lr: float, alpha_init: float = 1.0, fixed_alpha: bool = False):
    settings = SACSettings(
        lr=lr, update_mode="eager", alpha_init=alpha_init, fixed_alpha=fixed_alpha
    )
    actor = make_sac_actor(11, 3, SPEC, (16, 16))
    return make_sac_updater(actor, make_sac_qvalue(11, 3, (16, 16)), SPEC, settings)


def _batches(count: int, n: int = 32) -> list[TensorDict]:
    g = torch.Generator().manual_seed(0)
    return [
        TensorDict(
            {
                "observation": torch.randn(n, 11, generator=g),
                "action": torch.rand(n, 3, generator=g) * 2 - 1,
                "next": {
                    "observation": torch.randn(n, 11, generator=g),
                    "reward": torch.randn(n, 1, generator=g),
                    "terminated": torch.rand(n, 1, generator=g) < 0.1,
                    "done": torch.rand(n, 1, generator=g) < 0.2,
                },
            },
            batch_size=[n],
        )
        for _ in range(count)
    ]


def _run(updater, batches, freeze: int, seed: int = 1) -> list[TensorDict]:
    torch.manual_seed(seed)  # the actor's samples: the same stream on both sides
    return [
        updater.update(batch.clone(), train_actor=updater.num_updates >= freeze)
        for batch in batches
    ]


def _assert_same_run(old, new, old_losses, new_losses) -> None:
    old_state, new_state = old.loss.state_dict(), new.loss.state_dict()
    assert old_state.keys() == new_state.keys()
    for key, value in old_state.items():
        assert torch.equal(new_state[key], value), key
    for a, b in zip(old_losses, new_losses, strict=True):
        for key in ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"):
            assert torch.equal(a[key], b[key]), key
    # the Adam moments too, parameter by parameter: a resumed run goes on identically
    for name in new.steps.networks:
        params = zip(
            leaves(new.network_params(name)),
            leaves(_old_params(old, name)),
            strict=True,
        )
        for new_param, old_param in params:
            a, b = old.optimizer.state[old_param], new.optimizers[name].state[new_param]
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(a[key], b[key]), (name, key)


def _old_params(old: _OldSACStep, name: str) -> TensorDict:
    if name == "log_alpha":
        return TensorDict({"log_alpha": old.loss.log_alpha})
    return getattr(old.loss, f"{name}_network_params")


@pytest.mark.parametrize(
    "settings",
    [dict(lr=1e-3), dict(lr=1e-3, alpha_init=0.05, fixed_alpha=True)],
    ids=["tuned_alpha", "fixed_alpha"],
)
def test_sac_update_is_bit_identical_to_the_old_sac_updater(settings):
    """300 updates, the first 50 critic-only (a warm start's actor_freeze_updates)."""
    batches = _batches(300)
    torch.manual_seed(0)
    old = _OldSACStep(**settings)
    torch.manual_seed(0)
    new = _new(**settings)
    old_losses = _run(old, batches, freeze=50)
    new_losses = _run(new, batches, freeze=50)
    assert new.num_updates == old.num_updates == 300
    _assert_same_run(old, new, old_losses, new_losses)


def test_an_old_sac_updater_state_resumes_bit_identically():
    """A state.pt of the old trainer (keys loss, optimizer, num_updates) loads into the new
    updater, which then goes on exactly as the old one would have."""
    batches = _batches(60)
    torch.manual_seed(0)
    old = _OldSACStep(lr=1e-3)
    _run(old, batches[:30], freeze=10)
    saved = copy.deepcopy(old.state_dict())  # as torch.save then torch.load give it
    torch.manual_seed(5)
    new = _new(lr=1e-3)  # other initial weights: all of them come from the state
    load_updater_state(new, saved)
    assert new.num_updates == 30
    old_losses = _run(old, batches[30:], freeze=0, seed=2)
    new_losses = _run(new, batches[30:], freeze=0, seed=2)
    _assert_same_run(old, new, old_losses, new_losses)

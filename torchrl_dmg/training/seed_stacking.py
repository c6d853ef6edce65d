"""``N`` agents of any actor-critic loss trained as one: stacked parameters, one vmapped
update."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule

from torchrl_dmg.modules import SeedStackedPolicy
from torchrl_dmg.training.compile import precision_context
from torchrl_dmg.training.steps import loss_method, steps_for
from torchrl_dmg.training.updater import ActorCriticUpdater, DMGUpdater

__all__ = ["SeedStackedDMGUpdater", "SeedStackedUpdater", "unstack_updater_state"]


class SeedStackedUpdater(ActorCriticUpdater):
    """``N`` independent agents of one loss (DMG, IQL, TD3+BC, BC) trained in one process,
    one update for all of them.

    The agents' parameters, targets and coefficient buffers are stacked along a leading
    seed dimension (:attr:`stacked`, a TensorDict of batch size ``[N]``) and every loss
    is ``torch.vmap``-ed over that dimension, with ``randomness="different"`` so each
    agent draws its own target-policy noise. Batches have batch size ``[N, B]``: each
    agent trains on its own samples. Adam is element-wise, so one optimiser over the
    stacked tensors is ``N`` independent Adams; the summed loss only couples a seed's
    parameters to its own loss term. Modes, delay and schedules are those of
    :class:`ActorCriticUpdater`.

    Args:
        losses: ``N`` losses of one class and identical architecture, typically built
            under different seeds. Their current parameters become the starting point; the
            first one is then only used as a stateless skeleton (its own parameters are
            not trained: read the agents from :attr:`stacked` or :meth:`agent_state`).
        **kwargs: as for :class:`ActorCriticUpdater`.
    """

    def __init__(self, losses: list[LossModule], **kwargs) -> None:
        if kwargs.get("skip_guards"):
            raise ValueError(
                "skip_guards=True is for a single agent (seeds=1): the vmapped loss of stacked "
                "seeds is compiled in frames shared across calls, whose guards must run."
            )
        if len(losses) < 1:
            raise ValueError(f"{type(self).__name__} needs at least one loss.")
        states = [TensorDict.from_module(loss, as_module=False) for loss in losses]
        keys = set(states[0].keys(True, True))
        for i, state in enumerate(states[1:], 1):
            if set(state.keys(True, True)) != keys or any(
                state.get(k).shape != states[0].get(k).shape for k in keys
            ):
                raise ValueError(
                    f"losses[{i}] does not have the architecture of losses[0]; the stacked "
                    "agents must share network sizes and loss settings."
                )
        stacked = TensorDict.stack([s.detach() for s in states]).clone()
        for name in (kwargs.get("steps") or steps_for(losses[0])).networks:
            params = stacked.get(f"{name}_network_params")
            for key, value in list(params.items(True, True)):
                source = getattr(losses[0], f"{name}_network_params").get(key)
                if isinstance(source, torch.nn.Parameter) and source.requires_grad:
                    params.set(key, torch.nn.Parameter(value))
        self.stacked = stacked
        self.num_seeds = len(losses)
        super().__init__(losses[0], **kwargs)

    _single_agent = False

    def network_params(self, name: str) -> TensorDictBase:
        return self.stacked.get(f"{name}_network_params")

    def loss_call(self, method: str, batch: TensorDictBase, *args: torch.Tensor):
        if batch.batch_size[:1] != torch.Size([self.num_seeds]):
            raise ValueError(
                f"A seed-stacked batch must have batch size [num_seeds={self.num_seeds}, B], "
                f"got {list(batch.batch_size)}; sample with DeviceSampler(num_seeds=...)."
            )
        skeleton, function = self.loss, loss_method(self.loss, method)

        def one_agent(state: TensorDictBase, batch: TensorDictBase, *args: torch.Tensor):
            with state.to_module(skeleton):
                # TorchRL's losses cache views of their parameters (TD3BCLoss's detached
                # critic): computed from this agent's, and not kept past the call
                # (compiled code uses no cache)
                if torch.compiler.is_compiling():
                    return function(batch, *args)
                skeleton._erase_cache()
                try:
                    return function(batch, *args)
                finally:
                    skeleton._erase_cache()

        in_dims = (0, 0) + (0,) * len(args)
        with precision_context(self.autocast_dtype, self.device):  # as the single agent's
            return torch.vmap(one_agent, in_dims, randomness="different")(
                self.stacked, batch, *args
            )

    def _make_target_updater(self):
        # update_targets below is this loss's target updater (on the stacked tensors); tell
        # TorchRL so, as SoftUpdate's constructor does, or every read of a target warns
        for name in self.loss._has_update_associated:
            self.loss._has_update_associated[name] = True
        return None

    @torch.no_grad()
    def update_targets(self) -> None:
        for name in self.steps.targets:
            target = self.stacked.get(f"target_{name}_network_params")
            source = self.stacked.get(f"{name}_network_params")
            keys = list(source.keys(True, True))
            torch._foreach_lerp_(
                [target.get(k) for k in keys], [source.get(k).data for k in keys], self.tau
            )

    def agents_in_loss(self) -> contextlib.AbstractContextManager:
        """The stacked agents' tensors (batch ``[N]``) swapped into the skeleton loss."""
        return self.stacked.to_module(self.loss)

    def policy(self):
        """All agents acting at once: agent ``i`` in the ``i``-th block of env copies."""
        return SeedStackedPolicy(self.loss.actor_network, self.network_params("actor"))

    def agent_state(self, index: int) -> TensorDictBase:
        """Agent ``index``'s parameters, targets and buffers (``to_module`` them into a loss)."""
        return self.stacked[index]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("loss")
        state["stacked"] = self.stacked.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.stacked.update_(state["stacked"].to(self.stacked.device))
        state = {**state, "loss": self.loss.state_dict()}
        super().load_state_dict(state)


class SeedStackedDMGUpdater(SeedStackedUpdater, DMGUpdater):
    """:class:`SeedStackedUpdater` of ``N`` :class:`~torchrl_dmg.objectives.DMGLoss` (arguments as for it)."""


def unstack_updater_state(state: dict[str, Any], index: int, loss: LossModule) -> dict[str, Any]:
    """Agent ``index`` of a :class:`SeedStackedUpdater` state, as a single-agent
    :meth:`ActorCriticUpdater.state_dict` (weights, targets and the agent's slice of every
    Adam moment). ``loss`` (same architecture) receives the agent's weights on the way."""
    stacked = state["stacked"]
    n = stacked.batch_size[0]
    if not 0 <= index < n:
        raise IndexError(f"Agent {index} requested from a stack of {n} agents.")
    with torch.no_grad():  # from_module shares the loss's tensors: copy into them
        TensorDict.from_module(loss, as_module=False).update_(stacked[index])

    def agent_optim(optim_state: dict) -> dict:
        per_param = {
            pid: {
                k: (v[index] if v.dim() and v.shape[0] == n else v).clone()
                if torch.is_tensor(v)
                else v
                for k, v in param_state.items()
            }
            for pid, param_state in optim_state["state"].items()
        }
        return {"state": per_param, "param_groups": optim_state["param_groups"]}

    single = {k: v for k, v in state.items() if k != "stacked"}
    for name in [k for k in state if k.startswith("optim_")]:
        single[name] = agent_optim(state[name])
    single["loss"] = loss.state_dict()
    return single

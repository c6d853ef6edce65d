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
                "skip_guards=True is for a single agent (seeds=1): stacked seeds keep their "
                "guards (a graph break inside a loss would leave frames shared across calls)."
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
        self._state_keys = list(stacked.keys(True, True))
        #: each nested TensorDict's batch size in one agent's state (a vmapped ensemble's
        #: parameters lead with their own dimension), innermost first
        self._state_sizes = sorted(
            (
                (key, value.batch_size[1:])
                for key, value in stacked.items(True)
                if isinstance(value, TensorDictBase) and value.batch_size[1:]
            ),
            key=lambda item: -len(item[0]) if isinstance(item[0], tuple) else -1,
        )
        self.num_seeds = len(losses)
        super().__init__(losses[0], **kwargs)
        if (
            self.autocast_dtype is not None
            and self.mode != "eager"
            and self.num_seeds > 1
            and getattr(losses[0], "deactivate_vmap", False)
        ):
            raise ValueError(
                "stacked seeds compiled with bf16 matmuls need their critics vmapped: with a "
                "loop over the critics, inductor's AVX-512 code for this graph returns NaN "
                "(torch 2.13); build the losses with deactivate_vmap=False (the recipes: "
                "network.vmap_critics=true), or use mode='eager' or matmul_precision='highest'."
            )

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
        # vmapped over plain tensors, each agent's state and batch rebuilt as unbatched
        # TensorDicts inside: vmapping the stacked TensorDicts themselves goes through
        # TensorDict's own batching (new TensorDictParams per call) and breaks the
        # compiled graph in ten places, so the backward pass and Adam ran outside it
        state_keys = self._state_keys
        batch_keys = list(batch.keys(True, True))
        batch_size = batch.batch_size[1:]

        def one_agent(state_leaves, batch_leaves, *args: torch.Tensor):
            state = _unflatten(state_keys, state_leaves, torch.Size(), self._state_sizes)
            agent_batch = _unflatten(batch_keys, batch_leaves, batch_size)
            saved = _swap_in(skeleton, state)
            try:
                # TorchRL's losses cache views of their parameters (TD3BCLoss's detached
                # critic): computed from this agent's, and not kept past the call
                # (compiled code uses no cache)
                if torch.compiler.is_compiling():
                    out = function(agent_batch, *args)
                else:
                    skeleton._erase_cache()
                    try:
                        out = function(agent_batch, *args)
                    finally:
                        skeleton._erase_cache()
            finally:
                _swap_in(skeleton, saved)
            return _plain(out)

        state_leaves = [self.stacked.get(k) for k in state_keys]
        batch_leaves = [batch.get(k) for k in batch_keys]
        in_dims = (0, 0) + (0,) * len(args)
        with precision_context(self.autocast_dtype, self.device):  # as the single agent's
            out = torch.vmap(one_agent, in_dims, randomness="different")(
                state_leaves, batch_leaves, *args
            )
        return _restore(out, self.num_seeds)

    def _make_target_updater(self):
        # update_targets below is this loss's target updater (on the stacked tensors); tell
        # TorchRL so, as SoftUpdate's constructor does, or every read of a target warns
        for name in self.loss._has_update_associated:
            self.loss._has_update_associated[name] = True
        return None

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


def _swap_in(loss: torch.nn.Module, state: dict | TensorDictBase) -> dict:
    """Put ``state``'s top-level entries (the networks' parameter TensorDicts, the loss's
    own buffers and parameters) in the loss in place of its own; returns what they
    replaced, to swap back. TensorDict's ``to_module`` would do this by copying the loss's
    ``TensorDictParams`` (new modules), which breaks a compiled graph."""
    saved = {}
    for key, value in state.items():
        module = loss._modules.get(key)
        if module is not None and not isinstance(module, TensorDictBase):
            # a plain submodule holding buffers (the value estimator's γ): into it
            saved[key] = _swap_in(module, value)
            continue
        for store in (loss._modules, loss._parameters, loss._buffers):
            if key in store:
                saved[key] = store[key]
                store[key] = value
                break
        else:
            raise KeyError(f"{type(loss).__name__} has no module, parameter or buffer {key!r}")
    return saved


def _unflatten(
    keys: list, leaves: list, batch_size: torch.Size, nested_sizes: list = ()
) -> TensorDict:
    """A TensorDict of ``batch_size`` from its leaves' (nested) keys and values, its nested
    TensorDicts given the batch sizes of ``nested_sizes`` (``(key, size)``, innermost first)."""
    out = TensorDict(batch_size=batch_size)
    for key, value in zip(keys, leaves, strict=True):
        out.set(key, value)
    for key, size in nested_sizes:
        out.get(key).batch_size = size
    return out


#: how a TensorDict returned by a loss method crosses vmap (which returns pytrees of tensors)
_TD_MARK = "_tensordict_leaves"


def _plain(out: Any) -> Any:
    """A loss method's output as vmap can return it: a TensorDict as ``{_TD_MARK: {key:
    leaf}}``."""
    if isinstance(out, TensorDictBase):
        return {_TD_MARK: {key: out.get(key) for key in out.keys(True, True)}}
    if isinstance(out, tuple):
        return tuple(_plain(o) for o in out)
    return out


def _restore(out: Any, num_seeds: int) -> Any:
    """:func:`_plain` undone, each TensorDict of batch size ``[num_seeds]``."""
    if isinstance(out, dict) and set(out) == {_TD_MARK}:
        leaves = out[_TD_MARK]
        return _unflatten(list(leaves), list(leaves.values()), torch.Size([num_seeds]))
    if isinstance(out, tuple):
        return tuple(_restore(o, num_seeds) for o in out)
    return out


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

"""The DMG update step, shared by the offline and fine-tuning recipes, and checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import types
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.objectives import SoftUpdate

from torchrl_dmg.objectives import DMGLoss

UpdateMode = Literal["eager", "compile", "cudagraphs"]


class DMGUpdater:
    """One DMG iteration: value step, critic step, then every ``policy_freq`` iterations
    an actor step followed by a Polyak update of the actor and critic targets.

    The value+critic step and the actor step are two separate functions, so that each
    can be compiled (``mode="compile"``) or captured (``mode="cudagraphs"``) without a
    Python branch inside; the delay counter lives here, in Python, and is therefore never
    frozen by compilation.

    Args:
        loss: the :class:`DMGLoss`.
        lr: Adam learning rate for all three networks (spec: 3e-4).
        tau: Polyak rate of the target update (spec: 0.005), via :class:`SoftUpdate`.
        policy_freq: critic steps per actor step (spec: 2).
        actor_cosine_steps: if given, the actor's learning rate follows a cosine
            schedule over this many *actor* updates (spec, offline phase).
        mode: ``"eager"``, ``"compile"`` (``torch.compile``) or ``"cudagraphs"``
            (``torch.compile`` + :class:`tensordict.nn.CudaGraphModule`, CUDA only).
        cudagraph_warmup: eager calls before a graph is captured (``"cudagraphs"`` only).
        compile_backend: ``torch.compile`` backend. Default: ``"inductor"`` on CUDA,
            ``"aot_eager"`` on CPU (it removes TensorDict's per-op Python work and runs the
            ATen kernels as they are; inductor's CPU kernels were slower there).
        skip_guards: ``mode="compile"`` only, for a host-bound update (a CPU): each
            ``backward()`` is traced into its step's graph (Dynamo's ``trace_autograd_ops``)
            and, after ``guard_warmup`` iterations, Dynamo's guards are no longer evaluated
            before each call (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``).
            Not for :class:`SeedStackedDMGUpdater`. The guards check every parameter and
            TensorDict entry, ~0.35 ms per call on one CPU core, ~10% of an iteration, and
            an update's inputs never change: the steps are compiled for this updater alone
            (a cache no other updater shares), and the one thing that could change, the
            batch's keys, shapes, dtypes and devices, is checked here instead (a different
            batch is an error).
    """

    def __init__(
        self,
        loss: DMGLoss,
        *,
        lr: float = 3e-4,
        tau: float = 0.005,
        policy_freq: int = 2,
        actor_cosine_steps: int | None = None,
        mode: UpdateMode = "eager",
        cudagraph_warmup: int = 3,
        compile_backend: str | None = None,
        skip_guards: bool = False,
        guard_warmup: int = 8,
    ) -> None:
        self._cudagraph_warmup = cudagraph_warmup
        self._many_step = None  # built on the first update_many call
        if policy_freq < 1:
            raise ValueError(f"policy_freq must be >= 1, got {policy_freq}.")
        if mode not in ("eager", "compile", "cudagraphs"):
            raise ValueError(f"mode must be 'eager', 'compile' or 'cudagraphs', got {mode!r}.")
        device = next(iter(loss.parameters())).device
        if mode == "cudagraphs" and device.type != "cuda":
            raise ValueError(
                f"mode='cudagraphs' needs the loss on a CUDA device (it is on {device}); "
                "use mode='compile' or 'eager' on CPU."
            )
        if skip_guards and mode != "compile":
            raise ValueError(
                f"skip_guards=True is for mode='compile' (got mode={mode!r}): eager code has "
                "no guards, and a CUDA-graph replay skips them already."
            )
        self.loss = loss
        self.device = device
        self.policy_freq = policy_freq
        self.mode = mode
        self.skip_guards = skip_guards
        self.guard_warmup = guard_warmup
        self._batch_signatures: dict[str, list] = {}  # per entry point: update, update_many
        # Fused Adam is one kernel per step. Compiled steps read the learning rate from a
        # tensor, which the cosine schedule updates in place (``fill_``): a float lr would
        # be a constant baked into the compiled code (a recompile at every change). Under
        # CUDA graphs the optimisers must also be capturable.
        graphs = mode == "cudagraphs"
        tensor_lr = mode != "eager"
        opt_kwargs: dict[str, Any] = {"fused": device.type in ("cpu", "cuda")}
        if graphs:
            opt_kwargs["capturable"] = True
        self.optim_value, self.optim_qvalue, self.optim_actor = (
            self._adam(self.network_params(name), lr, tensor_lr, device, opt_kwargs)
            for name in ("value", "qvalue", "actor")
        )
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optim_actor, T_max=actor_cosine_steps)
            if actor_cosine_steps
            else None
        )
        self.tau = tau
        self.target_updater = self._make_target_updater()
        self.num_updates = 0
        # What gets compiled ("compile", "cudagraphs"): the whole critic step and the whole
        # actor step (losses, backward, optimiser steps, target update), each its own graph;
        # "cudagraphs" then captures each as a CUDA graph. The delay counter stays in
        # Python, so no branch lives inside a graph.
        self._critic_step = self.critic_step
        self._actor_step = self.actor_step
        if mode != "eager":
            # TensorDicts as pytree nodes make tensordict's vmap swap pytree registrations
            # on every call, which torch.compile guards on: a recompile per call. Compiled
            # code (and CudaGraphModule, which does the same) wants them excluded.
            from tensordict.nn.functional_modules import _exclude_td_from_pytree

            _exclude_td_from_pytree().set()
            backend = compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
            critic_step, actor_step = self.critic_step, self.actor_step
            if skip_guards:
                # private code objects: Dynamo caches per code object, so this updater's
                # steps get a cache of their own (no other updater's entries to tell apart
                # once guards are skipped). Without it, later updaters reuse the traced
                # graphs of earlier ones where the guards allow (much faster to build).
                critic_step, actor_step = _private(critic_step), _private(actor_step)
            self._critic_step = torch.compile(critic_step, backend=backend)
            self._actor_step = torch.compile(actor_step, backend=backend)
        self._compiled_steps = (self._critic_step, self._actor_step)
        if graphs:
            self._critic_step = self._captured(self._critic_step)
            self._actor_step = self._captured(self._actor_step)

    def _captured(self, function: Callable) -> Callable:
        """``function`` (TensorDicts in and out) replayed as a CUDA graph after warm-up."""
        from tensordict.nn import CudaGraphModule

        return CudaGraphModule(function, in_keys=[], out_keys=[], warmup=self._cudagraph_warmup)

    @staticmethod
    def _adam(params_td, lr, tensor_lr, device, kwargs) -> torch.optim.Adam:
        if tensor_lr:
            lr = torch.tensor(lr, device=device)
        return torch.optim.Adam(_params(params_td), lr=lr, **kwargs)

    # -------------------------------------------------------- hooks (overridden per seed stack)
    def network_params(self, name: str) -> TensorDictBase:
        """Trainable parameters of the ``"value"``, ``"qvalue"`` or ``"actor"`` network."""
        return getattr(self.loss, f"{name}_network_params")

    def loss_call(self, method: str, batch: TensorDictBase, *args: torch.Tensor):
        """``loss.<method>(batch, *args)``. The updater calls the loss bodies (``_value_loss``
        ...), which compile into whole graphs (see ``DMGLoss``)."""
        return getattr(self.loss, method)(batch, *args)

    def _make_target_updater(self):
        return SoftUpdate(self.loss, tau=self.tau)

    def update_targets(self) -> None:
        """Polyak update of the actor and critic targets."""
        self.target_updater.step()

    def _backward(self, method: str, batch: TensorDictBase, *args) -> tuple[torch.Tensor, dict]:
        loss, metadata = self.loss_call(method, batch, *args)
        loss.sum().backward()  # a scalar, or one loss per stacked seed (independent terms)
        return loss.detach(), metadata

    #: ``min_i Q_θi'(s, a)``, passed from the critic step to the actor step of an iteration
    TARGET_Q_KEY = "_target_min_q"

    def critic_step(self, batch: TensorDict) -> TensorDict:
        """Value step then critic step (in this order, as in the reference).

        Besides the metrics, returns ``min_i Q_θi'(s, a)`` on the batch (``TARGET_Q_KEY``):
        the target critics do not change until the actor step's Polyak update, so the actor
        step of the same iteration reuses it instead of recomputing it. Inputs and outputs
        are TensorDicts only: that is what a CUDA graph copies in and out at each replay.
        """
        target_q = self.loss_call("_target_min_q", batch)
        loss_value, md_value = self._backward("_value_loss", batch, target_q)
        _optimizer_step(self.optim_value)
        loss_qvalue, md_qvalue = self._backward("_qvalue_loss", batch)
        _optimizer_step(self.optim_qvalue)
        return TensorDict(
            {
                "loss_value": loss_value,
                "loss_qvalue": loss_qvalue,
                **md_value,
                **md_qvalue,
                self.TARGET_Q_KEY: target_q,
            }
        )

    def actor_step(self, batch: TensorDict) -> TensorDict:
        """Actor step then the Polyak update of the targets; ``batch`` carries the critic
        step's ``TARGET_Q_KEY``."""
        target_q = batch.get(self.TARGET_Q_KEY)
        loss_actor, md_actor = self._backward("_actor_loss", batch, target_q)
        _optimizer_step(self.optim_actor)
        self.update_targets()
        return TensorDict({"loss_actor": loss_actor, **md_actor})

    def _dynamo_context(
        self, batch: TensorDictBase, entry: str = "update"
    ) -> contextlib.AbstractContextManager:
        """What the compiled steps run under: nothing, or (``skip_guards``) the tracing of
        ``backward()`` and, after the warm-up, no guard evaluation, once ``batch`` matched
        the warm-up's batches."""
        if not self.skip_guards:
            return contextlib.nullcontext()
        signature = [
            (key, value.shape, value.dtype, value.device)
            for key, value in batch.items(include_nested=True, leaves_only=True)
        ]
        first = self._batch_signatures.setdefault(entry, signature)
        if signature != first:
            raise ValueError(
                f"skip_guards=True: this {entry} batch differs from the first one in its keys, "
                f"shapes, dtypes or devices ({signature} vs {first}); keep one batch size, or "
                "build the updater with skip_guards=False."
            )
        stack = contextlib.ExitStack()
        stack.enter_context(torch._dynamo.config.patch(trace_autograd_ops=True))
        if self.num_updates >= self.guard_warmup:
            stack.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
        return stack

    def update(self, batch: TensorDict) -> TensorDict:
        """One iteration on ``batch``; returns detached metrics (actor ones on actor steps)."""
        with self._dynamo_context(batch):
            return self._update(batch)

    def _update(self, batch: TensorDict) -> TensorDict:
        metrics = self._critic_step(batch)
        target_q = metrics.pop(self.TARGET_Q_KEY)
        self.num_updates += 1
        if self.num_updates % self.policy_freq == 0:
            # a shallow copy: the caller's batch is left as it was
            metrics.update(self._actor_step(batch.copy().set(self.TARGET_Q_KEY, target_q)))
            if self.scheduler is not None:
                self.scheduler.step()
        return metrics

    #: the actor's learning rates for the actor steps of an :meth:`update_many` call
    ACTOR_LRS_KEY = "_actor_lrs"

    def many_step(self, inputs: TensorDict) -> TensorDict:
        """``K`` iterations in a row on ``inputs["batches"]`` (batch ``[K, ...]``), as
        :meth:`update` would run them from an iteration count that is a multiple of
        ``policy_freq`` (``K`` is one too): the actor step follows every
        ``policy_freq``-th critic step, at a position fixed by ``k``, so the whole loop is
        branch-free and one CUDA graph captures it. ``inputs`` may carry ``"actor_lrs"``:
        the actor's learning rate for each actor step, then the one to leave in place (the
        cosine schedule, computed on the host and copied in at each replay)."""
        critic_step, actor_step = self._compiled_steps
        batches, lrs = inputs.get("batches"), inputs.get("actor_lrs", None)
        critic, actor = [], []
        for k in range(batches.shape[0]):
            batch = batches[k]
            metrics = critic_step(batch)
            target_q = metrics.pop(self.TARGET_Q_KEY)
            critic.append(metrics)
            if (k + 1) % self.policy_freq == 0:
                if lrs is not None:
                    self.set_actor_lr(lrs[len(actor)])
                actor.append(actor_step(batch.set(self.TARGET_Q_KEY, target_q)))
        if lrs is not None:
            self.set_actor_lr(lrs[len(actor)])
        return TensorDict({"critic": torch.stack(critic), "actor": torch.stack(actor)})

    def set_actor_lr(self, lr: float | torch.Tensor) -> None:
        """Set the actor's learning rate. A tensor lr (compiled modes) is written in place:
        it is what a compiled step or a CUDA graph reads."""
        for group in self.optim_actor.param_groups:
            if not torch.is_tensor(group["lr"]):
                group["lr"] = float(lr)
            elif torch.is_tensor(lr):
                group["lr"].copy_(lr)
            else:
                group["lr"].fill_(lr)

    def update_many(self, batches: TensorDict) -> TensorDict:
        """``K = batches.shape[0]`` iterations in one call (the PyTorch analogue of a JAX
        ``scan`` over updates): under ``mode="cudagraphs"`` one CUDA graph replays all ``K``
        critic steps and their ``K / policy_freq`` actor steps, so the host's per-call work
        is paid once per ``K`` updates. The result equals ``K`` calls of :meth:`update` on
        ``batches[0]``, ``batches[1]``, ... (the actor's cosine learning rate included).

        Returns every update's metrics: ``"critic"`` (batch ``[K]``) and ``"actor"``
        (batch ``[K // policy_freq]``). ``K`` and the number of iterations done so far
        must be multiples of ``policy_freq``; keep one ``K`` per updater (a CUDA graph is
        captured for one shape).
        """
        num = batches.shape[0]
        if num < 1 or num % self.policy_freq or self.num_updates % self.policy_freq:
            raise ValueError(
                f"update_many needs a number of iterations ({num}) and a count of iterations "
                f"done ({self.num_updates}) that are multiples of policy_freq "
                f"({self.policy_freq}); use update() for single iterations."
            )
        num_actor = num // self.policy_freq
        inputs = TensorDict({"batches": batches}, batch_size=[])
        if self.scheduler is not None:
            inputs.set("actor_lrs", self._cosine_actor_lrs(num_actor))
        if self._many_step is None:
            graphs = self.mode == "cudagraphs"
            self._many_step = self._captured(self.many_step) if graphs else self.many_step
        with self._dynamo_context(batches, "update_many"):
            metrics = self._many_step(inputs)
        self.num_updates += num
        if self.scheduler is not None:  # its state, as num_actor scheduler.step() leave it
            self.scheduler.last_epoch += num_actor
            self.scheduler._last_lr = [self._cosine_lr(self.scheduler.last_epoch)]
        return metrics

    def _cosine_lr(self, epoch: int) -> float:
        """``CosineAnnealingLR``'s closed form (η_min = 0) at actor update ``epoch``."""
        base, t_max = self.scheduler.base_lrs[0], self.scheduler.T_max
        return base * (1 + math.cos(math.pi * epoch / t_max)) / 2

    def _cosine_actor_lrs(self, num_actor: int) -> torch.Tensor:
        epoch = self.scheduler.last_epoch
        lrs = [self._cosine_lr(epoch + j) for j in range(num_actor + 1)]
        return torch.tensor(lrs, dtype=torch.float32).to(self.device, non_blocking=True)

    def set_coefficients(self, **coefficients: float | torch.Tensor) -> None:
        """λ (``mixture_coef``), ν (``penalty_coef``) or γ, in place (see ``DMGLoss``)."""
        self.loss.set_coefficients(**coefficients)

    def policy(self):
        """The deterministic actor with the trained parameters, for env rollouts."""
        return ParamsPolicy(self.loss.actor_network, self.network_params("actor"))

    @property
    def actor_lr(self) -> float:
        return float(self.optim_actor.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss.state_dict(),
            "optim_value": self.optim_value.state_dict(),
            "optim_qvalue": self.optim_qvalue.state_dict(),
            "optim_actor": self.optim_actor.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optim_value.load_state_dict(state["optim_value"])
        self.optim_qvalue.load_state_dict(state["optim_qvalue"])
        self.optim_actor.load_state_dict(state["optim_actor"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.num_updates = int(state["num_updates"])
        self._restore_lr_kind()

    def _restore_lr_kind(self) -> None:
        """A loaded optimiser state brings the learning rate as it was saved: a float from
        an eager run, a tensor from a compiled one. Compiled steps need a tensor (a float is
        baked into the compiled code, and a CUDA graph would replay it frozen while the
        cosine schedule moves on); eager steps take a float."""
        for optimizer in (self.optim_value, self.optim_qvalue, self.optim_actor):
            for group in optimizer.param_groups:
                lr = float(group["lr"])
                group["lr"] = torch.tensor(lr, device=self.device) if self.mode != "eager" else lr


class SeedStackedDMGUpdater(DMGUpdater):
    """``N`` independent DMG agents trained in one process, one update for all of them.

    The agents' parameters, targets and coefficient buffers are stacked along a leading
    seed dimension (:attr:`stacked`, a TensorDict of batch size ``[N]``) and every loss
    is ``torch.vmap``-ed over that dimension, with ``randomness="different"`` so each
    agent draws its own target-policy noise. Batches have batch size ``[N, B]``: each
    agent trains on its own samples. Adam is element-wise, so one optimiser over the
    stacked tensors is ``N`` independent Adams; the summed loss only couples a seed's
    parameters to its own loss term. Modes, delay and schedules are those of
    :class:`DMGUpdater`.

    Args:
        losses: ``N`` :class:`DMGLoss` of identical architecture, typically built under
            different seeds. Their current parameters become the starting point; the
            first one is then only used as a stateless skeleton (its own parameters are
            not trained: read the agents from :attr:`stacked` or :meth:`agent_state`).
        **kwargs: as for :class:`DMGUpdater`.
    """

    def __init__(self, losses: list[DMGLoss], **kwargs) -> None:
        if kwargs.get("skip_guards"):
            raise ValueError(
                "skip_guards=True is for a single agent (seeds=1): the vmapped loss of stacked "
                "seeds is compiled in frames shared across calls, whose guards must run."
            )
        if len(losses) < 1:
            raise ValueError("SeedStackedDMGUpdater needs at least one loss.")
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
        for name in ("actor", "qvalue", "value"):
            params = stacked.get(f"{name}_network_params")
            for key, value in list(params.items(True, True)):
                source = getattr(losses[0], f"{name}_network_params").get(key)
                if isinstance(source, torch.nn.Parameter) and source.requires_grad:
                    params.set(key, torch.nn.Parameter(value))
        self.stacked = stacked
        self.num_seeds = len(losses)
        super().__init__(losses[0], **kwargs)

    def network_params(self, name: str) -> TensorDictBase:
        return self.stacked.get(f"{name}_network_params")

    def loss_call(self, method: str, batch: TensorDictBase, *args: torch.Tensor):
        if batch.batch_size[:1] != torch.Size([self.num_seeds]):
            raise ValueError(
                f"A seed-stacked batch must have batch size [num_seeds={self.num_seeds}, B], "
                f"got {list(batch.batch_size)}; sample with DeviceSampler(num_seeds=...)."
            )
        skeleton, function = self.loss, getattr(self.loss, method)

        def one_agent(state: TensorDictBase, batch: TensorDictBase, *args: torch.Tensor):
            with state.to_module(skeleton):
                return function(batch, *args)

        in_dims = (0, 0) + (0,) * len(args)
        return torch.vmap(one_agent, in_dims, randomness="different")(self.stacked, batch, *args)

    def _make_target_updater(self):
        return None

    @torch.no_grad()
    def update_targets(self) -> None:
        for name in ("actor", "qvalue"):
            target = self.stacked.get(f"target_{name}_network_params")
            source = self.stacked.get(f"{name}_network_params")
            keys = list(source.keys(True, True))
            torch._foreach_lerp_(
                [target.get(k) for k in keys], [source.get(k).data for k in keys], self.tau
            )

    @torch.no_grad()
    def set_coefficients(self, **coefficients: float | torch.Tensor) -> None:
        """λ (``mixture_coef``), ν (``penalty_coef``) or γ for every agent, in place."""
        for name, value in coefficients.items():
            if value is not None:
                self.stacked.get(name).copy_(torch.as_tensor(value))

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


def unstack_updater_state(state: dict[str, Any], index: int, loss: DMGLoss) -> dict[str, Any]:
    """Agent ``index`` of a :class:`SeedStackedDMGUpdater` state, as a single-agent
    :meth:`DMGUpdater.state_dict` (weights, targets and the agent's slice of every Adam
    moment). ``loss`` (same architecture) receives the agent's weights on the way."""
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
    for name in ("optim_value", "optim_qvalue", "optim_actor"):
        single[name] = agent_optim(state[name])
    single["loss"] = loss.state_dict()
    return single


class ParamsPolicy(TensorDictModuleBase):
    """``actor`` (a functional module, as inside a TorchRL loss) acting with ``params``.

    The parameters are swapped in at every call, so it always acts with the current
    weights (nothing to copy after an update). It runs without gradients: it is for
    collecting data and evaluating, not for learning.
    """

    def __init__(self, actor, params: TensorDictBase) -> None:
        super().__init__()
        self.actor, self.params = actor, params
        self.in_keys = list(actor.in_keys)
        self.out_keys = list(actor.out_keys)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with self.params.to_module(self.actor):
            return self.actor(tensordict)


class SeedStackedPolicy(ParamsPolicy):
    """``N`` stacked actors (``params`` of batch size ``[N]``) acting in one batched env:
    its ``N * E`` copies are split in consecutive blocks of ``E``, one block per agent."""

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.params.batch_size[0]
        if tensordict.batch_dims != 1 or tensordict.shape[0] % n:
            raise ValueError(
                f"{n} stacked agents need a batched env with a multiple of {n} copies, "
                f"got batch size {list(tensordict.batch_size)}."
            )
        inputs = tensordict.select(*self.actor.in_keys).reshape(n, -1)

        def one_agent(params: TensorDictBase, inputs: TensorDictBase) -> TensorDictBase:
            with params.to_module(self.actor):
                return self.actor(inputs)

        outputs = torch.vmap(one_agent, (0, 0))(self.params, inputs)
        return tensordict.update(outputs.reshape(tensordict.shape))


def _private(method):
    """``method`` rebuilt on a copy of its code object: ``torch.compile`` keeps its cache
    per code object, so the copy's compiled graphs belong to this one updater."""
    function = method.__func__
    copy = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    return types.MethodType(copy, method.__self__)


@torch.compiler.disable
def _optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``step`` then ``zero_grad``, kept out of torch.compile: fused Adam is not traceable,
    and a traced call would be guarded on the optimiser object (a recompile per optimiser,
    then an eager fallback once dynamo's recompile limit is hit). Under CUDA graphs the
    capturable fused kernel is still captured, as any eager CUDA work is."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _params(params_td) -> list[torch.Tensor]:
    return list(params_td.values(include_nested=True, leaves_only=True))


# ---------------------------------------------------------------- reproducibility
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` so that a good checkpoint always survives (load-tested, the previous
    one kept, never a non-finite tensor): :func:`~torchrl_dmg.checkpointing.save_checkpoint_safely`."""
    from torchrl_dmg.checkpointing import save_checkpoint_safely

    save_checkpoint_safely(path, state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint, or the previous one when ``path`` is missing or corrupt
    (:func:`~torchrl_dmg.checkpointing.load_checkpoint_safely`); tensors on ``map_location``."""
    from torchrl_dmg.checkpointing import load_checkpoint_safely

    state = load_checkpoint_safely(path)
    return state if str(map_location) == "cpu" else _to_device(state, map_location)


def _to_device(state: Any, device: str | torch.device) -> Any:
    if torch.is_tensor(state) or isinstance(state, TensorDictBase):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    return state


# ---------------------------------------------------------------- builders used by the recipes
def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device} was requested but CUDA is not available; use device=cpu."
        )
    return device


def make_dmg_loss(cfg, dataset, device: torch.device) -> DMGLoss:
    """Networks (paper sizes unless configured) and the :class:`DMGLoss` for ``dataset``."""
    from torchrl_dmg.models import make_dmg_networks

    low, high = dataset.action_bounds
    actor, qvalue, value = make_dmg_networks(
        dataset.obs_dim,
        dataset.action_dim,
        low,
        high,
        num_cells=tuple(cfg.network.num_cells),
        layer_norm=cfg.network.layer_norm,
        dropout=cfg.network.dropout,
        device=device,
    )
    vmap = cfg.network.get("vmap_critics", "auto")
    # On CPU, vmapped critics run as one batched matmul that uses a single core; a plain
    # loop over the two critics lets each matmul use every core (measured ~25% faster).
    deactivate_vmap = (device.type == "cpu") if vmap == "auto" else not vmap
    return DMGLoss(
        actor,
        qvalue,
        value,
        bounds=(low.to(device), high.to(device)),
        deactivate_vmap=deactivate_vmap,
        **dict(cfg.loss),
    ).to(device)


def make_updater(cfg, loss: DMGLoss | list[DMGLoss], *, steps: int | None) -> DMGUpdater:
    """:class:`DMGUpdater` from a recipe config (``optim``, ``compile``); a list of losses
    gives a :class:`SeedStackedDMGUpdater`. ``steps`` gradient steps give the actor's
    cosine schedule (``optim.actor_cosine``); ``None``: constant lr."""
    cosine = steps is not None and cfg.optim.actor_cosine
    cls = SeedStackedDMGUpdater if isinstance(loss, list) else DMGUpdater
    return cls(
        loss,
        lr=cfg.optim.lr,
        tau=cfg.optim.tau,
        policy_freq=cfg.optim.policy_freq,
        actor_cosine_steps=steps // cfg.optim.policy_freq if cosine else None,
        mode=cfg.compile.mode,
        skip_guards=bool(cfg.compile.get("skip_guards", False)),
    )


def offline_checkpoint_state(step: int, updater: DMGUpdater, config: dict, dataset) -> dict:
    """What an offline checkpoint holds: enough to resume training or start fine-tuning."""
    return {
        "step": step,
        "updater": updater.state_dict(),
        "rng": rng_state(),
        "config": config,
        "obs_loc": dataset.obs_loc,
        "obs_scale": dataset.obs_scale,
        "dataset_id": config["dataset"],
    }


def train_offline(
    updater: DMGUpdater,
    buffer,
    *,
    start: int,
    steps: int,
    logger,
    log_interval: int,
    checkpoint: Callable[[int], None],
    checkpoint_interval: int,
    evaluate: Callable[[int], float] | None = None,
    eval_interval: int = 0,
    progress: bool = True,
    desc: str = "dmg",
    updates_per_call: int = 1,
    value_bounds: tuple[float, float] | None = None,
    guard=None,
    stop=None,
    stop_on_q_out_of_bounds: bool = False,
) -> int:
    """The offline loop of both recipes: sample, update, log every ``log_interval`` steps,
    ``evaluate(step) -> score`` every ``eval_interval`` and ``checkpoint(step)`` every
    ``checkpoint_interval`` steps before the last (the caller evaluates and checkpoints the
    end). A tqdm bar shows steps, it/s, ETA and the last score. Returns the final step.

    ``updates_per_call=K > 1`` runs ``K`` iterations per :meth:`DMGUpdater.update_many`
    call on ``buffer.sample(K)`` (one CUDA graph replay per ``K`` under ``"cudagraphs"``);
    the step counts and intervals must then be multiples of ``K``.

    ``value_bounds`` (:func:`value_bounds`): the range any true value lies in. A logged Q
    estimate (any seed's batch mean) beyond it by more than a tenth of its width marks the
    row ``q_out_of_bounds = 1`` and prints a warning (once): the critic is diverging; with
    ``stop_on_q_out_of_bounds`` it stops the run (``guard.out_of_bounds``).

    ``guard(step, metrics)`` (:class:`~torchrl_dmg.guards.FiniteGuard`) runs after every
    update call; ``stop`` (:class:`~torchrl_dmg.guards.StopRequest`) is checked at every
    iteration boundary (SIGTERM / SIGINT: checkpoint, then stop)."""
    from tqdm.auto import tqdm

    per_call = updates_per_call
    if per_call < 1:
        raise ValueError(f"updates_per_call must be >= 1, got {per_call}.")
    if per_call > 1:
        named = {
            "steps": steps,
            "the start step": start,
            "log_interval": log_interval,
            "eval_interval": eval_interval,
            "checkpoint_interval": checkpoint_interval,
        }
        bad = {k: v for k, v in named.items() if v % per_call}
        if per_call % updater.policy_freq or bad:
            raise ValueError(
                f"updates_per_call={per_call} (iterations per call) must be a multiple of "
                f"policy_freq ({updater.policy_freq}) and divide the step counts; not "
                f"multiples of it: {bad}. Choose another updates_per_call, or 1."
            )
    step, train_time, warned = start, 0.0, False
    bar = tqdm(
        total=steps, initial=step, disable=not progress, desc=desc, unit="step", mininterval=1.0
    )
    while step < steps:
        t0 = time.perf_counter()
        if per_call == 1:
            metrics = updater.update(buffer.sample())
        else:  # K iterations, one call (one CUDA graph replay); metrics averaged over them
            many = updater.update_many(buffer.sample(per_call))
            metrics = {**many["critic"].to_dict(), **many["actor"].to_dict()}
        train_time += time.perf_counter() - t0
        step += per_call
        bar.update(per_call)
        if guard is not None:
            guard(step, metrics)
        if step % log_interval == 0:
            # mean over seeds (and over the call's iterations)
            row = {k: v.float().mean().item() for k, v in metrics.items()}
            row["actor_lr"] = updater.actor_lr
            row["updates_per_s"] = log_interval / max(train_time, 1e-9)
            train_time = 0.0
            if value_bounds is not None and "state_action_value" in metrics:
                q = metrics["state_action_value"].float()
                low, high = value_bounds
                margin = 0.1 * (high - low)
                out = bool(q.max() > high + margin or q.min() < low - margin)
                row["q_out_of_bounds"] = float(out)
                if out and stop_on_q_out_of_bounds and guard is not None:
                    guard.out_of_bounds(step, q.min().item(), q.max().item(), value_bounds)
                if out and not warned:
                    warned = True
                    bar.write(
                        f"[dmg] WARNING step {step}: Q estimate {q.min().item():.4g}.."
                        f"{q.max().item():.4g} lies outside [{low:.4g}, {high:.4g}], the range "
                        "of any discounted return of this data: the critic is diverging "
                        "(the scores that follow are not to be trusted; see the spec on λ, ν)."
                    )
            logger.log(step, "train", row)
        if step < steps:
            if evaluate is not None and eval_interval and step % eval_interval == 0:
                bar.set_postfix(score=f"{evaluate(step):.1f}")
            if checkpoint_interval and step % checkpoint_interval == 0:
                checkpoint(step)
            if stop is not None:
                stop.check(step, checkpoint)
    bar.close()
    return step


def value_bounds(rewards: torch.Tensor, gamma: float) -> tuple[float, float]:
    """The range of every discounted return ``sum_t gamma^t r_t`` (any horizon, episodes
    ending anywhere) with per-step rewards in ``[rewards.min(), rewards.max()]``:
    ``[min(r_min, 0), max(r_max, 0)] / (1 - gamma)``."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}.")
    r_min, r_max = float(rewards.min()), float(rewards.max())
    return min(r_min, 0.0) / (1.0 - gamma), max(r_max, 0.0) / (1.0 - gamma)


class DeviceSampler:
    """Uniform batches from a dataset held whole on the training device.

    Batch indices are drawn on that device (``torch.randint`` from the global, seeded
    generator), so sampling never waits on the host and can live inside a compiled
    function or a captured CUDA graph. With ``num_seeds=N`` every draw is ``[N, B]``:
    one independent batch per stacked agent (:class:`SeedStackedDMGUpdater`).
    """

    def __init__(
        self,
        data: TensorDictBase,
        *,
        batch_size: int,
        num_seeds: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if data.batch_dims != 1 or data.shape[0] == 0:
            raise ValueError(
                f"DeviceSampler needs a non-empty flat dataset (batch size [T]), got {data.shape}."
            )
        self.data = data.exclude("episode").to(device) if device is not None else data
        self.device = self.data.device
        self.batch_size = batch_size
        self.num_seeds = num_seeds
        self.shape = (batch_size,) if num_seeds is None else (num_seeds, batch_size)

    def __len__(self) -> int:
        return self.data.shape[0]

    def sample(self, num: int | None = None) -> TensorDictBase:
        """One batch, or with ``num`` that many stacked (``[num, (N,) B]``) for
        :meth:`DMGUpdater.update_many`."""
        shape = self.shape if num is None else (num, *self.shape)
        index = torch.randint(len(self), shape, device=self.device)
        return self.data[index]

"""One update machinery for any actor-critic loss (DMG, IQL, TD3+BC, BC, SAC): a critic
step, a delayed actor step and Polyak targets, eager, compiled or CUDA-graph captured, one or
``K`` iterations per call; shared by the offline and fine-tuning recipes and the SAC
behaviour-policy trainer. What differs between losses is in
:mod:`torchrl_dmg.training.steps`."""

from __future__ import annotations

import contextlib
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule, SoftUpdate

from torchrl_dmg._compat import speed_up_tensordict_module_outputs
from torchrl_dmg.modules import ParamsPolicy
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.training.compile import (
    FunctionalAdam,
    MatmulPrecision,
    UpdateMode,
    adam,
    autocast_dtype,
    captured,
    compile_step,
    default_backend,
    precision_context,
    prepare_compile,
    resolve_mode,
)
from torchrl_dmg.training.steps import (
    CARRY_PREFIX,
    TARGET_Q_KEY,
    LossSteps,
    checked_metrics,
    loss_method,
    steps_for,
)

__all__ = ["FINITE_KEY", "ActorCriticUpdater", "DMGUpdater", "UpdateMode"]

#: an iteration's all-finite flag (a bool tensor), computed inside the compiled step and
#: taken out of the metrics before they are returned (:attr:`ActorCriticUpdater.last_finite`):
#: the NaN guard then reads one flag, not every metric (~2% of a CPU iteration)
FINITE_KEY = "all_finite"


class ActorCriticUpdater:
    """One iteration of an actor-critic loss: its critic step, then every ``policy_freq``
    iterations its actor step followed by a Polyak update of its targets. The steps of
    each loss (:class:`DMGLoss`, TorchRL's ``IQLLoss``, ``TD3BCLoss``, ``BCLoss``,
    ``SACLoss``) are in :mod:`torchrl_dmg.training.steps`; for DMG: value step, critic step,
    then every ``policy_freq`` iterations the actor step and the actor and critic targets.

    An iteration is one function of a batch (a TensorDict in, detached metrics out) that
    does everything: the losses, their gradients (``torch.autograd.grad``), Adam
    (:class:`~torchrl_dmg.training.compile.FunctionalAdam`) and, on actor iterations, the
    actor step and the Polyak update. There are two of them, the critic iteration and the
    critic+actor iteration, so that each compiles (``mode="compile"``) or is captured
    (``mode="cudagraphs"``) as one graph with no Python branch inside; the delay counter
    lives here, in Python, and is therefore never frozen by compilation.

    Args:
        loss: the loss (:class:`DMGLoss`, ``IQLLoss``, ``TD3BCLoss``, ``BCLoss`` or
            ``SACLoss``).
        lr: Adam learning rate for every trained network (spec: 3e-4).
        tau: Polyak rate of the target update (spec: 0.005), as :class:`SoftUpdate` applies it.
        policy_freq: critic steps per actor step (spec: 2).
        actor_cosine_steps: if given, the actor's learning rate follows a cosine
            schedule over this many *actor* updates (spec, offline phase), PyTorch's
            ``CosineAnnealingLR`` (η_min = 0; past its horizon it rises again).
        mode: ``"auto"`` (the fastest mode that gives eager's numbers: ``"cudagraphs"`` on
            CUDA, ``"compile"`` with ``skip_guards`` for one agent on a CPU), ``"eager"``,
            ``"compile"`` (``torch.compile``, inductor) or ``"cudagraphs"``
            (``torch.compile`` + :class:`tensordict.nn.CudaGraphModule`, CUDA only).
        cudagraph_warmup: eager calls before a graph is captured (``"cudagraphs"`` only).
        compile_backend: ``torch.compile`` backend. Default: ``"inductor"``.
        matmul_precision: ``"highest"`` (float32), or ``"high"`` / ``"medium"``: bf16
            matmuls on a CPU that has bf16 units (the losses under ``torch.autocast``; see
            :func:`~torchrl_dmg.training.compile.autocast_dtype`); ~2x faster, and it can
            change scores (docs/recipes.md). On a GPU TF32 is set process-wide by
            ``torch.set_float32_matmul_precision``, not here.
        skip_guards: ``mode="compile"`` only, for a host-bound update (a CPU): after
            ``guard_warmup`` iterations, Dynamo's guards are no longer evaluated
            before each call (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``).
            Not for :class:`SeedStackedDMGUpdater`. The guards check every parameter and
            TensorDict entry, ~0.35 ms per call on one CPU core, ~10% of an iteration, and
            an update's inputs never change: the steps are compiled for this updater alone
            (a cache no other updater shares), and the one thing that could change, the
            batch's keys, shapes, dtypes and devices, is checked here instead (a different
            batch is an error).
        steps: the loss's :class:`~torchrl_dmg.training.steps.LossSteps`; default: those
            of its class (:func:`~torchrl_dmg.training.steps.steps_for`).
    """

    def __init__(
        self,
        loss: LossModule,
        *,
        lr: float = 3e-4,
        tau: float = 0.005,
        policy_freq: int = 2,
        actor_cosine_steps: int | None = None,
        mode: UpdateMode = "eager",
        cudagraph_warmup: int = 3,
        compile_backend: str | None = None,
        matmul_precision: MatmulPrecision = "highest",
        skip_guards: bool | None = None,
        guard_warmup: int = 8,
        steps: LossSteps | None = None,
    ) -> None:
        if policy_freq < 1:
            raise ValueError(f"policy_freq must be >= 1, got {policy_freq}.")
        device = next(iter(loss.parameters())).device
        auto = mode == "auto"
        mode = resolve_mode(mode, device)
        self._auto = auto
        if skip_guards is None:  # auto: skip them where it is safe (one agent, compiled)
            skip_guards = auto and mode == "compile" and self._single_agent
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
        speed_up_tensordict_module_outputs()
        self.steps = steps if steps is not None else steps_for(loss)
        self._cudagraph_warmup = cudagraph_warmup
        self._many_step = None  # built on the first update_many call
        self.loss = loss
        self.device = device
        self.policy_freq = policy_freq
        self.mode = mode
        self.skip_guards = skip_guards
        self.guard_warmup = guard_warmup
        self._batch_signatures: dict[str, list] = {}  # per entry point: update, update_many
        self._calls: dict[str, int] = {}  # per compiled function: calls by this updater
        #: one Adam per trained network, also reachable as ``optim_<network>``
        self.optimizers = {
            name: adam(self.network_params(name), lr, device=device, mode=mode)
            for name in self.steps.networks
        }
        for name, optimizer in self.optimizers.items():
            setattr(self, f"optim_{name}", optimizer)
        self._adam = {name: FunctionalAdam(opt) for name, opt in self.optimizers.items()}
        self.autocast_dtype = autocast_dtype(matmul_precision, device)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizers["actor"], T_max=actor_cosine_steps
            )
            if actor_cosine_steps
            else None
        )
        self.tau = tau
        self.target_updater = self._make_target_updater()
        self.num_updates = 0
        #: whether every metric of the last :meth:`update` / :meth:`update_many` call was
        #: finite (a bool tensor, one per stacked seed), for the NaN guard; ``None`` when
        #: the steps reported none (a loss with no metrics)
        self.last_finite: torch.Tensor | None = None
        self._build_steps(compile_backend)

    def _build_steps(self, compile_backend: str | None) -> None:
        """What gets compiled (``"compile"``, ``"cudagraphs"``): the critic iteration
        (:meth:`critic_step`) and the critic+actor iteration (:meth:`full_step`), each one
        graph with its losses, backward passes, Adam steps and target update;
        ``"cudagraphs"`` then captures each as a CUDA graph. The delay counter stays in
        Python, so no branch lives inside a graph. :meth:`update_many` is built on its first
        call (:meth:`_build_many_step`). A loss with a ``critic_only`` step (SAC) gets it
        compiled and captured the same way."""
        critic_only = self.steps.critic_only
        self._critic_step = self.critic_step
        self._full_step = self.full_step
        self._critic_only_step = (
            None if critic_only is None else types.MethodType(critic_only, self)
        )
        if self.mode != "eager":
            prepare_compile()
            self._backend = compile_backend or default_backend(self.device)
            if self.steps.critic is not None:  # BC, SAC: no critic step to compile
                self._critic_step = self._compiled(self.critic_step)
            self._full_step = self._compiled(self.full_step)
            if critic_only is not None:
                self._critic_only_step = self._compiled(self._critic_only_step)
        #: the steps :meth:`many_step` calls: the plain methods (traced inline where
        #: :meth:`many_step` is compiled whole), or under ``"cudagraphs"`` each step
        #: compiled on its own, the loop then captured as one CUDA graph
        self._many_inner = (self.critic_step, self.actor_step)
        if self.mode == "cudagraphs":
            self._many_inner = (self._critic_step, self._compiled(self.actor_step))
            if self.steps.critic is not None:
                self._critic_step = self._captured(self._critic_step)
            self._full_step = self._captured(self._full_step)
            if critic_only is not None:
                self._critic_only_step = self._captured(self._critic_only_step)

    def _compiled(self, function: Callable) -> Callable:
        """``function`` compiled for this updater (:func:`compile_step`). With
        ``skip_guards``, on a private code object: Dynamo caches per code object, so this
        updater's steps get a cache of their own (no other updater's entries to tell apart
        once guards are skipped); without it, later updaters reuse the traced graphs of
        earlier ones where the guards allow (much faster to build). Stacked seeds: static
        sizes. A step recompiled for another updater's sizes turns dynamic (Dynamo keeps
        that state per function name and line, private copies included), and vmap cannot
        batch tensors of symbolic size (``torch.cat``)."""
        return compile_step(
            function,
            self._backend,
            private=self.skip_guards,
            dynamic=None if self._single_agent else False,
            cpu=self.device.type == "cpu",
        )

    def _captured(self, function: Callable) -> Callable:
        """``function`` (TensorDicts in and out) replayed as a CUDA graph after warm-up."""
        return captured(function, self._cudagraph_warmup)

    # -------------------------------------------------------- hooks (overridden per seed stack)
    def network_params(self, name: str) -> TensorDictBase:
        """Trainable parameters of a network of the loss (``"value"``, ``"qvalue"``,
        ``"actor"``), or a parameter of the loss itself (SAC's ``"log_alpha"``) as a
        one-entry TensorDict."""
        params = getattr(self.loss, f"{name}_network_params", None)
        return TensorDict({name: getattr(self.loss, name)}) if params is None else params

    def loss_call(self, method: str, batch: TensorDictBase, *args: torch.Tensor):
        """``loss.<method>(batch, *args)``, without TorchRL's context-manager wrapper
        (:func:`~torchrl_dmg.training.steps.loss_method`): the steps call the losses'
        bodies (``DMGLoss.value_loss`` ...), compile-safe,, which compile into whole
        graphs. Under ``matmul_precision`` high/medium on a CPU, in bf16 autocast."""
        with precision_context(self.autocast_dtype, self.device):
            return loss_method(self.loss, method)(batch, *args)

    #: one agent per updater (the seed-stacked updater says otherwise)
    _single_agent = True

    def _make_target_updater(self):
        """TorchRL's :class:`SoftUpdate` on the loss: it checks the targets, starts them
        equal to their networks and tells the loss that its targets are kept (a target
        read otherwise warns). The update itself is :meth:`update_targets`."""
        return SoftUpdate(self.loss, tau=self.tau) if self.steps.targets else None

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak update of the targets (none for a loss without targets): ``θ' ← θ' +
        τ (θ − θ')`` for every trained parameter, the ``lerp`` that ``SoftUpdate.step``
        computes, as one ``_foreach_lerp_`` over the leaves. ``SoftUpdate.step`` goes
        through TensorDict's arithmetic, which Dynamo traced for ~17% of a compiled DMG
        update's warm-up."""
        targets, sources = [], []
        for name in self.steps.targets:
            target = self.network_params(f"target_{name}")
            for key, source in self.network_params(name).items(True, True):
                if source.requires_grad:  # SoftUpdate's rule: buffers are not averaged
                    targets.append(target.get(key))
                    sources.append(source)
        if targets:
            torch._foreach_lerp_(targets, sources, self.tau)

    def descend(self, networks: str | tuple[str, ...], loss: torch.Tensor) -> None:
        """One Adam step of ``networks`` (a name or several) down ``loss`` (a scalar, or one
        loss per stacked seed: independent terms, summed). The gradients come from
        ``torch.autograd.grad`` for those networks' parameters alone (no gradient is
        computed for any other network), so the backward pass and the optimiser step
        trace into the caller's graph."""
        names = (networks,) if isinstance(networks, str) else networks
        params = [p for name in names for p in self._adam[name].params]
        grads = torch.autograd.grad(loss.sum(), params, allow_unused=True, materialize_grads=True)
        start = 0
        for name in names:
            count = len(self._adam[name].params)
            self._adam[name].step(grads[start : start + count])
            start += count

    #: DMG's ``min_i Q_θi'(s, a)``, passed from the critic step to the actor step
    TARGET_Q_KEY = TARGET_Q_KEY

    def critic_step(self, batch: TensorDict) -> TensorDict:
        """The loss's critic step (for DMG: value step then critic step, as in the
        reference). Entries whose key starts with ``CARRY_PREFIX`` are handed to the actor
        step of the same iteration (DMG's ``min_i Q_θi'(s, a)``: the target critics do not
        change until the actor step's Polyak update). Inputs and outputs are TensorDicts
        only: that is what a CUDA graph copies in and out at each replay."""
        if self.steps.critic is None:
            return TensorDict()
        return _flag_finite(self.steps.critic(self, batch))

    def actor_step(self, batch: TensorDict) -> TensorDict:
        """The loss's actor step then the Polyak update of the targets; ``batch`` carries
        the critic step's ``CARRY_PREFIX`` entries."""
        return _flag_finite(self.steps.actor(self, batch))

    def full_step(self, batch: TensorDict) -> TensorDict:
        """An iteration with an actor step: the critic step, then the actor step and the
        target update on the same batch (with the critic step's ``CARRY_PREFIX``
        entries); returns every metric of both, and one :data:`FINITE_KEY` flag for both
        (:meth:`critic_step` and :meth:`actor_step` each add theirs)."""
        metrics = self.critic_step(batch)
        carry = _pop_carry(metrics)
        critic_finite = metrics.pop(FINITE_KEY, None)
        metrics.update(self.actor_step(batch.copy().update(carry)))
        if critic_finite is not None:
            actor_finite = metrics.get(FINITE_KEY, None)
            both = critic_finite if actor_finite is None else actor_finite & critic_finite
            metrics.set(FINITE_KEY, both)
        return metrics

    def _dynamo_context(
        self, batch: TensorDictBase, entry: str = "update", function: str = "update_many"
    ) -> contextlib.AbstractContextManager:
        """What the compiled steps run under: with ``skip_guards``, no guard evaluation once
        the compiled ``function`` (``critic``, ``full``, ``critic_only``, ``update_many``)
        has been called ``guard_warmup`` times by this updater (a resumed run warms up
        again), and ``batch`` matched the warm-up's batches of its ``entry`` point. (The
        tracing of ``torch.autograd.grad`` is on for the process: :func:`prepare_compile`.)"""
        if self.mode == "eager" or not self.skip_guards:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
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
        calls = self._calls.get(function, 0)
        self._calls[function] = calls + 1
        if calls >= self.guard_warmup:
            stack.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
        return stack

    def update(self, batch: TensorDict, train_actor: bool = True) -> TensorDict:
        """One iteration on ``batch``; returns detached metrics (actor ones on actor steps).
        ``train_actor=False``: the critics alone (the loss's ``critic_only`` step, or its
        critic step), the actor held; it counts as an iteration."""
        if not train_actor:
            function = "critic_only"
        else:
            function = "critic" if (self.num_updates + 1) % self.policy_freq else "full"
        num_updates = self.num_updates
        try:
            with self._dynamo_context(batch, "update", function):
                if not train_actor:
                    return self._update_critics(batch)
                return self._update(batch)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            self._fall_back_to_eager(err)
            self.num_updates = num_updates  # the failed compile ran nothing
            return self.update(batch, train_actor)

    def _fall_back_to_eager(self, err: Exception) -> None:
        """``mode="auto"`` when inductor cannot build the compiled steps (no C++ compiler,
        a full disk): the eager steps, which give the same numbers, slower; one warning.
        Any other mode re-raises ``err``."""
        if not self._auto or self.mode != "compile":
            raise err
        cause = str(getattr(err, "inner_exception", err)).strip().splitlines()
        print(
            "[dmg] WARNING: compile.mode=auto could not compile the update with inductor "
            f"({cause[-1][:160] if cause else type(err).__name__}); training goes on in eager "
            "mode (the same numbers, slower). Fix the cause (is g++ installed? is the disk "
            "full?), or set compile.mode=eager to skip the attempt.",
            file=sys.stderr,
        )
        self.mode = "eager"
        self.skip_guards = False
        self._many_step = None
        self._build_steps(None)
        self._restore_lr_kind()

    def _update_critics(self, batch: TensorDict) -> TensorDict:
        if self.steps.critic_only is None and self.steps.critic is None:
            raise ValueError(f"{self.steps.name} has no critic to train without its actor.")
        step = self._critic_step if self._critic_only_step is None else self._critic_only_step
        metrics = step(batch)
        _pop_carry(metrics)
        self.last_finite = metrics.pop(FINITE_KEY, None)
        self.num_updates += 1
        return metrics

    def _update(self, batch: TensorDict) -> TensorDict:
        self.num_updates += 1
        if self.num_updates % self.policy_freq:
            metrics = self._critic_step(batch)
            _pop_carry(metrics)
        else:
            metrics = self._full_step(batch)
            if self.scheduler is not None:
                self._advance_cosine(1)
        self.last_finite = metrics.pop(FINITE_KEY, None)
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
        critic_step, actor_step = self._many_inner
        batches, lrs = inputs.get("batches"), inputs.get("actor_lrs", None)
        critic, actor = [], []
        for k in range(batches.shape[0]):
            batch = batches[k]
            metrics = critic_step(batch)
            carry = _pop_carry(metrics)
            critic.append(metrics)
            if (k + 1) % self.policy_freq == 0:
                if lrs is not None:
                    self.set_actor_lr(lrs[len(actor)])
                actor.append(actor_step(batch.update(carry)))
        if lrs is not None:
            self.set_actor_lr(lrs[len(actor)])
        critic = torch.stack(critic) if critic[0].keys() else TensorDict(batch_size=[len(critic)])
        return TensorDict({"critic": critic, "actor": torch.stack(actor)})

    def set_actor_lr(self, lr: float | torch.Tensor) -> None:
        """Set the actor's learning rate. A tensor lr (compiled modes) is written in place:
        it is what a compiled step or a CUDA graph reads."""
        for group in self.optimizers["actor"].param_groups:
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
            self._many_step = self._build_many_step()
        try:
            with self._dynamo_context(batches, "update_many"):
                metrics = self._many_step(inputs)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            self._fall_back_to_eager(err)
            return self.update_many(batches)
        flags = [metrics[part].pop(FINITE_KEY, None) for part in ("critic", "actor")]
        flags = [f.flatten() for f in flags if f is not None]
        self.last_finite = torch.cat(flags).all() if flags else None
        self.num_updates += num
        if self.scheduler is not None:
            self._advance_cosine(num_actor)
        return metrics

    def _build_many_step(self) -> Callable:
        """:meth:`many_step` as this mode runs it: under ``"cudagraphs"`` one CUDA graph
        of the compiled steps; under ``"compile"`` one inductor graph of all ``K``
        iterations (the plain steps traced inline), so the per-call cost outside the graph
        (Dynamo's lookup, the inputs' handling, ~0.3 ms on a CPU thread) is paid once per
        ``K`` iterations; eager, the loop as written."""
        if self.mode == "cudagraphs":
            return self._captured(self.many_step)
        if self.mode == "compile":
            return self._compiled(self.many_step)
        return self.many_step

    def _advance_cosine(self, num_actor: int) -> None:
        """The actor's cosine schedule after ``num_actor`` more actor updates: the scheduler's
        state as that many ``scheduler.step()`` calls leave it, and the learning rate set
        from the closed form. ``CosineAnnealingLR.step`` itself uses a recursive formula
        that, on a tensor learning rate (compiled modes), runs as a dozen ATen ops on a 0-d
        tensor: ~0.6% of a compiled DMG iteration on one CPU thread."""
        self.scheduler.last_epoch += num_actor
        self.scheduler._step_count += num_actor
        lr = self._cosine_lr(self.scheduler.last_epoch)
        self.scheduler._last_lr = [lr]
        self.set_actor_lr(lr)

    def _cosine_lr(self, epoch: int) -> float:
        """``CosineAnnealingLR``'s closed form (η_min = 0) at actor update ``epoch``."""
        base, t_max = self.scheduler.base_lrs[0], self.scheduler.T_max
        return base * (1 + math.cos(math.pi * epoch / t_max)) / 2

    def _cosine_actor_lrs(self, num_actor: int) -> torch.Tensor:
        epoch = self.scheduler.last_epoch
        lrs = [self._cosine_lr(epoch + j) for j in range(num_actor + 1)]
        return torch.tensor(lrs, dtype=torch.float32).to(self.device, non_blocking=True)

    def agents_in_loss(self) -> contextlib.AbstractContextManager:
        """A context in which ``self.loss`` holds the trained agent(s)' tensors: the loss
        itself here, every stacked agent at once in :class:`SeedStackedUpdater`."""
        return contextlib.nullcontext()

    def set_coefficients(self, **coefficients: float | torch.Tensor) -> None:
        """λ (``mixture_coef``), ν (``penalty_coef``) or γ of every agent, in place
        (:meth:`DMGLoss.set_coefficients`)."""
        with self.agents_in_loss():
            self.loss.set_coefficients(**coefficients)

    def policy(self):
        """The actor with the trained parameters, for env rollouts (a stochastic actor
        acts deterministically under ``ExplorationType.DETERMINISTIC``, as evaluation
        runs)."""
        return ParamsPolicy(self.loss.actor_network, self.network_params("actor"))

    @property
    def actor_lr(self) -> float:
        return float(self.optimizers["actor"].param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss.state_dict(),
            **{f"optim_{name}": opt.state_dict() for name, opt in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        for name, functional in self._adam.items():
            functional.load_state_dict(state[f"optim_{name}"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.num_updates = int(state["num_updates"])
        self._restore_lr_kind()

    def _restore_lr_kind(self) -> None:
        """A loaded optimiser state brings the learning rate as it was saved: a float from
        an eager run, a tensor from a compiled one. Compiled steps need a tensor (a float is
        baked into the compiled code, and a CUDA graph would replay it frozen while the
        cosine schedule moves on); eager steps take a float."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                lr = float(group["lr"])
                group["lr"] = torch.tensor(lr, device=self.device) if self.mode != "eager" else lr


def _flag_finite(metrics: TensorDict) -> TensorDict:
    """``metrics`` with :data:`FINITE_KEY`: whether every checked metric
    (:func:`~torchrl_dmg.training.steps.checked_metrics`) is finite, per stacked seed
    where the metrics have a seed dimension. Inside a compiled step this is a few fused
    reductions."""
    values = list(checked_metrics(metrics).values())
    if values:
        dims = metrics.batch_dims
        finite = [torch.isfinite(v).flatten(dims).all(-1) for v in values]
        metrics.set(FINITE_KEY, torch.stack(finite).all(0))
    return metrics


def _pop_carry(metrics: TensorDict) -> dict[str, torch.Tensor]:
    """The critic step's entries for the actor step (``CARRY_PREFIX``), out of ``metrics``."""
    keys = [k for k in metrics.keys() if k.startswith(CARRY_PREFIX)]
    return {k: metrics.pop(k) for k in keys}


class DMGUpdater(ActorCriticUpdater):
    """The :class:`ActorCriticUpdater` of a :class:`DMGLoss`: value step, critic step,
    then every ``policy_freq`` iterations the actor step and the actor and critic targets
    (arguments as for :class:`ActorCriticUpdater`)."""

    def __init__(self, loss: DMGLoss, **kwargs) -> None:
        if not isinstance(loss, DMGLoss):
            raise TypeError(
                f"DMGUpdater trains a DMGLoss, got {type(loss).__name__}; use "
                "ActorCriticUpdater for other losses."
            )
        super().__init__(loss, **kwargs)

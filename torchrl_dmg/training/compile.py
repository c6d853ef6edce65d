"""How an update is compiled and how it steps its optimisers: the update modes, the
``torch.compile`` backend, CUDA-graph capture, private code objects for guard-free steps,
matmul precision, and Adam written as a function of the gradients so that the backward pass
and the optimiser step sit in the same compiled graph as the losses.

Used by :mod:`torchrl_dmg.training.updater`, the one update machinery of every loss.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import CudaGraphModule
from tensordict.nn.functional_modules import _exclude_td_from_pytree

UpdateMode = Literal["auto", "eager", "compile", "cudagraphs"]
MatmulPrecision = Literal["highest", "high", "medium"]
UPDATE_MODES = ("auto", "eager", "compile", "cudagraphs")


def resolve_mode(mode: str, device: torch.device) -> str:
    """``"auto"``: the fastest mode that gives eager's numbers on ``device``: CUDA graphs of
    the compiled steps on a GPU, the compiled steps (inductor) on a CPU."""
    if mode not in UPDATE_MODES:
        raise ValueError(f"mode must be one of {UPDATE_MODES}, got {mode!r}.")
    if mode == "auto":
        return "cudagraphs" if device.type == "cuda" else "compile"
    return mode


def default_backend(device: torch.device) -> str:
    """Inductor on every device: on a CPU it fuses the element-wise work of the losses,
    their backward and Adam into C++ loops around the matmuls (g++ must be installed)."""
    return "inductor"


def prepare_compile() -> None:
    """Before compiling a step: TensorDicts as pytree nodes make tensordict's vmap swap
    pytree registrations on every call, which torch.compile guards on (a recompile per
    call). Compiled code (and CudaGraphModule, which does the same) wants them excluded.
    Tensordict's note that ``lock_()`` skips a check under ``torch.compile`` concerns code
    that unlocks a child of a locked parent, which the steps never do: it is silenced.

    Dynamo's ``trace_autograd_ops`` is switched on for the process (``torch.autograd.grad``
    traced into the step's graph, not a graph break; it is read only while Dynamo traces).
    Entering ``torch._dynamo.config.patch`` around every call instead cost ~80 µs a call
    on one CPU thread (a config write invalidates Dynamo's config caches), ~1.6% of a DMG
    iteration at batch 256."""
    if not torch._dynamo.config.trace_autograd_ops:
        torch._dynamo.config.trace_autograd_ops = True
    _exclude_td_from_pytree().set()
    warnings.filterwarnings("ignore", message=r"Using lock_\(\) inside a compiled graph")


def compile_step(
    function: Callable,
    backend: str,
    *,
    private: bool = False,
    dynamic: bool | None = None,
    cpu: bool = False,
) -> Callable:
    """``torch.compile(function)``; ``private``: on a copy of its code (:func:`private_code`).
    Inductor draws random numbers with ATen's generator (``fallback_random``), so a compiled
    step draws the target-policy noise an eager one draws from the same seed. ``dynamic``:
    as for ``torch.compile`` (``False``: static sizes, even after a recompile for others).
    ``cpu``: the step runs on a CPU (inductor then writes its launcher in C++ too, and
    runs :func:`unfused_bias_add_pass`)."""
    options = {"fallback_random": True} if backend == "inductor" else None
    if options is not None and cpu:
        # the graph's launcher in C++: on a CPU its Python (~100 allocations and kernel
        # calls per iteration) is ~3% of a DMG iteration at batch 256
        options["cpp_wrapper"] = True
        unfuse = unfused_bias_add_pass()
        if unfuse is not None:
            options["post_grad_custom_post_pass"] = unfuse
    function = private_code(function) if private else function
    return torch.compile(function, backend=backend, options=options, dynamic=dynamic)


def unfused_bias_add_pass():
    """An inductor post-grad pass for CPU graphs, or ``None`` where this torch lacks the
    hooks it needs: each unscaled ``addmm(bias, x, w)`` becomes ``mm(x, w) + bias``; where
    the users are element-wise (the activation) the add joins their loop, elsewhere it is a
    loop of its own.

    On a CPU, ATen's ``addmm`` first copies the broadcast bias into every row of its output
    and then accumulates the product onto it: a separate pass over the output, and for the
    1-wide outputs of the critics' and the value network's last layers an ``expand``, a
    ``copy_`` and a ``clone`` through the dispatcher, each a few microseconds. Inductor
    folds ``mm + bias`` back into ``addmm`` on every device and undoes it only on GPUs
    (``unfuse_bias_add_to_pointwise``); this pass does on a CPU what that one does on a
    GPU, and more. In a float32 DMG iteration at batch 256 on one thread, splitting the
    ``addmm``s with element-wise users removed 22 copies of a 256x256 output (~2.4% of an
    iteration); splitting the rest too (the last layers, whose outputs feed a ``min`` or a
    ``stack``) gained another ~1.5-2% (docs/benchmarks.md). Numbers: the product and the
    bias are added in another order (float rounding)."""
    try:
        from torch._inductor.custom_graph_pass import CustomGraphPass
    except ImportError:  # another torch: inductor's own choice stands
        return None

    class UnfusedBiasAdd(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            addmm = torch.ops.aten.addmm.default
            for node in list(graph.find_nodes(op="call_function", target=addmm)):
                bias, mat1, mat2 = node.args[:3]
                scaled = node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1
                if scaled or not node.users:
                    continue
                with graph.inserting_before(node):
                    product = graph.call_function(torch.ops.aten.mm.default, (mat1, mat2))
                    total = graph.call_function(torch.ops.aten.add.Tensor, (product, bias))
                product.meta.update(node.meta)  # the same shape, dtype and strides
                total.meta.update(node.meta)
                node.replace_all_uses_with(total)
                graph.erase_node(node)

        def uuid(self) -> str:  # part of inductor's cache key
            return "torchrl_dmg.unfused_bias_add.v2"

    return UnfusedBiasAdd()


def captured(function: Callable, warmup: int) -> Callable:
    """``function`` (TensorDicts in and out) replayed as a CUDA graph after ``warmup`` calls."""
    return CudaGraphModule(function, in_keys=[], out_keys=[], warmup=warmup)


def private_code(method):
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


# ------------------------------------------------------------------ matmul precision
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX), as
    oneDNN reports it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def vmap_critics_by_default(device: torch.device, precision: str) -> bool:
    """The critics' layout that ``network.vmap_critics=auto`` picks: vmapped (one batched
    matmul for both) on a GPU, and under bf16 matmuls on a CPU with bf16 units (one bf16
    batched matmul is faster there, and stacked seeds compiled with looped critics in bf16
    hit an inductor bug, see ``SeedStackedUpdater``); a Python loop on a CPU in float32
    (each critic's matmuls run at the full float32 rate, ~15% above a batched matmul of two
    at batch 256 on one thread; for a whole iteration on an AMX Xeon the two layouts are
    level at one thread and the vmapped one 4% faster at two, docs/benchmarks.md)."""
    bf16 = precision != "highest" and cpu_has_bf16()
    return device.type != "cpu" or bf16


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The reduced precision the update's matmuls run in, or ``None`` (float32).

    ``"highest"``: float32 everywhere. ``"high"`` / ``"medium"``: on a GPU, TF32 matmuls
    (``torch.set_float32_matmul_precision``, set by the caller, no autocast); on a CPU with
    bf16 units, the losses run under ``torch.autocast("cpu", bfloat16)``: matmuls take bf16
    inputs and accumulate in float32, parameters, gradients and Adam stay float32 (the CPU
    analogue of TF32, ~2x the matmul rate). On a CPU without bf16 units it stays float32
    and says so in one line.
    """
    if precision not in ("highest", "high", "medium"):
        raise ValueError(
            f"matmul_precision must be 'highest', 'high' or 'medium', got {precision!r}."
        )
    if precision == "highest" or device.type != "cpu":
        return None
    if not cpu_has_bf16():
        print(
            f"[dmg] matmul_precision={precision}: this CPU has no bf16 matmul units "
            "(AVX-512 BF16 or AMX); the update stays in float32."
        )
        return None
    return torch.bfloat16


def precision_context(dtype: torch.dtype | None, device: torch.device):
    """The autocast region the losses run in (``dtype=None``: none)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------ Adam
def leaves(params: TensorDictBase) -> list[torch.Tensor]:
    """The leaf tensors of a parameter TensorDict (what an optimiser takes)."""
    return list(params.values(include_nested=True, leaves_only=True))


def adam(
    params: TensorDictBase, lr: float, *, device: torch.device, mode: UpdateMode
) -> torch.optim.Adam:
    """The ``torch.optim.Adam`` that holds a network's Adam state (its moments and step
    count, in its ``state_dict``, as checkpoints keep them). Compiled steps read the learning
    rate from a tensor, which schedules update in place (``fill_``): a float lr would be a
    constant baked into the compiled code (a recompile at every change). The step itself is
    :class:`FunctionalAdam`'s."""
    kwargs = {"capturable": True} if device.type == "cuda" else {"foreach": False}
    if mode != "eager":
        lr = torch.tensor(lr, device=device)
    return torch.optim.Adam(leaves(params), lr=lr, **kwargs)


class FunctionalAdam:
    """``torch.optim.Adam``'s update (no weight decay, no AMSGrad) applied to given
    gradients, in foreach ops on the optimiser's own state, so that it can be traced into
    the same graph as the loss and its backward pass (``torch.optim.Adam.step`` reads
    ``.grad``; its foreach form refuses a tensor lr on a CPU, its fused kernel does not trace).
    Eager calls run PyTorch's fused Adam kernel; compiled ones the same formula in foreach
    ops (equal within float rounding).

    The state is created at construction (step 0, zero moments) and never replaced:
    :meth:`load_state_dict` copies a saved state into it, so compiled code and captured
    CUDA graphs keep reading the same tensors.
    """

    def __init__(self, optimizer: torch.optim.Adam) -> None:
        if len(optimizer.param_groups) != 1:
            raise ValueError("FunctionalAdam steps an Adam with one parameter group.")
        group = optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("FunctionalAdam is plain Adam: no weight decay, AMSGrad or maximize.")
        self.optimizer = optimizer
        # an lr scheduler warns when its optimizer's own step() was never called: this is it
        optimizer._opt_called = True
        # the trained tensors (a network's buffers sit in its Adam too, never stepped)
        self.params: list[torch.Tensor] = [p for p in group["params"] if p.requires_grad]
        for p in self.params:
            optimizer.state[p] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        # the coming step's bias corrections, [1 / (1 - beta1^t), sqrt(1 - beta2^t)], kept
        # beside the step count: computed inside the compiled step from the step count,
        # inductor would recompute both powers in every vector of every parameter's loop
        # (Adam ~1.5x slower on a CPU); read from a tensor, they cost one load
        device = self.params[0].device if self.params else torch.device("cpu")
        self.coefficients = torch.zeros(2, dtype=torch.float32, device=device)
        self._bind()

    def _bind(self) -> None:
        states = [self.optimizer.state[p] for p in self.params]
        self.steps = [s["step"] for s in states]
        self.exp_avgs = [s["exp_avg"] for s in states]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        self._refresh_coefficients()

    @torch.no_grad()
    def _refresh_coefficients(self) -> None:
        """:attr:`coefficients` for the step after the current step count (every parameter
        of one optimiser steps together)."""
        if not self.steps:
            return
        beta1, beta2 = self.optimizer.param_groups[0]["betas"]
        step = self.steps[0] + 1
        coefficients = torch.stack([1 / (1 - beta1**step), (1 - beta2**step).sqrt()])
        self.coefficients.copy_(coefficients)

    def _hyper(self) -> tuple:
        group = self.optimizer.param_groups[0]
        return group["lr"], group["betas"], group["eps"]

    def load_state_dict(self, state: dict) -> None:
        """``optimizer.load_state_dict(state)``, its tensors copied into the existing ones."""
        mine = [dict(self.optimizer.state[p]) for p in self.params]
        self.optimizer.load_state_dict(state)
        with torch.no_grad():
            for p, own in zip(self.params, mine, strict=True):
                loaded = self.optimizer.state.get(p, {})
                for key, tensor in own.items():
                    if key in loaded:
                        tensor.copy_(torch.as_tensor(loaded[key]).reshape(tensor.shape))
                self.optimizer.state[p] = own
        self._bind()

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        lr, (beta1, beta2), eps = self._hyper()
        grads = list(grads)
        if not torch.compiler.is_compiling():
            torch._foreach_add_(self.steps, 1)
            # eager: PyTorch's fused Adam kernel, what torch.optim.Adam(fused=True) runs; it
            # reads gradients laid out as their parameters (autograd.grad may return a
            # transposed one, where .grad would have been made contiguous)
            torch._fused_adam_(
                self.params,
                [g.contiguous() for g in grads],
                self.exp_avgs,
                self.exp_avg_sqs,
                [],
                self.steps,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=eps,
                amsgrad=False,
                maximize=False,
            )
            self._refresh_coefficients()
            return
        # compiled: the same update in foreach ops, which inductor fuses into one loop per
        # parameter; the bias corrections are this step's coefficients, computed last step
        inv_bias_correction1, bias_correction2_sqrt = self.coefficients.unbind()
        torch._foreach_lerp_(self.exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sqs, beta2)
        torch._foreach_addcmul_(self.exp_avg_sqs, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(self.exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        updates = torch._foreach_div(self.exp_avgs, denom)
        torch._foreach_mul_(updates, -lr * inv_bias_correction1)
        torch._foreach_add_(self.params, updates)
        torch._foreach_add_(self.steps, 1)
        self._refresh_coefficients()

"""How an update step is compiled: ``torch.compile`` backends, CUDA-graph capture, the
optimiser step kept out of graphs, and private code objects for guard-free steps.

Used by :mod:`torchrl_dmg.training.updater`, the one update machinery of every loss.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import CudaGraphModule
from tensordict.nn.functional_modules import _exclude_td_from_pytree

UpdateMode = Literal["eager", "compile", "cudagraphs"]


def default_backend(device: torch.device) -> str:
    """``"inductor"`` on CUDA, ``"aot_eager"`` on CPU: it removes TensorDict's per-op Python
    work and runs the ATen kernels as they are (inductor's CPU kernels were slower there)."""
    return "inductor" if device.type == "cuda" else "aot_eager"


def prepare_compile() -> None:
    """Before compiling a step: TensorDicts as pytree nodes make tensordict's vmap swap
    pytree registrations on every call, which torch.compile guards on (a recompile per
    call). Compiled code (and CudaGraphModule, which does the same) wants them excluded."""
    _exclude_td_from_pytree().set()


def compile_step(function: Callable, backend: str, *, private: bool = False) -> Callable:
    """``torch.compile(function)``; ``private``: on a copy of its code (:func:`private_code`)."""
    return torch.compile(private_code(function) if private else function, backend=backend)


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


@torch.compiler.disable
def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``step`` then ``zero_grad``, kept out of torch.compile: fused Adam is not traceable,
    and a traced call would be guarded on the optimiser object (a recompile per optimiser,
    then an eager fallback once dynamo's recompile limit is hit). Under CUDA graphs the
    capturable fused kernel is still captured, as any eager CUDA work is."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def leaves(params: TensorDictBase) -> list[torch.Tensor]:
    """The leaf tensors of a parameter TensorDict (what an optimiser takes)."""
    return list(params.values(include_nested=True, leaves_only=True))


def adam(
    params: TensorDictBase, lr: float, *, device: torch.device, mode: UpdateMode
) -> torch.optim.Adam:
    """Fused Adam (one kernel per step). Compiled steps read the learning rate from a
    tensor, which schedules update in place (``fill_``): a float lr would be a constant
    baked into the compiled code (a recompile at every change). Under CUDA graphs the
    optimiser must also be capturable."""
    kwargs = {"fused": device.type in ("cpu", "cuda")}
    if mode == "cudagraphs":
        kwargs["capturable"] = True
    if mode != "eager":
        lr = torch.tensor(lr, device=device)
    return torch.optim.Adam(leaves(params), lr=lr, **kwargs)

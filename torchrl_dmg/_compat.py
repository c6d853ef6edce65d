"""Version-gated workarounds for issues in pinned dependencies (each removes itself once
the dependency is new enough)."""

from __future__ import annotations

import tensordict
import torch
from packaging.version import Version
from tensordict import TensorDict


def speed_up_tensordict_module_outputs() -> None:
    """tensordict < 0.15: ``TensorDictModule`` passes every output through
    ``TensorDict.from_any``, which for a plain tensor falls through to
    ``importlib.util.find_spec("pandas")``, a walk of ``sys.path`` on every module call
    when pandas is not imported (~0.3 ms each; a third of a DMG update's Python
    overhead on CPU). A plain tensor comes back unchanged from ``from_any`` anyway, so
    returning it first changes no result. tensordict 0.15 skips the call for tensors
    itself; this does nothing there. Idempotent; the updaters apply it (nothing is patched
    at import)."""
    if Version(tensordict.__version__).release >= (0, 15):
        return
    original = TensorDict.from_any.__func__
    if getattr(original, "_dmg_fast_tensor_path", False):
        return

    def from_any(cls, obj, **kwargs):
        if type(obj) is torch.Tensor and not kwargs:
            return obj
        return original(cls, obj, **kwargs)

    from_any.__doc__ = original.__doc__
    from_any._dmg_fast_tensor_path = True
    TensorDict.from_any = classmethod(from_any)

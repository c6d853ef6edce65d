"""Version-gated workarounds for issues in pinned dependencies (each removes itself once
the dependency is new enough), and the dependency notices that are not this project's
concern."""

from __future__ import annotations

import re

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


#: farama-notifications' text that gymnasium-robotics prints at its import (1.2.1 onwards)
ADROIT_REWARD_NOTICE = re.compile(r"AdroitHand\w*-v1.*reward functions were updated", re.S)


def drop_adroit_reward_notice() -> None:
    """gymnasium-robotics prints a notice to stderr when it is first imported (a ``print``
    of ``farama_notifications.notifications``, not a warning that ``warnings`` could
    filter): its Adroit hand v1 rewards changed in 1.2.1. No env here is an Adroit hand,
    so this removes that one notice from the table gymnasium-robotics prints from; any
    other notice still prints. Call it before the first import of gymnasium-robotics,
    direct or through ``gym.make`` of one of its ids; idempotent, and a no-op once the
    notice is gone from the package."""
    try:
        from farama_notifications import notifications
    except ImportError:
        return
    by_version = notifications.get("gymnasium_robotics", {})
    for version, text in list(by_version.items()):
        if ADROIT_REWARD_NOTICE.search(str(text)):
            del by_version[version]

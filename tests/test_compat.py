"""The version-gated dependency workarounds change no results."""

from __future__ import annotations

import importlib.util

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from torchrl_dmg._compat import speed_up_tensordict_module_outputs

speed_up_tensordict_module_outputs()  # what the updaters do (nothing is patched at import)


def test_from_any_returns_plain_tensors_without_searching_for_pandas(monkeypatch):
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    x = torch.randn(3)
    assert TensorDict.from_any(x) is x
    module = TensorDictModule(torch.nn.Linear(3, 2), in_keys=["x"], out_keys=["y"])
    out = module(TensorDict(x=torch.randn(4, 3), batch_size=[4]))
    assert out["y"].shape == (4, 2)
    assert calls == []


def test_from_any_still_converts_everything_else():
    td = TensorDict.from_any({"a": torch.zeros(2), "b": {"c": torch.ones(2)}})
    assert isinstance(td, TensorDict) and td["b", "c"].tolist() == [1.0, 1.0]
    nested = TensorDict.from_any({"a": torch.zeros(4, 2)}, auto_batch_size=True)
    assert nested.batch_size == (4, 2)

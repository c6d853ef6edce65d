"""The examples in the public API's docstrings run as written (``doctest``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import torchrl_dmg


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(torchrl_dmg.__path__, "torchrl_dmg."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as source:
                if ">>> " in source.read():
                    names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_loss_module_has_examples():
    assert "torchrl_dmg.objectives.dmg" in MODULES


@pytest.mark.filterwarnings("ignore:No target network updater has been associated")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

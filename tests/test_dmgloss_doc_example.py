"""docs/dmgloss.md's DMGLoss example must run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "dmgloss.md"


def test_the_dmgloss_doc_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(b for b in blocks if "DMGLoss(" in b)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    loss = namespace["loss"]
    # the example's last line changed the schedules in place
    assert float(loss.mixture_coef) == 0.5
    assert float(loss.penalty_coef) == pytest.approx(0.005)
    # and its training loop moved the targets away from their initial copies
    params = loss.actor_network_params.flatten_keys()
    targets = loss.target_actor_network_params.flatten_keys()
    assert any(not (params[k] == targets[k]).all() for k in params.keys())

"""Shared fixtures: a tiny locally generated PointMaze dataset in a private Minari root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the recipes' config-reading builders (recipes/utils.py), as the recipes import them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
os.environ.setdefault("WANDB_MODE", "offline")
# pytest-xdist runs the suite in two workers (pyproject's addopts): one OpenMP thread each,
# set before torch is imported, so that the two do not oversubscribe the cores (the recipes
# the tests start as subprocesses inherit it). 7.5 min instead of 12.3 on a 2-core machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RL_WARNINGS", "False")

TINY_DATASET = "local/pointmaze/umaze-v0"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "inductor: compile with inductor, the CPU default; other in-process tests compile "
        "with aot_eager (the same Dynamo and AOTAutograd graphs, without C++ code generation)",
    )


@pytest.fixture(autouse=True)
def _compile_backend(request, monkeypatch):
    """Tests of what compilation preserves (delay, fresh noise, stacking, resume) trace the
    same graphs with aot_eager; the tests that compare inductor's numbers with eager's are
    marked ``inductor``."""
    if request.node.get_closest_marker("inductor"):
        return
    from torchrl_dmg.training import updater

    default = updater.default_backend
    monkeypatch.setattr(
        updater,
        "default_backend",
        lambda device: "aot_eager" if str(device).startswith("cpu") else default(device),
    )


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory) -> str:
    """A Minari datasets root holding a tiny UMaze dataset (made once per test session)."""
    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.pointmaze import generate_pointmaze_dataset

    root = tmp_path_factory.mktemp("minari")
    with minari_datasets_path(root):
        generate_pointmaze_dataset(
            maze="umaze", num_steps=3_000, seed=0, progress=False, num_ref_episodes=3
        )
    return str(root)


@pytest.fixture
def tiny_dataset_env(minari_root, monkeypatch) -> str:
    """Point MINARI_DATASETS_PATH at the tiny dataset's root for one test."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_root)
    return TINY_DATASET

"""The Hydra launchers that docs/sweeps.md uses are installed and compose with the recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from recipe_runner import TINY, run_recipe

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "recipes" / "config")


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_the_offline_recipe_composes_with_each_documented_launcher(launcher, target):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("offline", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target


def test_a_sweep_writes_its_runs_under_outputs_multirun():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("offline", return_hydra_config=True)
    assert cfg.hydra.sweep.dir.startswith("outputs/multirun/offline/")


def test_a_submitit_local_sweep_runs_every_job_to_its_summary(minari_root, tmp_path):
    # a submitit job unpickles the recipe's task in a fresh interpreter, which must find
    # the recipes' sibling modules (cli, runs, utils ...) by name as the recipe did
    sweep = tmp_path / "sweep"
    proc = run_recipe(
        "offline.py",
        None,
        minari_root,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
        "seed=0,1",
        "steps=20",
        "eval.interval=0",
        "checkpoint.interval=0",
        "logger.log_interval=10",
        base=("-m", *TINY),
    )
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {json.loads(p.read_text())["seed"] for p in summaries} == {0, 1}

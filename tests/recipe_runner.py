"""Run a recipe as a user would (a subprocess) on the tests' tiny local datasets."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Overrides that make a recipe run in seconds on the tiny PointMaze dataset.
TINY = (
    "dataset=local/pointmaze/umaze-v0",
    "family=pointmaze",
    "network.num_cells=[32,32]",
    "batch_size=32",
    "eval.episodes=2",
    "eval.max_steps=30",
    "progress=false",
    # behaviour, not speed: no compile warm-up in every recipe run (the compiled update is
    # checked against eager in test_updater / test_baselines, and a recipe run under the
    # default compile.mode=auto in test_offline_recipe)
    "compile.mode=eager",
)


def run_recipe(
    recipe: str,
    run_dir: Path | None,
    minari_root: str,
    *overrides: str,
    base: Sequence[str] = TINY,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python recipes/<recipe> <base> <overrides> hydra.run.dir=<run_dir>``; must exit 0
    (unless ``check=False``).

    ``overrides`` win over ``base``; ``hydra.run.dir`` is passed on resume too, so that
    Hydra's own log directory never lands in the working tree.
    """
    env = {
        **os.environ,
        "MINARI_DATASETS_PATH": minari_root,
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    overridden = {o.split("=")[0] for o in overrides}
    kept = [o for o in base if o.split("=")[0] not in overridden]
    cmd = [sys.executable, str(ROOT / "recipes" / recipe), *kept, *overrides]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))

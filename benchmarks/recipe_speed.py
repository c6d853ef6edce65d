"""The updates/s a user sees: ``recipes/offline.py``'s own logged rate against a plain PyTorch
DMG loop timed right after it on the same machine.

    python benchmarks/recipe_speed.py                          # default run, 3,000 steps, one thread
    python benchmarks/recipe_speed.py --steps 6000 -- compile.mode=eager

The recipe runs as a subprocess with its default settings (plus ``--`` overrides), one
OpenMP thread, no evaluation until the end; its ``updates_per_s`` (``metrics.csv``, every
``logger.log_interval`` steps: sampling, the update, the NaN guard, the overestimation
diagnostic and logging all count) is read after the first logged row (compile warm-up
excluded; the whole process's wall time is reported beside it). The reference
(``benchmarks/reference_dmg.py``: one ``nn.Module`` per network, ``copy.deepcopy`` targets,
Python loops) then trains on random data of the run's dimensions and size, a batch drawn by
``torch.randint`` per update, in this process with one thread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from torchrl_dmg.recording import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reference_dmg import ReferenceDMG  # noqa: E402


def run_recipe(steps: int, log_interval: int, overrides: list[str], run_dir: Path) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "offline.py"),
        f"steps={steps}",
        f"logger.log_interval={log_interval}",
        "eval.interval=0",
        f"checkpoint.interval={steps}",
        "progress=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
    head = re.search(r"transitions=(\d+) obs_dim=(\d+) action_dim=(\d+)", proc.stdout)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "train"]
    rates = [float(r["updates_per_s"]) for r in rows[1:]]  # the first row holds the warm-up
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": wall,
        "logged_updates_per_s": rates,
        "median_updates_per_s": statistics.median(rates),
        "transitions": int(head[1]),
        "obs_dim": int(head[2]),
        "action_dim": int(head[3]),
    }


def time_reference(obs_dim: int, act_dim: int, size: int, updates: int) -> float:
    torch.manual_seed(0)
    obs, next_obs = torch.randn(size, obs_dim), torch.randn(size, obs_dim)
    action = torch.rand(size, act_dim) * 2 - 1
    reward, terminated = torch.randn(size, 1), torch.rand(size, 1) < 0.01
    ref = ReferenceDMG(obs_dim, act_dim)

    def step() -> None:
        idx = torch.randint(0, size, (256,))
        ref.update(obs[idx], action[idx], reward[idx], next_obs[idx], terminated[idx])

    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(updates):
        step()
    return updates / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--log-interval", type=int, default=500)
    parser.add_argument("--reference-updates", type=int, default=1000)
    parser.add_argument("--json", default="benchmarks/results/recipe_speed.json")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (after --)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = run_recipe(args.steps, args.log_interval, args.overrides, Path(tmp) / "run")
    reference = time_reference(
        recipe["obs_dim"], recipe["action_dim"], recipe["transitions"], args.reference_updates
    )
    result = {
        "cpu": machine_info()["cpu"],
        "torch": torch.__version__,
        "recipe": recipe,
        "reference_updates_per_s": reference,
        "ratio": recipe["median_updates_per_s"] / reference,
    }
    print(
        f"recipe logged {recipe['median_updates_per_s']:.1f} updates/s "
        f"(rows {', '.join(f'{r:.0f}' for r in recipe['logged_updates_per_s'])}; "
        f"whole process {recipe['wall_s']:.0f} s for {args.steps} steps); "
        f"plain PyTorch loop right after: {reference:.1f} updates/s; "
        f"ratio {result['ratio']:.2f}x"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

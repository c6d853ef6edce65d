"""Memory soak: run ``recipes/offline.py`` for many steps and sample its resident memory.

    python benchmarks/memory_soak.py --steps 300000 --every 10000 --out benchmarks/results/soak.csv

Starts the recipe (CPU, the default dataset unless ``--dataset``), follows the step it has
reached through its ``metrics.csv`` (``logger.log_interval`` = ``--every``) and records the
process's resident set size (``VmRSS`` of ``/proc/<pid>/status``, Linux) at each logged
step. Prints one row per sample and, at the end, the growth from the first sample after
warm-up to the last, so that a leak shows as a number, not a guess.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (``None`` once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def last_step(metrics: Path) -> int:
    """The largest ``step`` logged so far (0 before the first row)."""
    if not metrics.is_file():
        return 0
    with open(metrics, newline="") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")]
    return max(steps, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--run-dir", default="outputs/memory_soak")
    parser.add_argument("--out", default=None, help="CSV of the samples")
    parser.add_argument("overrides", nargs="*", help="more recipe overrides")
    args = parser.parse_args()

    run_dir = Path(args.run_dir).absolute()
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "offline.py"),
        f"steps={args.steps}",
        f"logger.log_interval={args.every}",
        "progress=false",
        f"hydra.run.dir={run_dir}",
        *([f"dataset={args.dataset}"] if args.dataset else []),
        *args.overrides,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ.copy())
    samples: list[tuple[int, float, float]] = []
    seen = 0
    start = time.perf_counter()
    print("step,rss_mib,wall_s", flush=True)
    while proc.poll() is None:
        step = last_step(run_dir / "metrics.csv")
        if step > seen:
            rss = rss_mib(proc.pid)
            if rss is not None:
                seen = step
                samples.append((step, rss, time.perf_counter() - start))
                print(f"{step},{rss:.1f},{samples[-1][2]:.0f}", flush=True)
        time.sleep(2.0)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "rss_mib", "wall_s"])
            writer.writerows(samples)
    if len(samples) >= 3:
        first, last = samples[1], samples[-1]  # after the first (warm-up, compile) sample
        print(
            f"SUMMARY: {len(samples)} samples, steps {first[0]}..{last[0]}: RSS "
            f"{first[1]:.1f} -> {last[1]:.1f} MiB ({last[1] - first[1]:+.1f} MiB, "
            f"max {max(s[1] for s in samples[1:]):.1f}); exit code {proc.returncode}"
        )
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()

"""How long a compiled DMG update takes to trace: the first calls of a fresh updater, which
Dynamo traces (and, with ``--backend aot_eager`` or ``inductor``, AOTAutograd and inductor
compile) before any iteration runs. Warm-up that every run and every compiled test pays.

    OMP_NUM_THREADS=1 python benchmarks/trace_time.py                  # Dynamo alone
    OMP_NUM_THREADS=1 python benchmarks/trace_time.py --backend aot_eager --seeds 2

Each case is timed ``--rounds`` times in this process, ``torch._dynamo.reset()`` before
each; the median is printed, and all rounds go to ``--json``. A case is the critics'
layout (``loop``: the recipes' choice on a CPU in float32; ``vmap``: under bf16 and on
GPUs), ``K`` (iterations per compiled call: ``K = 1`` compiles the critic iteration and
the critic+actor iteration, ``K = 2`` the one graph of both) and the number of stacked
seeds. Network sizes are the antmaze family's (29 observations, 8 actions, 256-256).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_speed import PROBLEMS, random_dataset  # noqa: E402

from torchrl_dmg.data.samplers import DeviceSampler  # noqa: E402
from torchrl_dmg.modules import make_dmg_networks  # noqa: E402
from torchrl_dmg.objectives import DMGLoss  # noqa: E402
from torchrl_dmg.recording import machine_info  # noqa: E402
from torchrl_dmg.training import DMGUpdater, SeedStackedDMGUpdater  # noqa: E402

OBS, ACT, BATCH = *PROBLEMS["antmaze"], 256


def trace_once(layout: str, k: int, seeds: int, backend: str) -> float:
    """Seconds for a fresh updater's first calls, which compile every graph it uses."""
    torch._dynamo.reset()
    losses = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        networks = make_dmg_networks(OBS, ACT, -1.0, 1.0)
        losses.append(DMGLoss(*networks, bounds=(-1.0, 1.0), deactivate_vmap=layout == "loop"))
    sampler = DeviceSampler(
        random_dataset(OBS, ACT, 10_000, torch.device("cpu")),
        batch_size=BATCH,
        num_seeds=seeds if seeds > 1 else None,
    )
    kwargs = {"mode": "compile", "compile_backend": backend, "actor_cosine_steps": 1000}
    if seeds == 1:
        updater = DMGUpdater(losses[0], **kwargs)
    else:
        updater = SeedStackedDMGUpdater(losses, **kwargs)
    start = time.perf_counter()
    if k == 1:  # the critic iteration, then the critic+actor iteration (policy_freq 2)
        updater.update(sampler.sample())
        updater.update(sampler.sample())
    else:
        updater.update_many(torch.stack([sampler.sample() for _ in range(k)]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="eager", help="eager: Dynamo's tracing alone")
    parser.add_argument("--layouts", nargs="+", default=["loop", "vmap"])
    parser.add_argument("--k", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every round here")
    args = parser.parse_args()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{machine_info()['cpu']}, backend {args.backend}, code {commit}"
    )
    rows = []
    for seeds in args.seeds:
        for layout in args.layouts:
            for k in args.k:
                times = [trace_once(layout, k, seeds, args.backend) for _ in range(args.rounds)]
                rows.append({"layout": layout, "k": k, "seeds": seeds, "seconds": times})
                print(
                    f"critics {layout:4s}  K={k}  seeds={seeds}: median "
                    f"{statistics.median(times):6.1f} s  (rounds: "
                    + ", ".join(f"{t:.1f}" for t in times)
                    + ")",
                    flush=True,
                )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"backend": args.backend, "commit": commit, **machine_info(), "rows": rows},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

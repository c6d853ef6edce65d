"""Updates per second of DMG implementations, measured side by side in one process.

    python benchmarks/update_speed.py                       # CPU: reference, eager, compile, stacked seeds
    python benchmarks/update_speed.py --device cuda         # + compile with CUDA graphs
    python benchmarks/update_speed.py --seeds 2 4 8 16      # which stacked-seed counts to time

Modes (each a full DMG iteration: value step, critic step, actor step every 2nd iteration,
Polyak target update; batch 256, 256-256 networks):

* ``reference``      plain eager PyTorch written straight from the spec (benchmarks/reference_dmg.py)
* ``eager``          ``DMGUpdater`` + ``DMGLoss`` run eagerly, critics vmapped
* ``compile``        the whole iteration (losses, ``autograd.grad``, Adam, targets) compiled by
                     inductor as one graph (two: with and without the delayed actor step)
* ``auto``           the recipes' default: ``compile`` with Dynamo's guards skipped after
                     warm-up on a CPU, ``cudagraphs`` on a GPU; the critics laid out as
                     ``network.vmap_critics=auto`` lays them out (a loop on a CPU in
                     float32, vmapped on a GPU and under bf16)
* ``cudagraphs``     the compiled iteration captured as a CUDA graph
* ``<mode>-loop``    any of the above with a Python loop over the critics
* ``<mode>-vmap``    any of the above with the critics vmapped (the default but for ``auto``)
* ``<mode>-skipguards``  ``compile`` with ``skip_guards=True`` (what ``auto`` picks on a CPU)
* ``<mode>-bf16``    ``matmul_precision="medium"``: on a CPU with bf16 units the losses run
                     under bf16 autocast (weights, gradients and Adam stay float32)
* ``x<N>-<mode>``    ``SeedStackedDMGUpdater``: N agents (seeds) in one vmapped update, each on
                     its own batch; its updates/s count agent-updates (N per iteration), so
                     it compares with a single-seed mode as N sequential runs would
* ``<mode>-k<K>``    K iterations per ``update_many`` call (under ``cudagraphs``: one CUDA graph
                     replay for K iterations), batches for all K drawn in one go

``--matmul-precision high`` lets float32 matmuls use TF32 on GPUs that have it (every mode
alike, the reference included).

Every mode samples its batches the same way (``DeviceSampler``: indices drawn on the device
from a dataset held on the device). After a warm-up (compilation and graph capture are reported separately), the
modes are timed in interleaved rounds and the median round is reported, with the ratio to
``reference``. Results are printed as a table and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_dmg import ReferenceDMG  # noqa: E402

from torchrl_dmg.data.samplers import DeviceSampler  # noqa: E402
from torchrl_dmg.modules import make_dmg_networks  # noqa: E402
from torchrl_dmg.objectives import DMGLoss  # noqa: E402
from torchrl_dmg.recording import machine_info  # noqa: E402
from torchrl_dmg.training import DMGUpdater, SeedStackedDMGUpdater  # noqa: E402
from torchrl_dmg.training.compile import vmap_critics_by_default  # noqa: E402

PROBLEMS = {"locomotion": (17, 6), "antmaze": (29, 8)}


def random_dataset(obs_dim: int, act_dim: int, size: int, device: torch.device) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(size, obs_dim, generator=g),
            "action": torch.rand(size, act_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(size, obs_dim, generator=g),
                "reward": torch.randn(size, 1, generator=g),
                "terminated": torch.rand(size, 1, generator=g) < 0.01,
                "done": torch.zeros(size, 1, dtype=torch.bool),
            },
        },
        batch_size=[size],
    ).to(device)


class Runner:
    """One mode: ``step()`` runs one DMG iteration on a freshly sampled batch."""

    def __init__(self, mode: str, data: TensorDict, batch_size: int, device: torch.device):
        self.mode, self.device = mode, device
        obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]
        self.seeds = int(mode[1:].split("-")[0]) if mode.startswith("x") else 1
        self.per_call = 1  # iterations per step() call
        head, _, tail = mode.rpartition("-k")
        if head and tail.isdigit():
            mode, self.per_call = head, int(tail)
        torch.manual_seed(0)
        self.sampler = DeviceSampler(
            data, batch_size=batch_size, num_seeds=self.seeds if self.seeds > 1 else None
        )
        if mode == "reference":
            self.ref = ReferenceDMG(obs_dim, act_dim, device=device)
            return
        update_mode = mode.split("-", 1)[1] if self.seeds > 1 else mode
        bf16 = update_mode.endswith("-bf16")
        update_mode = update_mode.removesuffix("-bf16")
        skip_guards = update_mode.endswith("-skipguards")
        update_mode = update_mode.removesuffix("-skipguards")
        loop = update_mode.endswith("-loop")
        vmap = update_mode.endswith("-vmap")
        update_mode = update_mode.removesuffix("-loop").removesuffix("-vmap")
        if update_mode == "auto" and not (loop or vmap):  # the recipes' layout
            loop = not vmap_critics_by_default(device, "medium" if bf16 else "highest")
        losses = []
        for seed in range(self.seeds):
            torch.manual_seed(seed)
            actor, qvalue, value = make_dmg_networks(obs_dim, act_dim, -1.0, 1.0, device=device)
            losses.append(DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0), deactivate_vmap=loop))
        kwargs = {
            "mode": update_mode,
            "actor_cosine_steps": 10**6,
            "skip_guards": skip_guards or None,  # None: the mode's own choice (auto)
            "matmul_precision": "medium" if bf16 else "highest",
        }
        if self.seeds > 1:
            self.updater = SeedStackedDMGUpdater(losses, **kwargs)
        else:
            self.updater = DMGUpdater(losses[0], **kwargs)

    def step(self) -> None:
        if self.per_call > 1:
            self.updater.update_many(self.sampler.sample(self.per_call))
            return
        batch = self.sampler.sample()
        if self.mode == "reference":
            self.ref.update(
                batch["observation"],
                batch["action"],
                batch["next", "reward"],
                batch["next", "observation"],
                batch["next", "terminated"],
            )
        else:
            self.updater.update(batch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=None)
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[5], help="stacked-seed counts (x<N> modes)"
    )
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=200, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=["highest", "high", "medium"],
        help="torch.set_float32_matmul_precision for every mode (high: TF32)",
    )
    parser.add_argument("--json", default="benchmarks/results/update_speed.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    # One process builds many compiled updaters here (a recipe builds one). Except with
    # skip_guards, they compile the same code objects, one more set of guards each on every
    # shared frame: dynamo's default limit of 8 would be reached and later modes would
    # silently fall back to eager.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    if args.modes:
        modes = args.modes
    elif device.type == "cuda":
        single = ["eager", "compile", "cudagraphs"]
        modes = ["reference", *single] + [f"x{n}-cudagraphs" for n in args.seeds]
    else:
        single = ["eager", "eager-loop", "compile", "auto", "auto-vmap", "auto-bf16"]
        stacked = [f"x{n}-{m}" for n in args.seeds for m in ("eager", "auto", "auto-bf16")]
        modes = ["reference", *single, *stacked]
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": machine_info()["cpu"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "matmul_precision": args.matmul_precision,
        "problems": {},
    }
    for problem in args.problems:
        obs_dim, act_dim = PROBLEMS[problem]
        data = random_dataset(obs_dim, act_dim, 100_000, device)
        runners, warmup_s, peak_mem = {}, {}, {}
        for mode in modes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            runner = Runner(mode, data, args.batch_size, device)
            for _ in range(args.warmup):
                runner.step()
            sync(device)
            warmup_s[mode] = time.perf_counter() - t0
            runners[mode] = runner
            if device.type == "cuda":
                peak_mem[mode] = torch.cuda.max_memory_allocated(device) / 2**20
        rates: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):  # interleaved: drift hits every mode alike
            for mode in modes:
                runner = runners[mode]
                calls = max(1, args.updates // runner.per_call)
                sync(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    runner.step()
                sync(device)
                # agent-updates: a stacked mode updates every one of its seeds per iteration
                updates = runner.seeds * runner.per_call * calls
                rates[mode].append(updates / (time.perf_counter() - t0))
        ref = statistics.median(rates["reference"]) if "reference" in rates else None
        single_modes = [m for m in modes if m != "reference" and runners[m].seeds == 1]
        best_single = max((statistics.median(rates[m]) for m in single_modes), default=None)
        rows = {}
        for mode in modes:
            med = statistics.median(rates[mode])
            stacked = runners[mode].seeds > 1
            rows[mode] = {
                "seeds": runners[mode].seeds,
                "iterations_per_call": runners[mode].per_call,
                "updates_per_s": med,
                "rounds": rates[mode],
                "ratio_to_reference": med / ref if ref else None,
                # N stacked seeds vs the same N seeds run one after another in the best
                # single-seed mode (whose aggregate rate is its own rate)
                "ratio_to_best_single": med / best_single if stacked and best_single else None,
                "warmup_s": warmup_s[mode],
                "peak_memory_mib": peak_mem.get(mode),
            }
        results["problems"][problem] = {"obs_dim": obs_dim, "act_dim": act_dim, "modes": rows}
        print(
            f"\n{problem} (obs {obs_dim}, act {act_dim}, batch {args.batch_size}) on {results['device']}"
        )
        print(
            f"{'mode':<26} {'updates/s':>10} {'x ref':>7} {'x best single':>14} "
            f"{'warm-up s':>10} {'peak MiB':>9}"
        )
        for mode, row in rows.items():
            ratio = f"{row['ratio_to_reference']:.2f}" if row["ratio_to_reference"] else "-"
            vs_single = row["ratio_to_best_single"]
            vs_single = f"{vs_single:.2f}" if vs_single else "-"
            mem = f"{row['peak_memory_mib']:.0f}" if row["peak_memory_mib"] is not None else "-"
            print(
                f"{mode:<26} {row['updates_per_s']:>10.1f} {ratio:>7} {vs_single:>14} "
                f"{row['warmup_s']:>10.1f} {mem:>9}"
            )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

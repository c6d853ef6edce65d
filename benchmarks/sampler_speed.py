"""Offline batch sampling side by side: ``DeviceSampler`` vs a TorchRL replay buffer.

    python benchmarks/sampler_speed.py --out benchmarks/results/sampler_speed_cpu_<date>.json

The layout issue asked whether the offline ``DeviceSampler`` (indices drawn with
``torch.randint`` on the training device, one fancy index of the dataset TensorDict) can
become TorchRL's own ``TensorDictReplayBuffer`` with a ``LazyTensorStorage`` on the same
device and a ``RandomSampler``, "if that is as fast". Both draw uniform batches with
replacement from the same data; this times them in one process, alternating, on a dataset
of the default run's size (``local/pointmaze/medium-v0``: 400k transitions, obs 6, action
2; ``update_speed.random_dataset``'s values, as only sizes matter), for the shapes the recipes draw:

- ``one``: one ``[B]`` batch (``offline.py``, one seed, ``updates_per_call=1``);
- ``seeds``: ``[N, B]`` (``seeds=N`` stacking; the buffer draws ``N·B`` and reshapes);
- ``many``: ``[K, B]`` (``updates_per_call=K``);

and one eager DMG update per batch beside them, so the sampling cost reads as a share of
an iteration. Medians of ``--repeats`` rounds of ``--calls`` calls each. A CUDA row set is
added when a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_speed import Runner, random_dataset  # noqa: E402

from torchrl_dmg.data.samplers import DeviceSampler  # noqa: E402


def torchrl_buffer(data: TensorDict, device: str) -> TensorDictReplayBuffer:
    """The data in a TorchRL buffer on ``device`` (the batch size is given per ``sample``)."""
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(data.shape[0], device=device), sampler=RandomSampler()
    )
    buffer.extend(data)
    return buffer


def time_calls(fn, calls: int, repeats: int, device: str) -> float:
    """Median seconds per call over ``repeats`` rounds of ``calls`` calls."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(min(calls, 20)):
        fn()
    sync()
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        rounds.append((time.perf_counter() - t0) / calls)
    return statistics.median(rounds)


def measure(device: str, args: argparse.Namespace) -> list[dict]:
    data = random_dataset(6, 2, args.size, torch.device(device))
    b, n, k = args.batch_size, args.seeds, args.many
    device_one = DeviceSampler(data, batch_size=b)
    device_seeds = DeviceSampler(data, batch_size=b, num_seeds=n)
    buffer = torchrl_buffer(data, device)
    cases = {
        "one": (device_one.sample, lambda: buffer.sample(b)),
        "seeds": (device_seeds.sample, lambda: buffer.sample(n * b).reshape(n, b)),
        "many": (lambda: device_one.sample(k), lambda: buffer.sample(k * b).reshape(k, b)),
    }
    # one eager DMG iteration (the default networks), its batch drawn outside the timing
    runner = Runner("eager", data, b, torch.device(device))
    batch = device_one.sample()
    update_s = time_calls(lambda: runner.updater.update(batch), args.calls, args.repeats, device)
    rows = []
    for name, (ours, theirs) in cases.items():
        # alternate the two, so a drift of the machine hits both alike
        a, t = [], []
        for _ in range(args.repeats):
            a.append(time_calls(ours, args.calls, 1, device))
            t.append(time_calls(theirs, args.calls, 1, device))
        a_s, t_s = statistics.median(a), statistics.median(t)
        rows.append(
            {
                "device": device,
                "shape": name,
                "device_sampler_us": a_s * 1e6,
                "torchrl_buffer_us": t_s * 1e6,
                "buffer_over_device_sampler": t_s / a_s,
                "eager_update_us": update_s * 1e6,
                "device_sampler_share_of_iteration": a_s / (a_s + update_s),
                "torchrl_buffer_share_of_iteration": t_s / (t_s + update_s),
            }
        )
        print(
            f"{device:5s} {name:6s} DeviceSampler {a_s * 1e6:8.1f} us  TorchRL buffer "
            f"{t_s * 1e6:8.1f} us  ratio {t_s / a_s:5.2f}x  (one eager update {update_s * 1e6:.0f} us)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=400_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--many", type=int, default=8)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--devices", nargs="*", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [row for device in devices for row in measure(device, args)]
    if args.out:
        meta = {
            "command": " ".join(["python", *sys.argv]),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Evaluation speed: env steps/s of the batched evaluation env (in-process, and one process
per copy: ``eval.processes=true``), side by side with a TorchRL SerialEnv of single envs
(what ``make_env`` used before).

    python benchmarks/eval_speed.py --env halfcheetah --copies 10 --steps 1000

Both run the same deterministic DMG actor through ``torchrl_dmg.envs.evaluate`` on the
same local dataset's evaluation env (generated on first use, 20k random transitions),
interleaved for ``--rounds`` rounds; prints the median steps/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchrl.envs import GymWrapper, SerialEnv, TransformedEnv

from torchrl_dmg.data.offline import load_offline_dataset
from torchrl_dmg.datagen.locomotion import generate_locomotion_dataset
from torchrl_dmg.envs import evaluate, make_env
from torchrl_dmg.modules import make_dmg_networks


def serial_env(dataset, copies: int) -> TransformedEnv:
    """make_env's transforms over a SerialEnv of one-copy TorchRL envs."""
    batched = make_env(dataset, num_envs=copies)

    def factory():
        return GymWrapper(dataset.minari_dataset.recover_environment(eval_env=True))

    return TransformedEnv(SerialEnv(copies, factory), batched.transform.clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--env", default="halfcheetah", choices=["hopper", "halfcheetah", "walker2d"]
    )
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    dataset_id = generate_locomotion_dataset(args.env, "random", num_steps=20_000, progress=False)
    dataset = load_offline_dataset(dataset_id, normalize_obs=True, progress=False)
    torch.manual_seed(0)
    actor = make_dmg_networks(dataset.obs_dim, dataset.action_dim, -1.0, 1.0)[0]
    envs = {
        "SerialEnv": serial_env(dataset, args.copies),
        "vector (make_env)": make_env(dataset, num_envs=args.copies),
        "vector, processes": make_env(dataset, num_envs=args.copies, processes=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.rounds):
        for name, env in envs.items():
            t0 = time.perf_counter()
            evaluate(env, actor, max_steps=args.steps, seed=0)
            rates[name].append(args.copies * args.steps / (time.perf_counter() - t0))
    base = statistics.median(rates["SerialEnv"])
    print(f"{args.env}, {args.copies} copies x {args.steps} steps, {args.rounds} rounds")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:<20} {med:>9.0f} env steps/s   x{med / base:.2f}")


if __name__ == "__main__":
    main()

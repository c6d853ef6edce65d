"""Evaluation speed: env steps/s of the batched evaluation env (in-process, and one process
per copy: ``eval.processes=true``), side by side with a TorchRL SerialEnv of single envs
(what ``make_env`` used before).

    python benchmarks/eval_speed.py --env halfcheetah --copies 10 --steps 1000

Both run the same deterministic DMG actor through ``torchrl_dmg.envs.evaluate`` on the
same local dataset's evaluation env (generated on first use, 20k random transitions),
interleaved for ``--rounds`` rounds; prints the median steps/s of each and the ratio
(halfcheetah's episodes never end early, so every copy runs ``--steps``).

With ``--run <run dir>``, a trained agent instead: the run's checkpointed policy on its own
dataset's evaluation env, ``--copies`` episodes (the recipes' 100 for AntMaze), evaluated as
the recipes do (a copy whose episode has ended is not stepped, and the rollout stops when
every copy is done) and as before 2026-12-07 (every copy to the time limit, finished ones
reset and stepped on), interleaved; both must give the same scores; prints the wall time of
each and the env steps the first one skipped:

    python benchmarks/eval_speed.py --run results/<study>/runs/<run> --copies 100 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchrl.envs import GymWrapper, SerialEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_dmg.data.offline import load_offline_dataset
from torchrl_dmg.datagen.locomotion import generate_locomotion_dataset
from torchrl_dmg.envs import episode_successes, evaluate, make_env, max_episode_steps
from torchrl_dmg.modules import make_dmg_networks


def serial_env(dataset, copies: int) -> TransformedEnv:
    """make_env's transforms over a SerialEnv of one-copy TorchRL envs."""
    batched = make_env(dataset, num_envs=copies)

    def factory():
        return GymWrapper(dataset.minari_dataset.recover_environment(eval_env=True))

    return TransformedEnv(SerialEnv(copies, factory), batched.transform.clone())


def run_policy(run_dir: Path):
    """The checkpointed policy of an offline run (one seed) and its dataset, built as
    ``recipes/offline.py`` builds them."""
    from omegaconf import OmegaConf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    from algos import make_loss, prepare_rewards
    from utils import load_dataset, make_updater

    cfg = OmegaConf.load(run_dir / "config.yaml")
    dataset = load_dataset(cfg, progress=False)
    prepare_rewards(cfg, dataset)
    loss = make_loss(cfg, dataset, torch.device("cpu"))
    updater = make_updater(cfg, loss, steps=cfg.steps)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    updater.load_state_dict(state["updater"])
    return updater.policy(), dataset, int(state["step"])


def compare_on_run(run_dir: Path, copies: int, rounds: int) -> None:
    """Evaluation as the recipes run it against every copy to the time limit, on a run's
    agent (see the module's docstring)."""
    policy, dataset, step = run_policy(run_dir)
    env = make_env(dataset, num_envs=copies)
    limit = max_episode_steps(dataset)
    walls: dict[str, list[float]] = {"first episodes (evaluate)": [], "to the time limit": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        new = evaluate(env, policy, max_steps=limit, seed=0, success=True)
        walls["first episodes (evaluate)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.set_seed(0)
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(limit, policy, break_when_any_done=False)
        old = episode_successes(rollout).numpy().astype(np.float64)
        walls["to the time limit"].append(time.perf_counter() - t0)
        if not np.array_equal(new, old):
            raise SystemExit(f"the two evaluations disagree: {new.mean()} against {old.mean()}")
        done = rollout["next", "done"].reshape(copies, -1).to(torch.int64)
        stepped = int(((done.cumsum(-1) - done) == 0).sum())  # each copy to its first done
    print(
        f"{run_dir} (step {step}), {copies} copies, time limit {limit}, success "
        f"{100 * new.mean():.0f}%: the first episodes take {stepped} of {copies * limit} env "
        f"steps ({100 * stepped / (copies * limit):.0f}%)"
    )
    for name, w in walls.items():
        print(f"{name:<28} {statistics.median(w):7.1f} s (median of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--env", default="halfcheetah", choices=["hopper", "halfcheetah", "walker2d"]
    )
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", type=Path, default=None, help="a trained run's directory")
    args = parser.parse_args()
    if args.run is not None:
        compare_on_run(args.run, args.copies, args.rounds)
        return

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

"""What D4RL's one-target-per-episode rule would change in the local AntMaze data.

The local navigator datasets send the ant to the next goal cell when it reaches its
commanded goal; D4RL's generator (``scripts/generation/generate_ant_maze_datasets.py``) sets
one target at each reset and keeps it to the episode's end, so its ant stays near the
target once there. This steps the same episodes (same seeds, shipped ant, σ = 0.2) under
both rules and prints, per rule: the share of episodes that reach the *evaluation* goal
(within 0.45, the reward's radius), the steps spent there (reward 1), and the episodes
that end with a flip.

    python benchmarks/navigator_goal_rule.py --variant medium-play --episodes 192
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from torchrl_dmg.datagen.antmaze.datasets import (
    EPISODE_GROUP,
    NAVIGATOR_EPISODE_STEPS,
    navigate_episodes,
)
from torchrl_dmg.datagen.antmaze.mazes import ANTMAZE_VARIANTS, variant_entry
from torchrl_dmg.datagen.antmaze.navigator import ACTION_NOISE, ant_policy_path, load_ant_policy


def rule_stats(variant: str, episodes: int, seed: int, hold_goal: bool, actor) -> dict:
    maze, task = variant_entry(variant)
    t0 = time.perf_counter()
    eps = []
    for first in range(0, episodes, EPISODE_GROUP):  # the generator's groups, stepped side by side
        lengths = [NAVIGATOR_EPISODE_STEPS] * min(EPISODE_GROUP, episodes - first)
        eps += navigate_episodes(
            maze, task, lengths, seed, first, actor, ACTION_NOISE, hold_goal=hold_goal
        )
    success = [np.asarray(e["success"][1:], dtype=bool) for e in eps]
    return {
        "rule": "one goal per episode (D4RL)" if hold_goal else "next goal on arrival (datasets)",
        "episodes": len(eps),
        "steps": int(sum(len(e["actions"]) for e in eps)),
        "reach_evaluation_goal": float(np.mean([s.any() for s in success])),
        "steps_at_goal": int(sum(int(s.sum()) for s in success)),
        "flipped": int(sum(e["flipped"] for e in eps)),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="medium-play", choices=list(ANTMAZE_VARIANTS))
    parser.add_argument("--episodes", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    actor = load_ant_policy(ant_policy_path())[0]
    rows = [
        rule_stats(args.variant, args.episodes, args.seed, hold, actor) for hold in (False, True)
    ]
    print(json.dumps({"variant": args.variant, "seed": args.seed, "rules": rows}, indent=2))


if __name__ == "__main__":
    main()

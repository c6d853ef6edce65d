"""Where an AntMaze dataset makes the critics bootstrap from states it never shows them.

Every local AntMaze episode is truncated, not terminated, so the critics bootstrap V(s')
at each episode's last next-state. This reads stored datasets (any Minari id stored here,
retired ones included: they are opened directly, never made) and prints, per dataset, the
torso's uprightness (``torso_upright``: 1 standing level, -1 on its back) at those last
next-states against every observation, and how many of them no observation resembles
(upright below the least upright observation). The v1 data kept each flip's tumble; v2
cuts it (:func:`torchrl_dmg.datagen.antmaze.datasets.flip_cut`).

    python benchmarks/antmaze_bootstrap_states.py local/antmaze/medium-play-v1 local/antmaze/medium-play-v2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minari
import numpy as np

from torchrl_dmg.datagen.antmaze.goal_task import torso_upright

ROOT = Path(__file__).resolve().parent


def bootstrap_states(dataset_id: str) -> dict:
    dataset = minari.load_dataset(dataset_id)
    inner, last, lengths = [], [], []
    for episode in dataset.iterate_episodes():
        lengths.append(len(episode.actions))
        obs = episode.observations["observation"]
        inner.append(obs[:-1])  # the states the critics are trained on
        last.append(obs[-1])  # the next-state of the truncated last step: bootstrapped only
    inner_up = torso_upright(np.concatenate(inner))
    last_up = torso_upright(np.stack(last))
    floor = float(inner_up.min())
    early = np.asarray(lengths) < max(lengths)  # ended before the time limit: by a flip
    return {
        "dataset": dataset_id,
        "episodes": len(last),
        "transitions": int(dataset.total_steps),
        "observations_upright_min": round(floor, 4),
        "observations_upright_median": round(float(np.median(inner_up)), 4),
        "last_next_states_upright_median": round(float(np.median(last_up)), 4),
        "last_next_states_below_every_observation": int((last_up < floor).sum()),
        "episodes_ended_early": int(early.sum()),
        "ended_early_last_upright_median": round(float(np.median(last_up[early])), 4)
        if early.any()
        else None,
        "last_next_states_flipped": int((last_up < 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="stored Minari ids")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / "antmaze_bootstrap_states.json"
    )
    args = parser.parse_args()
    rows = [bootstrap_states(d) for d in args.datasets]
    for row in rows:
        print(
            f"{row['dataset']}: {row['episodes']} episodes; uprightness at the bootstrapped "
            f"last next-states: median {row['last_next_states_upright_median']} (of the "
            f"{row['episodes_ended_early']} ended early: "
            f"{row['ended_early_last_upright_median']}), "
            f"{row['last_next_states_flipped']} flipped, "
            f"{row['last_next_states_below_every_observation']} below every observation "
            f"(observations: min {row['observations_upright_min']}, median "
            f"{row['observations_upright_median']})"
        )
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

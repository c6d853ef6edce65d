"""Make a local D4RL-style dataset (Minari format): Gym-MuJoCo locomotion from the shipped
SAC behaviour policies, or AntMaze from the shipped goal-reaching ant and a maze navigator.

    python recipes/make_dataset.py env=hopper quality=medium
    python recipes/make_dataset.py env=walker2d quality=medium-expert steps=200000
    python recipes/make_dataset.py env=antmaze-umaze
    python recipes/make_dataset.py env=antmaze-medium-play steps=200000

An existing complete dataset is reused (``force=true`` rebuilds it); an interrupted or
crashed collection leaves nothing behind that loads as a dataset. Prints the id, its size
and the mean return and normalised score of its episodes (AntMaze: how many episodes
reached the evaluation goal).
"""

from __future__ import annotations

import hydra
import minari
import numpy as np
from cli import guarded, preflight
from omegaconf import DictConfig

from torchrl_dmg.data.local import InvalidDatasetIdError, validate_dataset_id
from torchrl_dmg.datagen.antmaze.datasets import generate_antmaze_navigator_dataset
from torchrl_dmg.datagen.antmaze.mazes import ANTMAZE_VARIANTS
from torchrl_dmg.datagen.locomotion import LOCOMOTION_ENVS, generate_locomotion_dataset
from torchrl_dmg.errors import RunRefused


def _antmaze(cfg: DictConfig, variant: str) -> str:
    if cfg.quality is not None:
        raise RunRefused(
            f"quality={cfg.quality} does not apply to AntMaze: the variant is part of env "
            f"(e.g. env=antmaze-medium-play); choose one of "
            f"{['antmaze-' + v for v in ANTMAZE_VARIANTS]}."
        )
    if cfg.behaviour_run is not None:
        raise RunRefused("behaviour_run is for locomotion medium-replay only.")
    return generate_antmaze_navigator_dataset(
        variant,
        num_steps=cfg.steps,
        seed=cfg.seed,
        dataset_id=cfg.dataset_id,
        force=cfg.force,
        progress=cfg.progress,
        policy_dir=cfg.policy_dir,
        workers=int(cfg.workers),
        goal_rule=cfg.goal_rule,
    )


@hydra.main(version_base=None, config_path="config", config_name="make_dataset")
@guarded("make_dataset")  # the schema check first; one-line failures
def main(cfg: DictConfig) -> str:

    if cfg.dataset_id is not None:
        try:  # before any file is touched: the id names the one directory that is replaced
            validate_dataset_id(cfg.dataset_id)
        except InvalidDatasetIdError as err:
            raise SystemExit(f"[make_dataset] error: dataset_id: {err}") from None
    env = str(cfg.env)
    if env.startswith("antmaze-"):
        dataset_id = _antmaze(cfg, env.removeprefix("antmaze-"))
        dataset = minari.load_dataset(dataset_id)
        episodes = list(dataset.iterate_episodes())
        reached = np.array([ep.rewards.max() > 0 for ep in episodes])
        params = dataset.storage.metadata.get("generator_params", {})
        flips = params.get("episodes_ended_flipped")
        flipped = "" if flips is None else f", {flips} ended by a flip"
        print(
            f"[make_dataset] {dataset_id}: {dataset.total_episodes} episodes, "
            f"{dataset.total_steps} steps; {reached.mean() * 100:.0f}% of the episodes reach "
            f"the evaluation goal, {sum(ep.rewards.sum() for ep in episodes):.0f} steps "
            f"there{flipped}, at {dataset.storage.data_path}"
        )
        return dataset_id
    if env not in LOCOMOTION_ENVS:
        raise RunRefused(
            f"Unknown env {env!r}; choose one of {sorted(LOCOMOTION_ENVS)} or "
            f"{['antmaze-' + v for v in ANTMAZE_VARIANTS]}."
        )
    dataset_id = generate_locomotion_dataset(
        env=env,
        quality=cfg.quality if cfg.quality is not None else "medium",
        num_steps=cfg.steps,
        seed=cfg.seed,
        dataset_id=cfg.dataset_id,
        force=cfg.force,
        progress=cfg.progress,
        policy_dir=cfg.policy_dir,
        behaviour_run=cfg.behaviour_run,
    )
    dataset = minari.load_dataset(dataset_id)
    # finished episodes (a fall or the 1000-step limit): the ones the collection budget cut
    # short would drag the mean down
    episodes = list(dataset.iterate_episodes())
    finished = [ep for ep in episodes if ep.terminations[-1] or len(ep.rewards) >= 1000]
    returns = np.array([ep.rewards.sum() for ep in (finished or episodes)])
    score = 100 * np.asarray(minari.get_normalized_score(dataset, returns))
    print(
        f"[make_dataset] {dataset_id}: {dataset.total_episodes} episodes, "
        f"{dataset.total_steps} steps, episode return {returns.mean():.1f} ± {returns.std():.1f} "
        f"(normalised {score.mean():.1f}) at {dataset.storage.data_path}"
    )
    return dataset_id


if __name__ == "__main__":
    preflight()  # an unwritable run directory: one line, before Hydra makes it
    main()

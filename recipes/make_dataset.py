"""Make a local D4RL-style dataset (Minari format) of any local family: Gym-MuJoCo
locomotion from the shipped SAC behaviour policies, PointMaze from a noisy waypoint
controller, or AntMaze from the shipped goal-reaching ant and a maze navigator.

    python recipes/make_dataset.py env=hopper quality=medium
    python recipes/make_dataset.py env=walker2d quality=medium-expert steps=200000
    python recipes/make_dataset.py env=pointmaze-medium
    python recipes/make_dataset.py env=antmaze-umaze
    python recipes/make_dataset.py env=antmaze-medium-play steps=200000

An existing complete dataset is reused (``force=true`` rebuilds it); an interrupted or
crashed collection leaves nothing behind that loads as a dataset. Prints the id, its size
and the mean return and normalised score of its episodes (the mazes: how much of the data
is spent at the goal).
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
from torchrl_dmg.datagen.pointmaze import POINTMAZE_MAZES, generate_pointmaze_dataset
from torchrl_dmg.errors import RunRefused

#: every env this recipe makes data for: the locomotion tasks, then the mazes
ENVS = (
    *sorted(LOCOMOTION_ENVS),
    *(f"pointmaze-{maze}" for maze in POINTMAZE_MAZES),
    *(f"antmaze-{variant}" for variant in ANTMAZE_VARIANTS),
)


def _refuse_locomotion_keys(cfg: DictConfig, family: str, prefix: str, example: str) -> None:
    """The keys that only the locomotion generator reads: an error, never ignored."""
    if cfg.quality is not None:
        choices = [e for e in ENVS if e.startswith(prefix)]
        raise RunRefused(
            f"quality={cfg.quality} does not apply to {family}: the variant is part of env "
            f"(e.g. env={example}); choose one of: {', '.join(choices)}."
        )
    if cfg.behaviour_run is not None:
        raise RunRefused("behaviour_run is for locomotion medium-replay only.")


def _locomotion(cfg: DictConfig, env: str) -> str:
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


def _pointmaze(cfg: DictConfig, maze: str) -> str:
    _refuse_locomotion_keys(cfg, "PointMaze", "pointmaze-", "pointmaze-medium")
    if cfg.policy_dir is not None:
        raise RunRefused(
            "policy_dir does not apply to PointMaze: its data come from a scripted waypoint "
            "controller, not a shipped policy; drop it."
        )
    dataset_id = generate_pointmaze_dataset(
        maze,
        num_steps=cfg.steps,
        seed=cfg.seed,
        dataset_id=cfg.dataset_id,
        force=cfg.force,
        progress=cfg.progress,
    )
    dataset = minari.load_dataset(dataset_id)
    at_goal = sum(ep.rewards.sum() for ep in dataset.iterate_episodes())
    print(
        f"[make_dataset] {dataset_id}: {dataset.total_episodes} episodes, "
        f"{dataset.total_steps} steps; {at_goal:.0f} steps at the goal, at "
        f"{dataset.storage.data_path}"
    )
    return dataset_id


def _antmaze(cfg: DictConfig, variant: str) -> str:
    _refuse_locomotion_keys(cfg, "AntMaze", "antmaze-", "antmaze-medium-play")
    dataset_id = generate_antmaze_navigator_dataset(
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
    dataset = minari.load_dataset(dataset_id)
    episodes = list(dataset.iterate_episodes())
    reached = np.array([ep.rewards.max() > 0 for ep in episodes])
    params = dataset.storage.metadata.get("generator_params", {})
    flips = params.get("episodes_ended_flipped")
    flipped = "" if flips is None else f", {flips} ended by a flip"
    if params.get("flip_steps_cut") is not None:
        flipped += f" ({params['flip_steps_cut']} tumbling steps cut)"
    print(
        f"[make_dataset] {dataset_id}: {dataset.total_episodes} episodes, "
        f"{dataset.total_steps} steps; {reached.mean() * 100:.0f}% of the episodes reach "
        f"the evaluation goal, {sum(ep.rewards.sum() for ep in episodes):.0f} steps "
        f"there{flipped}, at {dataset.storage.data_path}"
    )
    return dataset_id


@hydra.main(version_base=None, config_path="config", config_name="make_dataset")
@guarded("make_dataset")  # the schema check first; one-line failures
def main(cfg: DictConfig) -> str:
    if cfg.dataset_id is not None:
        try:  # before any file is touched: the id names the one directory that is replaced
            validate_dataset_id(cfg.dataset_id)
        except InvalidDatasetIdError as err:
            raise SystemExit(f"[make_dataset] error: dataset_id: {err}") from None
    env = str(cfg.env)
    if env not in ENVS:
        raise RunRefused(f"Unknown env {env!r}; choose one of: {', '.join(ENVS)}.")
    if env.startswith("pointmaze-"):
        return _pointmaze(cfg, env.removeprefix("pointmaze-"))
    if env.startswith("antmaze-"):
        return _antmaze(cfg, env.removeprefix("antmaze-"))
    return _locomotion(cfg, env)


if __name__ == "__main__":
    preflight()  # an unwritable run directory: one line, before Hydra makes it
    main()

"""Make a local D4RL-style locomotion dataset (Minari format) from the shipped behaviour policies.

    python recipes/make_dataset.py env=hopper quality=medium
    python recipes/make_dataset.py env=walker2d quality=medium-expert steps=200000

An existing complete dataset is reused (``force=true`` rebuilds it); an interrupted or
crashed collection leaves nothing behind that loads as a dataset. Prints the id, its size
and the mean return and normalised score of its episodes.
"""

from __future__ import annotations

import hydra
import numpy as np
from omegaconf import DictConfig

from torchrl_dmg.data.locomotion import generate_locomotion_dataset


@hydra.main(version_base=None, config_path="config", config_name="make_dataset")
def main(cfg: DictConfig) -> str:
    import minari

    dataset_id = generate_locomotion_dataset(
        env=cfg.env,
        quality=cfg.quality,
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
    main()

"""Placeholder AntMaze datasets (``local/antmaze/<maze>-random-v1``): uniform random actions
in the evaluation maze. They exercise the AntMaze data path (29-dim observations, reward
``r - 1``, success-rate scores) but are not meant to be learned from.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from tqdm.auto import tqdm

from torchrl_dmg.data.local import is_complete, stored_generator_version
from torchrl_dmg.datagen.antmaze.mazes import (
    DATASET_VERSION,
    antmaze_entry,
    make_antmaze_env,
    publish_antmaze,
)

#: Default size of the placeholder datasets (D4RL used 1M steps); about a minute on one core.
DEFAULT_NUM_STEPS = 100_000


#: Bumped whenever the data a given set of arguments produces changes; older datasets are rebuilt.
_GENERATOR_VERSION = 2  # 2: D4RL's ant


_POLICIES = ("random",)


def default_antmaze_dataset_id(maze: str, policy: str = "random") -> str:
    """Default local Minari id, e.g. ``local/antmaze/umaze-random-v1``."""
    antmaze_entry(maze)
    return f"local/antmaze/{maze.lower()}-{policy}-v{DATASET_VERSION}"


def _collect_episode(
    base: gym.Env, rng: np.random.Generator, length: int, seed: int
) -> dict[str, Any]:
    """One episode of uniform random actions, stepping the unwrapped env (no time limit)."""
    keys = ("observation", "achieved_goal", "desired_goal")
    obs, info = base.reset(seed=seed)
    low = base.action_space.low.astype(np.float32)
    high = base.action_space.high.astype(np.float32)
    observations = {k: [np.asarray(obs[k], dtype=np.float64)] for k in keys}
    actions = rng.uniform(low, high, size=(length, low.shape[0])).astype(np.float32)
    rewards = np.empty(length, dtype=np.float64)
    success = [bool(info["success"])]
    for t in range(length):
        obs, reward, _terminated, _truncated, info = base.step(actions[t])
        for k in keys:
            observations[k].append(np.asarray(obs[k], dtype=np.float64))
        rewards[t] = reward
        success.append(bool(info["success"]))
    return {
        "observations": {k: np.stack(v) for k, v in observations.items()},
        "actions": actions,
        "rewards": rewards,
        "success": np.asarray(success),
    }


def _collect_random(
    env, num_steps: int, episode_steps: int, seed: int, progress: bool
) -> tuple[list, int]:
    """Episodes of uniform random actions (buffers) and the steps they spent at the goal;
    ``env`` is closed on an error."""
    rng = np.random.default_rng(seed)
    buffers = []
    steps_at_goal = 0
    try:
        with tqdm(
            total=num_steps, disable=not progress, desc="antmaze collect", unit="step"
        ) as bar:
            done_steps = 0
            while done_steps < num_steps:
                i = len(buffers)
                length = min(episode_steps, num_steps - done_steps)
                ep = _collect_episode(env.unwrapped, rng, length, seed + i)
                truncations = np.zeros(length, dtype=bool)
                truncations[-1] = True
                steps_at_goal += int(ep["success"][1:].sum())
                buffers.append(
                    EpisodeBuffer(
                        id=i,
                        seed=seed + i,
                        observations=ep["observations"],
                        actions=ep["actions"],
                        rewards=ep["rewards"],
                        terminations=np.zeros(length, dtype=bool),
                        truncations=truncations,
                        infos={"success": ep["success"]},
                    )
                )
                done_steps += length
                bar.update(length)
    except BaseException:
        env.close()
        raise

    return buffers, steps_at_goal


def _publish_random(dataset_id: str, maze: str, env, buffers: list, params: dict) -> None:
    """Write the placeholder dataset with its description (closes ``env``)."""
    env_id, start, goal = params["env_id"], tuple(params["reset_cell"]), tuple(params["goal_cell"])
    num_steps, episode_steps, policy = (
        params["num_steps"],
        params["episode_steps"],
        params["policy"],
    )
    description = (
        f"PLACEHOLDER AntMaze data on {env_id} (sparse reward, continuing task, fixed reset cell "
        f"{start} and goal cell {goal}) from a uniform random policy: it exercises the AntMaze "
        f"pipeline but does not reach the goal. {num_steps} steps in episodes of {episode_steps} "
        "steps (truncated, never terminated). Evaluation env: the same cells with "
        "continuing_task=False (terminated with reward 1 at the goal); ref_min_score 0 and "
        f"ref_max_score 1, so the normalised score is the success rate. Parameters: {params}."
    )
    publish_antmaze(
        dataset_id, buffers, env, maze, f"{policy} policy (placeholder)", description, params
    )


def generate_antmaze_dataset(
    maze: str = "umaze",
    num_steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    policy: str = "random",
    force: bool = False,
    progress: bool = True,
    *,
    episode_steps: int | None = None,
) -> str:
    """Generate (or reuse) a local placeholder AntMaze Minari dataset and return its id.

    Args:
        maze: ``"umaze"``, ``"medium"`` or ``"large"``.
        num_steps: transitions to collect (default :data:`DEFAULT_NUM_STEPS`); the last episode
            is shorter when ``episode_steps`` does not divide it.
        seed: episode ``i`` resets with ``seed + i``; the actions come from
            ``np.random.default_rng(seed)``. Same seed and arguments give identical data.
        dataset_id: Minari id (default ``local/antmaze/<maze>-<policy>-v1``).
        policy: behaviour policy; only ``"random"`` (uniform actions, a placeholder: see the
            module docstring).
        force: rebuild even if a complete dataset with this id exists.
        progress: show a tqdm bar while collecting.
        episode_steps: steps per episode (default: the env's limit, 700 / 1000 / 1000); this is
            also the ``max_episode_steps`` of the stored (online) env.

    Existing complete datasets made by this generator version are returned untouched (their
    other parameters are not compared: pass ``force=True`` or another ``dataset_id``). The
    dataset is published atomically with :func:`torchrl_dmg.data.local.building_dataset`.
    """

    env_id, start, goal, horizon = antmaze_entry(maze)
    maze = maze.lower()
    if policy not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {list(_POLICIES)}")
    dataset_id = dataset_id or default_antmaze_dataset_id(maze, policy)
    num_steps = int(num_steps if num_steps is not None else DEFAULT_NUM_STEPS)
    episode_steps = int(episode_steps or horizon)
    if num_steps <= 0 or episode_steps <= 0:
        raise ValueError("num_steps and episode_steps must be positive")
    if not force and is_complete(dataset_id):
        if stored_generator_version(dataset_id) == _GENERATOR_VERSION:
            return dataset_id

    env = make_antmaze_env(maze, max_episode_steps=episode_steps)
    buffers, steps_at_goal = _collect_random(env, num_steps, episode_steps, seed, progress)
    params = {
        "generator": "torchrl_dmg.datagen.antmaze.random_dataset.generate_antmaze_dataset",
        "generator_version": _GENERATOR_VERSION,
        "maze": maze,
        "env_id": env_id,
        "policy": policy,
        "num_steps": num_steps,
        "seed": seed,
        "episode_steps": episode_steps,
        "reset_cell": list(start),
        "goal_cell": list(goal),
        "steps_at_goal": steps_at_goal,
    }
    _publish_random(dataset_id, maze, env, buffers, params)
    return dataset_id

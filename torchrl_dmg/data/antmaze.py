"""Placeholder AntMaze datasets, generated locally as real Minari datasets.

There is no internet on the training machines, so ``D4RL/antmaze/*`` cannot be downloaded.
This module makes a *placeholder* AntMaze dataset whose only purpose is to exercise the AntMaze
code path end to end (29-dim observations, 8-dim actions, sparse reward shifted by -1, the
evaluation env and its success-rate score). Its behaviour policy is **uniform random actions**:
the ant jitters around its start cell and practically never reaches the goal, so the data teach
nothing about the maze. A goal-reaching ant controller (D4RL's, or OGBench's direction-following
ant plus a waypoint planner) is a separate piece of work; datasets made with it should get a new
id (not ``*-random-v0``).

* Environment: gymnasium-robotics ``AntMaze_{UMaze,Medium,Large}-v4`` (27-dim ant state plus
  2-dim ``achieved_goal`` = the ant's xy and 2-dim ``desired_goal``; ``-v5`` adds contact
  forces, and Minari's D4RL AntMaze datasets were made on v4), sparse reward,
  ``continuing_task=True``, ``reset_target=False``, with ONE fixed goal cell (``"g"``) and ONE
  fixed reset cell (``"r"``) in the maze map - the cells of D4RL's evaluation task. The goal
  must be fixed because the AntMaze observation used for training (``achieved_goal`` then
  ``observation``) does not contain the goal; online fine-tuning steps this same env.
* Episodes: the env is reset (seed ``seed + i`` for episode ``i``) every ``episode_steps`` steps
  (default: the env's own limit, 700 for UMaze and 1000 for Medium/Large); every episode ends
  ``truncated``, never ``terminated`` (the task is continuing; gymnasium-robotics also ignores
  the ant's own "unhealthy" termination).
* Rewards: 1 when the ant's xy is within 0.45 of the goal (gymnasium-robotics' radius; D4RL
  used 0.5), else 0. Training shifts them by -1 (family ``antmaze``).
* Evaluation env (``eval_env_spec``): the same maze, start and goal cells with
  ``continuing_task=False``: the episode terminates with reward 1 on the step the ant reaches
  the goal, so a return is 1 for a success and 0 otherwise. With ``ref_min_score = 0`` and
  ``ref_max_score = 1`` the normalised score (x100) is the success rate in percent, as D4RL
  reports AntMaze scores. (With ``continuing_task=True`` the return would count every step
  spent at the goal, which is not a success rate.)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from torchrl_dmg.data.local import building_dataset, is_complete
from torchrl_dmg.data.maze import base_maze_map, maze_map_with_cells, register_maze_envs

__all__ = [
    "ANTMAZE_MAZES",
    "DEFAULT_NUM_STEPS",
    "antmaze_env_id",
    "antmaze_env_kwargs",
    "antmaze_eval_env_kwargs",
    "default_antmaze_dataset_id",
    "generate_antmaze_dataset",
    "make_antmaze_env",
    "make_antmaze_eval_env",
]

#: maze name -> (gymnasium-robotics env id, reset cell, goal cell, episode limit).
#: Cells are D4RL AntMaze's evaluation task (opposite ends of the maze); limits are the
#: registered ``max_episode_steps`` of the v4 envs.
ANTMAZE_MAZES: dict[str, tuple[str, tuple[int, int], tuple[int, int], int]] = {
    "umaze": ("AntMaze_UMaze-v4", (3, 1), (1, 1), 700),
    "medium": ("AntMaze_Medium-v4", (1, 1), (6, 6), 1000),
    "large": ("AntMaze_Large-v4", (1, 1), (7, 9), 1000),
}

#: Default size of the placeholder datasets (D4RL used 1M steps); about a minute on one core.
DEFAULT_NUM_STEPS = 100_000

#: Goal radius of gymnasium-robotics' maze envs (reward 1 / success within it).
GOAL_RADIUS = 0.45

#: Bumped whenever the data a given set of arguments produces changes; older datasets are rebuilt.
_GENERATOR_VERSION = 1

_POLICIES = ("random",)


def _maze_entry(maze: str) -> tuple[str, tuple[int, int], tuple[int, int], int]:
    try:
        return ANTMAZE_MAZES[maze.lower()]
    except KeyError:
        raise ValueError(
            f"unknown maze {maze!r}; expected one of {sorted(ANTMAZE_MAZES)}"
        ) from None


def antmaze_env_id(maze: str) -> str:
    """gymnasium-robotics id of the maze, e.g. ``"umaze" -> "AntMaze_UMaze-v4"``."""
    return _maze_entry(maze)[0]


def default_antmaze_dataset_id(maze: str, policy: str = "random") -> str:
    """Default local Minari id, e.g. ``local/antmaze/umaze-random-v0``."""
    _maze_entry(maze)
    return f"local/antmaze/{maze.lower()}-{policy}-v0"


def antmaze_env_kwargs(maze: str, max_episode_steps: int | None = None) -> dict[str, Any]:
    """``gym.make`` keyword arguments of the data-collection (and online) env: fixed reset and
    goal cells, sparse reward, continuing task, the goal never moves."""
    _, start, goal, horizon = _maze_entry(maze)
    return {
        "maze_map": maze_map_with_cells(base_maze_map(maze), goal=goal, reset=start),
        "reward_type": "sparse",
        "continuing_task": True,
        "reset_target": False,
        "max_episode_steps": int(max_episode_steps or horizon),
    }


def antmaze_eval_env_kwargs(maze: str) -> dict[str, Any]:
    """``gym.make`` keyword arguments of the evaluation env: as :func:`antmaze_env_kwargs` but
    episodic (``continuing_task=False``: terminated with reward 1 when the goal is reached)."""
    return {**antmaze_env_kwargs(maze), "continuing_task": False}


def make_antmaze_env(maze: str, **kwargs: Any) -> gym.Env:
    """The data-collection env of ``maze`` (see :func:`antmaze_env_kwargs`)."""
    register_maze_envs()
    return gym.make(antmaze_env_id(maze), **{**antmaze_env_kwargs(maze), **kwargs})


def make_antmaze_eval_env(maze: str, **kwargs: Any) -> gym.Env:
    """The evaluation env of ``maze`` (see :func:`antmaze_eval_env_kwargs`)."""
    register_maze_envs()
    return gym.make(antmaze_env_id(maze), **{**antmaze_eval_env_kwargs(maze), **kwargs})


def _stored_generator_version(dataset_id: str) -> int | None:
    import minari

    try:
        meta = minari.load_dataset(dataset_id).storage.metadata
        return int(meta.get("generator_params", {}).get("generator_version"))
    except Exception:
        return None


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
        dataset_id: Minari id (default ``local/antmaze/<maze>-<policy>-v0``).
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
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from tqdm.auto import tqdm

    env_id, start, goal, horizon = _maze_entry(maze)
    maze = maze.lower()
    if policy not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {list(_POLICIES)}")
    dataset_id = dataset_id or default_antmaze_dataset_id(maze, policy)
    num_steps = int(num_steps if num_steps is not None else DEFAULT_NUM_STEPS)
    episode_steps = int(episode_steps or horizon)
    if num_steps <= 0 or episode_steps <= 0:
        raise ValueError("num_steps and episode_steps must be positive")
    if not force and is_complete(dataset_id):
        if _stored_generator_version(dataset_id) == _GENERATOR_VERSION:
            return dataset_id

    env = make_antmaze_env(maze, max_episode_steps=episode_steps)
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

    params = {
        "generator": "torchrl_dmg.data.antmaze.generate_antmaze_dataset",
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
    description = (
        f"PLACEHOLDER AntMaze data on {env_id} (sparse reward, continuing task, fixed reset cell "
        f"{start} and goal cell {goal}) from a uniform random policy: it exercises the AntMaze "
        f"pipeline but does not reach the goal. {num_steps} steps in episodes of {episode_steps} "
        "steps (truncated, never terminated). Evaluation env: the same cells with "
        "continuing_task=False (terminated with reward 1 at the goal); ref_min_score 0 and "
        f"ref_max_score 1, so the normalised score is the success rate. Parameters: {params}."
    )
    eval_env = make_antmaze_eval_env(maze)
    try:
        with building_dataset(dataset_id):
            dataset = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env.spec,
                eval_env=eval_env.spec,
                algorithm_name=f"{policy} policy (placeholder)",
                author="torchrl_dmg",
                author_email="n/a",
                code_permalink="torchrl_dmg/data/antmaze.py",
                ref_min_score=0.0,
                ref_max_score=1.0,
                num_episodes_average_score=100,
                description=description,
                requirements=["gymnasium-robotics>=1.4,<1.5"],
            )
            dataset.storage.update_metadata({"generator_params": params})
    finally:
        eval_env.close()
        env.close()
    return dataset_id

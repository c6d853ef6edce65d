"""D4RL-maze2d-style PointMaze datasets, generated locally as real Minari datasets.

There is no internet on the training machines, so ``D4RL/pointmaze/*`` cannot be downloaded;
this module recreates the recipe behind them:

* Environment: gymnasium-robotics ``PointMaze_{UMaze,Medium,Large}-v3``, sparse reward,
  ``continuing_task=True``, ``reset_target=True``. (The gymnasium-robotics docstring describes
  ``reset_target`` backwards; the code samples a NEW random goal cell, jittered by +-0.25,
  as soon as the ball is within 0.45 of the goal when ``reset_target=True``. With the default
  ``False`` the goal never moves and the ball collects reward 1 on every step it stays there.)
* Behaviour policy: a waypoint controller. A BFS over the maze grid gives the next cell on a
  shortest path to the goal cell (:mod:`torchrl_dmg.datagen.maze`); the action is the PD law
  ``clip(kp * (waypoint - pos) - kd * vel, -1, 1)`` plus Gaussian noise, clipped again. Inside
  the goal cell the waypoint is the goal itself.
* One continuous stream (the env is reset once). Unlike D4RL, after reaching a goal the
  controller holds it for a random 0..``max_dwell`` steps before a new goal is drawn: the
  evaluation task rewards every step spent at the goal, and without such data holding the goal
  is out of distribution (a policy trained without it runs through the goal). The stream is
  cut into episodes at every goal change and after ``max_episode_steps`` steps without one. Both cuts are ``truncated`` - the
  task never terminates, so ``terminated`` is always False. Cutting at goal reaches keeps every
  stored transition within a single goal: the env only swaps the goal *after* computing the
  observation of the reaching step, so the next episode starts from the same state with the
  new ``desired_goal``. (Minari's D4RL/pointmaze datasets are split the same way.)
* Rewards are sparse (1 within 0.45 of the *current* goal), so a policy trained on these data
  must see ``desired_goal``: flatten the dict observation (observation + desired_goal).
* Evaluation env (stored as the dataset's ``eval_env_spec``): the same maze with one fixed
  goal cell and one fixed start cell (D4RL maze2d's evaluation task), ``reset_target=False``,
  300 / 600 / 800 steps. ``ref_min_score`` is the mean return of a uniform random policy and
  ``ref_max_score`` that of the noiseless controller on that env, so
  ``minari.get_normalized_score`` gives D4RL-style normalised scores (x100).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from tqdm.auto import tqdm

from torchrl_dmg.data.local import is_complete, publish_dataset, stored_generator_version
from torchrl_dmg.datagen.maze import (
    DEFAULT_KD,
    DEFAULT_KP,
    GOAL_RADIUS,
    WaypointController,
    fixed_task_kwargs,
    maze_entry,
    register_maze_envs,
)

__all__ = [
    "DEFAULT_NOISE",
    "DEFAULT_NUM_STEPS",
    "POINTMAZE_MAZES",
    "WaypointController",
    "default_pointmaze_dataset_id",
    "evaluate_policy",
    "generate_pointmaze_dataset",
    "make_pointmaze_eval_env",
    "pointmaze_env_id",
    "pointmaze_eval_env_kwargs",
]

#: maze name -> (gymnasium-robotics env id, eval start cell, eval goal cell, eval horizon).
#: Start/goal cells are D4RL maze2d's evaluation task: opposite ends of the maze.
POINTMAZE_MAZES: dict[str, tuple[str, tuple[int, int], tuple[int, int], int]] = {
    "umaze": ("PointMaze_UMaze-v3", (3, 1), (1, 1), 300),
    "medium": ("PointMaze_Medium-v3", (1, 1), (6, 6), 600),
    "large": ("PointMaze_Large-v3", (1, 1), (7, 9), 800),
}

#: Default dataset sizes: big enough to cover the maze thousands of times over, small enough to
#: generate in about a minute on 2 CPU cores (D4RL used 1M / 2M / 4M steps).
DEFAULT_NUM_STEPS: dict[str, int] = {"umaze": 200_000, "medium": 400_000, "large": 600_000}

#: Std of the Gaussian action noise (actions live in [-1, 1]). D4RL's noisy maze2d controller
#: used 0.5; the PD law saturates far from a waypoint, so the data stay goal-reaching (about 94%
#: of the noiseless controller's goal rate on Medium) while covering many more actions.
DEFAULT_NOISE = 0.5
#: Upper bound of the random number of steps the controller holds a reached goal.
DEFAULT_MAX_DWELL = 100

#: Bumped whenever the data a given set of arguments produces changes; a stored dataset of
#: another version is rebuilt.
_GENERATOR_VERSION = 2


def _maze_entry(maze: str) -> tuple[str, tuple[int, int], tuple[int, int], int]:
    return maze_entry(POINTMAZE_MAZES, maze)


def pointmaze_env_id(maze: str) -> str:
    """gymnasium-robotics id of the maze, e.g. ``"medium" -> "PointMaze_Medium-v3"``."""
    return _maze_entry(maze)[0]


def default_pointmaze_dataset_id(maze: str) -> str:
    """Default local Minari id, e.g. ``local/pointmaze/medium-v0``."""
    _maze_entry(maze)
    return f"local/pointmaze/{maze.lower()}-v0"


def pointmaze_eval_env_kwargs(maze: str) -> dict[str, Any]:
    """``gym.make`` keyword arguments of the fixed-goal evaluation task (besides the env id).

    ``gym.make(pointmaze_env_id(maze), **pointmaze_eval_env_kwargs(maze))`` rebuilds exactly the
    environment recorded as the datasets' ``eval_env_spec`` (JSON-serialisable values only).
    """
    _, start, goal, horizon = _maze_entry(maze)
    return fixed_task_kwargs(maze, start, goal, horizon)


def make_pointmaze_eval_env(maze: str, **kwargs: Any) -> gym.Env:
    """The evaluation environment of ``maze`` (fixed start and goal cells, time limit)."""
    register_maze_envs()
    return gym.make(pointmaze_env_id(maze), **{**pointmaze_eval_env_kwargs(maze), **kwargs})


def _make_collection_env(maze: str, max_episode_steps: int) -> gym.Env:
    register_maze_envs()
    return gym.make(
        pointmaze_env_id(maze),
        reward_type="sparse",
        continuing_task=True,
        reset_target=True,
        max_episode_steps=max_episode_steps,
    )


def evaluate_policy(
    env: gym.Env,
    policy: Callable[[dict[str, np.ndarray]], np.ndarray],
    num_episodes: int,
    seed: int,
) -> np.ndarray:
    """Undiscounted returns of ``policy`` over ``num_episodes`` seeded episodes of ``env``."""
    returns = np.zeros(num_episodes, dtype=np.float64)
    for ep in range(num_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            returns[ep] += float(reward)
            done = terminated or truncated
    return returns


def _reference_scores(
    maze: str, kp: float, kd: float, num_episodes: int, seed: int
) -> tuple[float, float]:
    env = make_pointmaze_eval_env(maze)
    try:
        action_space = env.action_space
        action_space.seed(seed)
        random_returns = evaluate_policy(
            env, lambda _obs: action_space.sample(), num_episodes, seed=seed
        )
        expert = WaypointController(
            env.unwrapped.maze.maze_map, env.unwrapped.maze.maze_size_scaling, kp, kd, noise=0.0
        )
        expert_returns = evaluate_policy(env, expert, num_episodes, seed=seed + 10_000)
    finally:
        env.close()
    return float(random_returns.mean()), float(expert_returns.mean())


def _collect(
    env: gym.Env,
    controller: WaypointController,
    num_steps: int,
    seed: int,
    max_episode_steps: int,
    split_on_success: bool,
    progress: bool,
    max_dwell: int = 0,
) -> dict[str, np.ndarray]:
    """Run the controller for ``num_steps`` steps of one continuing stream.

    Returns flat per-step arrays (``obs_*`` before the step, ``next_*`` after it, ``action``,
    ``reward``, ``success``, ``episode_end``). Steps the unwrapped env directly: episode limits are
    handled here, and skipping gymnasium's checker/time-limit wrappers doubles the throughput.
    """
    base = env.unwrapped
    keys = ("observation", "achieved_goal", "desired_goal")
    obs, _ = env.reset(seed=seed)
    dims = {k: np.asarray(obs[k]).shape[0] for k in keys}
    out: dict[str, np.ndarray] = {}
    for k in keys:
        out[f"obs_{k}"] = np.empty((num_steps, dims[k]), dtype=np.float64)
        out[f"next_{k}"] = np.empty((num_steps, dims[k]), dtype=np.float64)
    out["action"] = np.empty((num_steps, 2), dtype=np.float32)
    out["reward"] = np.empty(num_steps, dtype=np.float64)
    out["success"] = np.empty(num_steps, dtype=bool)
    out["episode_end"] = np.zeros(num_steps, dtype=bool)

    chunk = 2_000
    ep_len = 0
    # After a reach the controller keeps steering to the same goal for U{0..max_dwell} steps
    # (reward 1 while inside the radius) before the env may draw a new goal: the evaluation
    # task pays for every step spent at the goal, so holding it must be in the data.
    dwell_rng = np.random.default_rng(seed + 7)
    dwell_left: int | None = None
    with tqdm(
        total=num_steps, disable=not progress, desc="pointmaze collect", unit="step", smoothing=0.1
    ) as bar:
        for t in range(num_steps):
            for k in keys:
                out[f"obs_{k}"][t] = obs[k]
            action = controller(obs)
            base.reset_target = dwell_left is not None and dwell_left <= 0
            goal_before = base.goal.copy()
            next_obs, reward, _terminated, _truncated, info = base.step(action)
            goal_changed = not np.array_equal(goal_before, base.goal)
            if goal_changed:
                dwell_left = None
            elif info["success"] and dwell_left is None:
                dwell_left = int(dwell_rng.integers(0, max_dwell + 1))
            elif dwell_left is not None:
                dwell_left -= 1
            out["action"][t] = action
            out["reward"][t] = reward
            out["success"][t] = info["success"]
            for k in keys:
                out[f"next_{k}"][t] = next_obs[k]
            ep_len += 1
            if (split_on_success and goal_changed) or ep_len >= max_episode_steps:
                out["episode_end"][t] = True
                ep_len = 0
                # The env computed next_obs before moving the goal: start the next episode from
                # the same state but with the goal the env now pursues.
                obs = {
                    "observation": next_obs["observation"],
                    "achieved_goal": next_obs["achieved_goal"],
                    "desired_goal": np.array(base.goal, dtype=np.float64),
                }
            else:
                obs = next_obs
            if (t + 1) % chunk == 0 or t + 1 == num_steps:
                bar.update((t + 1) - bar.n)
    out["episode_end"][-1] = True
    return out


def _episode_buffers(data: dict[str, np.ndarray], seed: int) -> list:
    keys = ("observation", "achieved_goal", "desired_goal")
    ends = np.flatnonzero(data["episode_end"]) + 1
    starts = np.concatenate([[0], ends[:-1]])
    buffers = []
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        observations = {
            k: np.concatenate([data[f"obs_{k}"][s:e], data[f"next_{k}"][e - 1 : e]]) for k in keys
        }
        first_success = (
            np.linalg.norm(observations["achieved_goal"][0] - observations["desired_goal"][0])
            <= GOAL_RADIUS
        )
        length = e - s
        truncations = np.zeros(length, dtype=bool)
        truncations[-1] = True
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=seed if i == 0 else None,
                observations=observations,
                actions=data["action"][s:e],
                rewards=data["reward"][s:e],
                terminations=np.zeros(length, dtype=bool),
                truncations=truncations,
                infos={"success": np.concatenate([[first_success], data["success"][s:e]])},
            )
        )
    return buffers


def generate_pointmaze_dataset(
    maze: str = "medium",
    num_steps: int | None = None,
    seed: int = 0,
    noise: float = DEFAULT_NOISE,
    dataset_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    kp: float = DEFAULT_KP,
    kd: float = DEFAULT_KD,
    max_episode_steps: int | None = None,
    split_on_success: bool = True,
    num_ref_episodes: int = 30,
    max_dwell: int = DEFAULT_MAX_DWELL,
) -> str:
    """Generate (or reuse) a local Minari PointMaze dataset and return its id.

    Args:
        maze: ``"umaze"``, ``"medium"`` or ``"large"``.
        num_steps: transitions to collect (default :data:`DEFAULT_NUM_STEPS`).
        seed: seeds the env (goals, start, position noise) and the action noise: same seed and
            arguments give identical data.
        noise: action-noise std of the behaviour controller.
        dataset_id: Minari id (default ``local/pointmaze/<maze>-v0``).
        force: rebuild even if a complete dataset with this id exists.
        progress: show a tqdm bar while collecting.
        kp, kd: PD gains of the controller (also used for the noiseless reference policy).
        max_episode_steps: cut an episode after this many steps without reaching the goal
            (default: the env's limit, 300 / 600 / 800).
        split_on_success: also cut episodes at each goal reach (see the module docstring);
            with False episodes have fixed length and a goal may change inside one.
        num_ref_episodes: evaluation episodes for each reference score.
        max_dwell: after each goal reach the controller holds the goal for a uniformly drawn
            0..max_dwell further steps before a new goal is drawn (0: switch at once, as D4RL).

    Returns:
        the dataset id; load it with ``minari.load_dataset``. (TorchRL 0.14.1's
        ``MinariExperienceReplay(..., load_from_local_minari=True)`` finds and parses it, but
        that release returns all-zero data for every Minari dataset: it fills a TensorDict and
        then stores ``td.memmap_like(...)``, which is a contentless copy.)

    Existing complete datasets are returned untouched (their generation parameters are not
    compared: pass ``force=True`` or another ``dataset_id`` after changing them). The dataset is
    written through :func:`torchrl_dmg.data.local.building_dataset`, so an interrupted run
    leaves nothing that loads as a whole dataset.
    """
    env_id, _, _, horizon = _maze_entry(maze)
    maze = maze.lower()
    dataset_id = dataset_id or default_pointmaze_dataset_id(maze)
    num_steps = int(num_steps if num_steps is not None else DEFAULT_NUM_STEPS[maze])
    max_episode_steps = int(max_episode_steps or horizon)
    if num_steps <= 0:
        raise ValueError("num_steps must be positive")
    if not force and is_complete(dataset_id):
        if stored_generator_version(dataset_id) == _GENERATOR_VERSION:
            return dataset_id
        # made by another generator version: rebuild rather than silently train on stale data

    settings = {
        "noise": noise,
        "kp": kp,
        "kd": kd,
        "max_episode_steps": max_episode_steps,
        "split_on_success": split_on_success,
        "max_dwell": max_dwell,
        "num_ref_episodes": num_ref_episodes,
    }
    env, data = _collect_with_controller(maze, num_steps, seed, settings, progress)
    buffers = _episode_buffers(data, seed)
    ref_min, ref_max = _reference_scores(maze, kp, kd, num_ref_episodes, seed=seed + 1_000_000)
    _publish(dataset_id, maze, env, data, seed, settings, (ref_min, ref_max), buffers)
    return dataset_id


def _collect_with_controller(
    maze: str, num_steps: int, seed: int, settings: dict[str, Any], progress: bool
) -> tuple[gym.Env, dict[str, np.ndarray]]:
    """The collection env (closed; its spec goes into the dataset) and ``num_steps``
    transitions of the noisy waypoint controller in it."""
    env = _make_collection_env(maze, settings["max_episode_steps"])
    controller = WaypointController(
        env.unwrapped.maze.maze_map,
        env.unwrapped.maze.maze_size_scaling,
        kp=settings["kp"],
        kd=settings["kd"],
        noise=settings["noise"],
        seed=seed,
    )
    try:
        data = _collect(
            env,
            controller,
            num_steps,
            seed,
            settings["max_episode_steps"],
            settings["split_on_success"],
            progress,
            settings["max_dwell"],
        )
    finally:
        env.close()
    return env, data


def _publish(
    dataset_id: str,
    maze: str,
    env: gym.Env,
    data: dict[str, np.ndarray],
    seed: int,
    settings: dict[str, Any],
    ref_scores: tuple[float, float],
    buffers: list,
) -> None:
    """Write the collected episodes as Minari dataset ``dataset_id`` with its metadata."""
    env_id, num_steps = _maze_entry(maze)[0], len(data["success"])
    noise, kp, kd = settings["noise"], settings["kp"], settings["kd"]
    max_episode_steps, split_on_success = (
        settings["max_episode_steps"],
        settings["split_on_success"],
    )
    max_dwell, num_ref_episodes = settings["max_dwell"], settings["num_ref_episodes"]
    ref_min, ref_max = ref_scores
    params = {
        "generator": "torchrl_dmg.datagen.pointmaze.generate_pointmaze_dataset",
        "generator_version": _GENERATOR_VERSION,
        "maze": maze,
        "env_id": env_id,
        "num_steps": num_steps,
        "seed": seed,
        "action_noise_std": float(noise),
        "kp": float(kp),
        "kd": float(kd),
        "max_episode_steps": max_episode_steps,
        "split_on_success": bool(split_on_success),
        "max_dwell": int(max_dwell),
        "num_ref_episodes": int(num_ref_episodes),
        "steps_at_goal": int(data["success"].sum()),
    }
    description = (
        f"D4RL maze2d-style {env_id} data (sparse reward, continuing task, a new random goal "
        f"after each reach) from a BFS-waypoint PD controller (kp={kp}, kd={kd}) with Gaussian "
        f"action noise std {noise}; {num_steps} steps, seed {seed}. Episodes end (truncated, "
        f"never terminated) "
        + (
            f"at each goal change (after holding a reached goal for U{{0..{max_dwell}}} steps) "
            f"and after {max_episode_steps} steps without one"
            if split_on_success
            else f"every {max_episode_steps} steps"
        )
        + ". Evaluation env: fixed start "
        f"{POINTMAZE_MAZES[maze][1]} and goal {POINTMAZE_MAZES[maze][2]} cells; "
        f"ref_min_score = uniform random policy, ref_max_score = noiseless controller, "
        f"{num_ref_episodes} episodes each. Generator parameters: {params}."
    )
    eval_env = make_pointmaze_eval_env(maze)
    try:
        publish_dataset(
            dataset_id,
            buffers,
            env_spec=env.spec,
            eval_env_spec=eval_env.spec,
            algorithm_name="BFS-waypoint PD controller + Gaussian action noise",
            code_permalink="torchrl_dmg/datagen/pointmaze.py",
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            num_episodes_average_score=num_ref_episodes,
            description=description,
            generator_params=params,
            requirements=["gymnasium-robotics>=1.4,<1.5"],
        )
    finally:
        eval_env.close()

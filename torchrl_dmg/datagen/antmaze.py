"""Local AntMaze datasets, generated as real Minari datasets (no internet needed).

Two generators share the environments defined here:

* :func:`generate_antmaze_navigator_dataset` (``local/antmaze/<variant>-v1``): D4RL-style data
  from a goal-reaching ant (:mod:`torchrl_dmg.antgoal`, trained with the project's SAC and
  shipped as ``policies/antgoal.pt``) steered along maze waypoints by a
  :class:`WaypointNavigator`, with D4RL's variants (umaze, umaze-diverse, medium-play,
  medium-diverse, large-play, large-diverse). See the second half of this module.
* :func:`generate_antmaze_dataset` (``local/antmaze/<maze>-random-v1``): a *placeholder* whose
  behaviour policy is **uniform random actions**: the ant jitters around its start cell and
  practically never reaches the goal, so the data only exercise the AntMaze code path end to
  end (29-dim observations, 8-dim actions, sparse reward shifted by -1, the evaluation env and
  its success-rate score).

What both store:

* Environment: ``torchrl_dmg/AntMazeD4RL_{UMaze,Medium,Large}-v0`` (:mod:`torchrl_dmg.d4rl_ant`:
  gymnasium-robotics ``AntMaze-v5`` with D4RL's ant, ``gear 30``, 0.1 s per step; 27-dim
  ant state as in ``AntMaze_*-v4`` and Minari's D4RL AntMaze datasets, plus 2-dim
  ``achieved_goal`` = the ant's xy and 2-dim ``desired_goal``), sparse reward,
  ``continuing_task=True``, ``reset_target=False``, with ONE fixed goal cell (``"g"``) and ONE
  fixed reset cell (``"r"``) in the maze map - the cells of D4RL's evaluation task. The goal
  must be fixed because the AntMaze observation used for training (``achieved_goal`` then
  ``observation``) does not contain the goal; online fine-tuning steps this same env.
* Episodes: the env is reset (seed ``seed + i`` for episode ``i``) every ``episode_steps`` steps
  (placeholder default: the env's own limit, 700 for UMaze and 1000 for Medium/Large; the
  navigator datasets: 1000, as D4RL); every episode ends
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

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from torchrl_dmg.d4rl_ant import D4RL_ANTMAZE_IDS, register_d4rl_antmaze
from torchrl_dmg.data.local import is_complete, publish_dataset
from torchrl_dmg.datagen.maze import (
    MazeGrid,
    base_maze_map,
    maze_map_with_cells,
)

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
    "ANTMAZE_VARIANTS",
    "PLAY_CELLS",
    "WaypointNavigator",
    "ant_policy_path",
    "antmaze_dataset_id",
    "generate_antmaze_navigator_dataset",
    "navigator_success",
]

#: maze name -> (env id, reset cell, goal cell, episode limit). The envs are D4RL's ant in
#: gymnasium-robotics' mazes (:mod:`torchrl_dmg.d4rl_ant`); cells are D4RL AntMaze's
#: evaluation task (opposite ends of the maze); limits are D4RL's (700 / 1000 / 1000).
ANTMAZE_MAZES: dict[str, tuple[str, tuple[int, int], tuple[int, int], int]] = {
    "umaze": (D4RL_ANTMAZE_IDS["umaze"][0], (3, 1), (1, 1), D4RL_ANTMAZE_IDS["umaze"][1]),
    "medium": (D4RL_ANTMAZE_IDS["medium"][0], (1, 1), (6, 6), D4RL_ANTMAZE_IDS["medium"][1]),
    "large": (D4RL_ANTMAZE_IDS["large"][0], (1, 1), (7, 9), D4RL_ANTMAZE_IDS["large"][1]),
}

#: Version of the local AntMaze dataset ids (``local/antmaze/<variant>-v1``). v0 was made
#: with Gymnasium's gear-150 ant, which flipped over in half of its maze episodes: retired.
DATASET_VERSION = 1

#: Default size of the placeholder datasets (D4RL used 1M steps); about a minute on one core.
DEFAULT_NUM_STEPS = 100_000

#: Goal radius of gymnasium-robotics' maze envs (reward 1 / success within it).
GOAL_RADIUS = 0.45

#: Bumped whenever the data a given set of arguments produces changes; older datasets are rebuilt.
_GENERATOR_VERSION = 2  # 2: D4RL's ant

_POLICIES = ("random",)


def _maze_entry(maze: str) -> tuple[str, tuple[int, int], tuple[int, int], int]:
    try:
        return ANTMAZE_MAZES[maze.lower()]
    except KeyError:
        raise ValueError(
            f"unknown maze {maze!r}; expected one of {sorted(ANTMAZE_MAZES)}"
        ) from None


def antmaze_env_id(maze: str) -> str:
    """Registered id of the maze, e.g. ``"umaze" -> "torchrl_dmg/AntMazeD4RL_UMaze-v0"``."""
    return _maze_entry(maze)[0]


def default_antmaze_dataset_id(maze: str, policy: str = "random") -> str:
    """Default local Minari id, e.g. ``local/antmaze/umaze-random-v1``."""
    _maze_entry(maze)
    return f"local/antmaze/{maze.lower()}-{policy}-v{DATASET_VERSION}"


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
    register_d4rl_antmaze()
    return gym.make(antmaze_env_id(maze), **{**antmaze_env_kwargs(maze), **kwargs})


def make_antmaze_eval_env(maze: str, **kwargs: Any) -> gym.Env:
    """The evaluation env of ``maze`` (see :func:`antmaze_eval_env_kwargs`)."""
    register_d4rl_antmaze()
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


def _publish(dataset_id, buffers, env, eval_env, algorithm_name, description, params) -> None:
    """Publish an AntMaze dataset: success-rate reference scores (0 / 1)."""
    publish_dataset(
        dataset_id,
        buffers,
        env_spec=env.spec,
        eval_env_spec=eval_env.spec,
        algorithm_name=algorithm_name,
        code_permalink="torchrl_dmg/data/antmaze.py",
        ref_min_score=0.0,
        ref_max_score=1.0,
        description=description,
        generator_params=params,
        requirements=["gymnasium-robotics>=1.4,<1.5", "torchrl-dmg"],
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
        _publish(
            dataset_id,
            buffers,
            env,
            eval_env,
            f"{policy} policy (placeholder)",
            description,
            params,
        )
    finally:
        eval_env.close()
        env.close()
    return dataset_id


# =====================================================================================
# D4RL-style AntMaze data: the goal-reaching ant steered along maze waypoints
# =====================================================================================

#: dataset variant -> (maze, task). ``fixed``: from the evaluation start cell to the
#: evaluation goal cell (D4RL ``antmaze-umaze``); ``play``: start and commanded goals from
#: a fixed set of cells (:data:`PLAY_CELLS`); ``diverse``: from any free cell to any free cell.
ANTMAZE_VARIANTS: dict[str, tuple[str, str]] = {
    "umaze": ("umaze", "fixed"),
    "umaze-diverse": ("umaze", "diverse"),
    "medium-play": ("medium", "play"),
    "medium-diverse": ("medium", "diverse"),
    "large-play": ("large", "play"),
    "large-diverse": ("large", "diverse"),
}

#: Hand-picked cells of the ``play`` variants (spread over the maze, corners and junctions;
#: D4RL's own list was not published with the data).
PLAY_CELLS: dict[str, tuple[tuple[int, int], ...]] = {
    "umaze": ((1, 1), (1, 3), (3, 1), (3, 3)),
    "medium": ((1, 1), (1, 6), (2, 4), (3, 3), (4, 1), (4, 5), (5, 4), (6, 2), (6, 6)),
    "large": (
        (1, 1),
        (1, 4),
        (1, 10),
        (3, 3),
        (3, 6),
        (3, 9),
        (5, 2),
        (5, 4),
        (5, 8),
        (7, 1),
        (7, 5),
        (7, 9),
    ),
}

#: D4RL's Gaussian action noise on the goal-reaching policy's action.
ACTION_NOISE = 0.2
#: Uniform jitter (world units, each axis) of the waypoints around the cell centres.
WAYPOINT_JITTER = 0.5
#: The navigator moves on to the next waypoint within this distance of the current one.
WAYPOINT_RADIUS = 1.5
#: A commanded goal counts as reached within this distance (then the next one is drawn).
GOAL_REACHED_RADIUS = 0.5
#: Uniform noise (each axis) of a commanded goal around its cell centre: the maze env's
#: own ``position_noise_range`` (0.25) times the AntMaze cell size (4).
GOAL_NOISE = 1.0
#: Episode length of the navigator datasets (D4RL: 1000 steps).
NAVIGATOR_EPISODE_STEPS = 1000
#: Default size of the navigator datasets (D4RL: 1M transitions).
NAVIGATOR_NUM_STEPS = 1_000_000
#: episodes stepped side by side (one batched policy call per step)
_NUM_ENVS = 16
_NAVIGATOR_VERSION = 3  # 2: an episode ends when the ant flips; 3: D4RL's ant


def ant_policy_path(policy_dir: str | os.PathLike | None = None) -> Path:
    """Path of the shipped goal-reaching ant policy (``antgoal.pt``)."""
    from torchrl_dmg.datagen.locomotion import POLICY_DIR

    path = Path(policy_dir or POLICY_DIR) / "antgoal.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"No goal-reaching ant policy at {path}: the local AntMaze datasets are made with "
            "it. Train one with `python recipes/train_behaviour.py env=antgoal` and ship it "
            "with `python -m torchrl_dmg.data.antmaze outputs/behaviour/antgoal_s0` (README, "
            "'AntMaze datasets'); meanwhile fine-tuning runs offline on the local PointMaze "
            "data: `python recipes/finetune.py dataset=local/pointmaze/medium-v0 "
            "family=pointmaze`."
        )
    return path


def load_ant_policy(path: str | os.PathLike):
    """The goal-reaching ant at ``path`` (``(actor, checkpoint meta)``); one trained on
    Gymnasium's retired gear-150 ant fails with a line naming the task to train instead."""
    from torchrl_dmg.antgoal import ANTGOAL_ID, RETIRED_ANTGOAL_IDS
    from torchrl_dmg.behaviour import load_behaviour_actor

    actor, meta = load_behaviour_actor(path)
    if meta.get("env") in RETIRED_ANTGOAL_IDS:
        raise ValueError(
            f"{path} is a goal-reaching ant for {meta['env']} (Gymnasium's gear-150 ant, "
            f"retired); the AntMaze datasets need one trained on {ANTGOAL_ID} (D4RL's ant): "
            "`python recipes/train_behaviour.py env=antgoal` (README, 'AntMaze')"
        )
    return actor, meta


class WaypointNavigator:
    """Steers an agent through a maze: the shortest cell path from its cell to the goal's,
    one jittered waypoint per intermediate cell, then the goal itself.

    The current waypoint is the (jittered) centre of the next cell to enter; the navigator
    moves on once the agent is within ``radius`` of it, so turns happen near cell centres
    and corners are not cut. An agent pushed off the path is re-planned from where it is.

    Args:
        grid: the maze.
        rng: draws the waypoint jitter (once per planned path).
        jitter: uniform jitter of each waypoint around its cell centre (each axis).
        radius: distance at which a waypoint counts as passed.
    """

    def __init__(
        self,
        grid: MazeGrid,
        rng: np.random.Generator,
        jitter: float = WAYPOINT_JITTER,
        radius: float = WAYPOINT_RADIUS,
    ) -> None:
        self.grid, self.rng = grid, rng
        self.jitter, self.radius = float(jitter), float(radius)
        self.goal_xy = np.zeros(2)
        self.cells: list[tuple[int, int]] = []
        self.points: list[np.ndarray] = []
        self.k = 0

    def set_goal(self, xy: np.ndarray, goal_xy: np.ndarray) -> None:
        """Plan from ``xy`` to ``goal_xy``."""
        self.goal_xy = np.asarray(goal_xy, dtype=np.float64).copy()
        self._plan(xy)

    def _plan(self, xy: np.ndarray) -> None:
        grid = self.grid
        start = grid.nearest_free_cell(xy)
        self.cells = grid.shortest_path(start, grid.nearest_free_cell(self.goal_xy))
        between = self.cells[1:-1]  # the goal's own cell gets the goal itself
        jitter = self.rng.uniform(-self.jitter, self.jitter, size=(len(between), 2))
        self.points = [grid.cell_to_xy(c) + j for c, j in zip(between, jitter, strict=True)]
        self.points.append(self.goal_xy)
        self.k = 0

    def waypoint(self, xy: np.ndarray) -> np.ndarray:
        """The point to walk towards from ``xy`` (advancing along the plan)."""
        cell = self.grid.nearest_free_cell(xy)
        if cell not in self.cells:
            self._plan(xy)
        else:
            # points[m] is the waypoint of cells[m + 1]: in cells[i], aim at its own centre
            # (m = i - 1) or at the next cell's (m = i); never further, so an ant pushed
            # back along the path does not cut towards a waypoint around a corner
            i = self.cells.index(cell)
            self.k = min(max(self.k, i - 1), i, len(self.points) - 1)
        while self.k < len(self.points) - 1 and np.linalg.norm(xy - self.points[self.k]) < (
            self.radius
        ):
            self.k += 1
        return self.points[self.k]


def _variant_entry(variant: str) -> tuple[str, str]:
    try:
        return ANTMAZE_VARIANTS[variant.lower()]
    except KeyError:
        raise ValueError(
            f"unknown AntMaze dataset {variant!r}; expected one of {list(ANTMAZE_VARIANTS)}"
        ) from None


def antmaze_dataset_id(variant: str) -> str:
    """Local Minari id of a navigator dataset, e.g. ``local/antmaze/medium-play-v1``
    (mirrors Minari's ``D4RL/antmaze/medium-play-v1``)."""
    _variant_entry(variant)
    return f"local/antmaze/{variant.lower()}-v{DATASET_VERSION}"


def _task_cells(maze: str, task: str, grid: MazeGrid) -> tuple[list, list]:
    """(start cells, commanded-goal cells) of a task."""
    _, start, goal, _ = _maze_entry(maze)
    if task == "fixed":
        return [start], [goal]
    if task == "play":
        return list(PLAY_CELLS[maze]), list(PLAY_CELLS[maze])
    cells = list(grid.free_cells)
    return cells, cells


class _NavigatedAnt:
    """One AntMaze env + its navigator + the episode's random stream (goals, jitter, noise)."""

    def __init__(self, maze: str, task: str, episode_steps: int, continuing: bool = True):
        make = make_antmaze_env if continuing else make_antmaze_eval_env
        self.env = make(maze, max_episode_steps=episode_steps)
        self.base = self.env.unwrapped
        self.grid = MazeGrid(self.base.maze.maze_map, self.base.maze.maze_size_scaling)
        self.starts, self.goals = _task_cells(maze, task, self.grid)
        self.nav: WaypointNavigator | None = None
        self.rng = np.random.default_rng()
        self.obs: dict[str, np.ndarray] = {}
        self.commanded = np.zeros(2)

    def reset(self, seed: int, episode: tuple[int, int], to_eval_goal: bool = False):
        """Reset with env seed ``seed``; the episode's own stream is spawned from
        ``episode = (base seed, episode index)`` (independent of the env's stream). The
        first command is a goal cell of the task, or the env's own (evaluation) goal."""
        base_seed, index = episode
        self.rng = np.random.default_rng(np.random.SeedSequence(base_seed, spawn_key=(index,)))
        self.nav = WaypointNavigator(self.grid, self.rng)
        start = self.starts[self.rng.integers(len(self.starts))]
        self.obs, info = self.base.reset(seed=seed, options={"reset_cell": np.array(start)})
        self._command(self.base.goal if to_eval_goal else None)
        return self.obs, info

    def _command(self, command: np.ndarray | None = None) -> None:
        xy = self.obs["achieved_goal"]
        if command is None:
            here = self.grid.nearest_free_cell(xy)
            choices = [c for c in self.goals if c != here] or self.goals
            cell = choices[self.rng.integers(len(choices))]
            command = self.grid.cell_to_xy(cell) + self.rng.uniform(-GOAL_NOISE, GOAL_NOISE, 2)
        self.commanded = np.array(command, dtype=np.float64)
        self.nav.set_goal(xy, self.commanded)

    def policy_input(self) -> np.ndarray:
        from torchrl_dmg.antgoal import policy_observation

        xy = self.obs["achieved_goal"]
        return policy_observation(self.obs["observation"], xy, self.nav.waypoint(xy))

    def step(self, action: np.ndarray, recommand: bool = True):
        self.obs, reward, terminated, truncated, info = self.base.step(action)
        if recommand and np.linalg.norm(self.obs["achieved_goal"] - self.commanded) <= (
            GOAL_REACHED_RADIUS
        ):
            self._command()
        return self.obs, reward, terminated, truncated, info

    @property
    def flipped(self) -> bool:
        """The ant lies on its back (:func:`torchrl_dmg.antgoal.is_flipped`): it cannot get
        up, its episode is over."""
        from torchrl_dmg.antgoal import is_flipped

        return bool(is_flipped(self.obs["observation"]))


def _noisy_actions(actor, ants: list[_NavigatedAnt], noise: float) -> np.ndarray:
    from torchrl_dmg.behaviour import act

    actions = act(actor, np.stack([a.policy_input() for a in ants]), deterministic=True)
    if noise > 0:
        actions = actions + np.stack([a.rng.normal(0.0, noise, actions.shape[1]) for a in ants])
    return np.clip(actions, -1.0, 1.0).astype(np.float32)


def _navigate_episodes(
    maze: str,
    task: str,
    lengths: list[int],
    seed: int,
    first_episode: int,
    actor,
    noise: float,
) -> list[dict[str, Any]]:
    """Episodes ``first_episode, ...`` of the given lengths, stepped side by side. An
    episode whose ant ends a step on its back (:func:`~torchrl_dmg.antgoal.is_flipped`,
    from which it cannot get up) stops there (``"flipped": True``): the rest would be
    the ant lying still."""
    keys = ("observation", "achieved_goal", "desired_goal")
    ants = [_NavigatedAnt(maze, task, max(lengths)) for _ in lengths]
    try:
        episodes = []
        for j, ant in enumerate(ants):
            i = first_episode + j
            obs, info = ant.reset(seed + i, (seed, i))
            episodes.append(
                {
                    "observations": {k: [np.asarray(obs[k], dtype=np.float64)] for k in keys},
                    "actions": [],
                    "rewards": [],
                    "success": [bool(info["success"])],
                    "commanded_goal": [ant.commanded.copy()],
                    "flipped": False,
                }
            )
        for t in range(max(lengths)):
            live = [j for j, n in enumerate(lengths) if t < n and not episodes[j]["flipped"]]
            if not live:
                break
            actions = _noisy_actions(actor, [ants[j] for j in live], noise)
            for j, action in zip(live, actions, strict=True):
                obs, reward, _, _, info = ants[j].step(action)
                ep = episodes[j]
                for k in keys:
                    ep["observations"][k].append(np.asarray(obs[k], dtype=np.float64))
                ep["actions"].append(action)
                ep["rewards"].append(float(reward))
                ep["success"].append(bool(info["success"]))
                ep["commanded_goal"].append(ants[j].commanded.copy())
                ep["flipped"] = ants[j].flipped
    finally:
        for ant in ants:
            ant.env.close()
    return episodes


def generate_antmaze_navigator_dataset(
    variant: str = "umaze",
    num_steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    episode_steps: int = NAVIGATOR_EPISODE_STEPS,
    noise: float = ACTION_NOISE,
    policy_dir: str | os.PathLike | None = None,
    workers: int = 1,
) -> str:
    """Generate (or reuse) a D4RL-style AntMaze dataset and return its Minari id.

    The shipped goal-reaching ant (:func:`ant_policy_path`) walks towards the waypoints of
    a :class:`WaypointNavigator`, its deterministic action plus ``N(0, noise^2)`` (clipped
    to [-1, 1]); when the ant reaches its commanded goal, the next one is drawn from the
    variant's goal cells (:data:`ANTMAZE_VARIANTS`). Episodes of ``episode_steps`` steps,
    every one truncated (never terminated); episode ``i`` resets with seed ``seed + i``
    and draws its start, goals, waypoint jitter and action noise from its own stream
    (``SeedSequence(seed, spawn_key=(i,))``): the same arguments give the same data.

    The stored env is the maze's evaluation task (fixed goal and reset cells, sparse reward,
    continuing): rewards are 1 within 0.45 of the *evaluation* goal, whatever the ant was
    commanded; ``desired_goal`` is that goal. The evaluation env terminates on success,
    ``ref_min_score = 0``, ``ref_max_score = 1``: the normalised score is the success rate.
    ``infos`` keep ``success`` and the ``commanded_goal``.

    ``workers > 1`` steps the episodes in that many processes, each taking whole groups of
    :data:`_NUM_ENVS` episodes (the groups a single process steps side by side), so the
    data are the same for any number of workers.
    """
    from tqdm.auto import tqdm

    maze, task = _variant_entry(variant)
    variant = variant.lower()
    dataset_id = dataset_id or antmaze_dataset_id(variant)
    num_steps = int(num_steps if num_steps is not None else NAVIGATOR_NUM_STEPS)
    episode_steps = int(episode_steps)
    if num_steps <= 0 or episode_steps <= 0:
        raise ValueError("num_steps and episode_steps must be positive")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not force and is_complete(dataset_id):
        if _stored_generator_version(dataset_id) == _NAVIGATOR_VERSION:
            return dataset_id
    policy = ant_policy_path(policy_dir)
    actor, meta = load_ant_policy(policy)

    # groups of _NUM_ENVS episodes (stepped side by side) are drawn in order until their
    # steps fill num_steps (episodes that end with a flip are shorter); the last episode is
    # cut to fit. Each group is a function of its index only: any number of workers gives
    # the same data.
    group_lengths = [episode_steps] * _NUM_ENVS
    buffers = []
    steps_at_goal = flipped = collected = 0
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        job = partial(
            _navigate_group, maze=maze, task=task, seed=seed, policy=str(policy), noise=noise
        )
    bar = tqdm(total=num_steps, disable=not progress, desc=f"antmaze {variant}", unit="step")
    try:
        first = 0
        while collected < num_steps:
            # one wave: a group per worker (no more than the missing steps can use)
            needed = -(-(num_steps - collected) // (episode_steps * _NUM_ENVS))
            starts = [first + g * _NUM_ENVS for g in range(max(1, min(workers, needed)))]
            if pool is not None:
                wave = pool.map(job, [(f, group_lengths) for f in starts])
            else:
                wave = (
                    _navigate_episodes(maze, task, group_lengths, seed, f, actor, noise)
                    for f in starts
                )
            for f, group_episodes in zip(starts, wave, strict=True):
                for j, ep in enumerate(group_episodes):
                    if collected >= num_steps:
                        break
                    length = min(len(ep["actions"]), num_steps - collected)
                    collected += length
                    flipped += int(ep["flipped"] and length == len(ep["actions"]))
                    steps_at_goal += int(np.sum(ep["success"][1 : length + 1]))
                    buffers.append(_episode_buffer(ep, f + j, seed, length))
                    bar.update(length)
            first = starts[-1] + _NUM_ENVS
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    env_id, start, goal, _ = _maze_entry(maze)
    params = {
        "generator": "torchrl_dmg.data.antmaze.generate_antmaze_navigator_dataset",
        "generator_version": _NAVIGATOR_VERSION,
        "variant": variant,
        "maze": maze,
        "task": task,
        "env_id": env_id,
        "num_steps": num_steps,
        "seed": seed,
        "episode_steps": episode_steps,
        "action_noise": noise,
        "waypoint_jitter": WAYPOINT_JITTER,
        "policy": policy.name,
        "policy_step": int(meta.get("step", -1)),
        "reset_cell": list(start),
        "goal_cell": list(goal),
        "steps_at_goal": steps_at_goal,
        "episodes": len(buffers),
        "episodes_ended_flipped": flipped,
    }
    description = (
        f"D4RL-style AntMaze data on {env_id} ({variant}: {task} task) made by "
        "torchrl_dmg: a goal-reaching SAC ant steered along jittered waypoints of shortest "
        f"maze paths, Gaussian action noise sigma={noise}, {num_steps} steps in episodes of "
        f"{episode_steps} (truncated, never terminated). Rewards are the evaluation task's "
        f"(sparse, goal cell {goal}); evaluation env: reset cell {start}, goal cell {goal}, "
        "terminated at the goal; ref scores 0 / 1, so the normalised score is the success "
        f"rate. Parameters: {params}."
    )
    env = make_antmaze_env(maze, max_episode_steps=episode_steps)
    eval_env = make_antmaze_eval_env(maze)
    try:
        _publish(
            dataset_id,
            buffers,
            env,
            eval_env,
            "goal-reaching SAC ant + waypoint navigator",
            description,
            params,
        )
    finally:
        eval_env.close()
        env.close()
    return dataset_id


def _episode_buffer(ep: dict[str, Any], index: int, seed: int, length: int):
    """Minari episode ``index`` from the first ``length`` steps of a navigated episode
    (the last one marked truncated: the episodes never terminate)."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    truncations = np.zeros(length, dtype=bool)
    truncations[-1] = True
    return EpisodeBuffer(
        id=index,
        seed=seed + index,
        observations={k: np.stack(v[: length + 1]) for k, v in ep["observations"].items()},
        actions=np.stack(ep["actions"][:length]),
        rewards=np.asarray(ep["rewards"][:length], dtype=np.float64),
        terminations=np.zeros(length, dtype=bool),
        truncations=truncations,
        infos={
            "success": np.asarray(ep["success"][: length + 1]),
            "commanded_goal": np.stack(ep["commanded_goal"][: length + 1]),
        },
    )


def _navigate_group(group, *, maze, task, seed, policy, noise):
    """:func:`_navigate_episodes` of ``group = (first episode, lengths)`` in a worker
    process, with the actor loaded from ``policy`` (once per process)."""
    import torch

    from torchrl_dmg.behaviour import load_behaviour_actor

    torch.set_num_threads(1)
    cached = _WORKER_ACTOR.get(policy)
    if cached is None:
        cached = _WORKER_ACTOR[policy] = load_behaviour_actor(policy)[0]
    first, lengths = group
    return _navigate_episodes(maze, task, lengths, seed, first, cached, noise)


_WORKER_ACTOR: dict[str, Any] = {}


def navigator_success(
    maze: str,
    *,
    episodes: int = 50,
    seed: int = 0,
    noise: float = ACTION_NOISE,
    policy_dir: str | os.PathLike | None = None,
    actor=None,
) -> dict[str, float]:
    """Success rate of the navigator on the maze's evaluation task: the evaluation env
    (reset cell to goal cell, its time limit: 700 steps in umaze, 1000 otherwise),
    commanded straight to the evaluation goal, with ``noise`` on the actions as in the
    datasets. Episode ``i`` is seeded ``seed + i``.

    Returns ``success_rate`` (0..1), ``episodes``, ``mean_steps`` (successes only; None
    without any) and ``flips`` (episodes that ended with the ant on its back).
    """
    if actor is None:
        actor = load_ant_policy(ant_policy_path(policy_dir))[0]
    horizon = _maze_entry(maze)[3]
    successes, steps_taken = [], []
    flips = 0
    for first in range(0, episodes, _NUM_ENVS):
        n = min(_NUM_ENVS, episodes - first)
        ants = [_NavigatedAnt(maze, "fixed", horizon, continuing=False) for _ in range(n)]
        try:
            for j, ant in enumerate(ants):
                i = first + j
                ant.reset(seed + i, (seed, i), to_eval_goal=True)
            done_at = [0] * n
            live = list(range(n))
            for t in range(horizon):
                if not live:
                    break
                actions = _noisy_actions(actor, [ants[j] for j in live], noise)
                still = []
                for j, action in zip(live, actions, strict=True):
                    _, _, terminated, _, info = ants[j].step(action, recommand=False)
                    if terminated or info["success"]:
                        done_at[j] = t + 1
                    elif ants[j].flipped:  # it cannot get up: a failure
                        flips += 1
                    else:
                        still.append(j)
                live = still
            successes += [d > 0 for d in done_at]
            steps_taken += [d for d in done_at if d > 0]
        finally:
            for ant in ants:
                ant.env.close()
    return {
        "success_rate": float(np.mean(successes)),
        "episodes": int(episodes),
        "mean_steps": float(np.mean(steps_taken)) if steps_taken else None,
        "flips": flips,
    }


def ship_ant_policy(
    run_dir: str | os.PathLike,
    *,
    policy_dir: str | os.PathLike | None = None,
    candidates: int = 3,
    episodes: int = 50,
    mazes: Sequence[str] = ("umaze", "medium", "large"),
    seed: int = 1_000,
    training: str | None = None,
) -> dict[str, Any]:
    """Pick and ship the goal-reaching ant of a ``recipes/train_behaviour.py env=antgoal``
    run: the ``candidates`` checkpoints with the best evaluation return are measured on
    open-space target reaching (:func:`torchrl_dmg.antgoal.goal_reaching_success`) and as
    the navigator of ``mazes[0]`` (:func:`navigator_success`), ``episodes`` episodes each.
    The one that reaches that maze's goal most often (the ant is there to make maze data;
    ties: open-space success, then the later step) is written to
    ``policy_dir/antgoal.pt`` and measured as the navigator of the other mazes too. The
    record goes to ``policies.json`` under ``"antgoal"``, with every candidate's figures
    and ``training`` (how the run was made: its command and machine) when given."""

    import torch

    from torchrl_dmg.antgoal import goal_reaching_success
    from torchrl_dmg.behaviour import evaluated_checkpoints, load_behaviour_actor
    from torchrl_dmg.datagen.locomotion import POLICY_DIR, update_policy_record
    from torchrl_dmg.recording import atomic_write

    out = Path(policy_dir or POLICY_DIR)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluated_checkpoints(run_dir)
    paths = {step: path for step, _, path in rows}
    best = sorted(rows, key=lambda r: r[1], reverse=True)[: max(1, candidates)]
    first_maze = mazes[0]
    measured = []
    for step, ret, path in best:
        actor, _ = load_behaviour_actor(path)
        success = goal_reaching_success(actor, episodes=episodes, seed=seed)
        nav = navigator_success(first_maze, episodes=episodes, seed=seed, actor=actor)
        measured.append((nav["success_rate"], success["success_rate"], step, ret, success, nav))
        print(
            f"[ship] antgoal step {step} (eval return {ret:.1f}): navigator {first_maze} "
            f"{100 * nav['success_rate']:.0f}% ({nav['flips']} flips), open-space success "
            f"{100 * success['success_rate']:.0f}% of {episodes}"
        )
    _, _, step, ret, success, first_nav = max(measured, key=lambda m: m[:3])
    ckpt = torch.load(paths[step], map_location="cpu", weights_only=False)
    target = out / "antgoal.pt"
    atomic_write(target, lambda f: torch.save(ckpt, f))
    actor, _ = load_behaviour_actor(target)
    entry: dict[str, Any] = {
        "env": ckpt["env"],
        "checkpoint_step": step,
        "run_steps": rows[-1][0],
        "eval_return_mean": ret,
        "open_space": {
            **success,
            "target_distance": [2.0, 6.0],
            "max_steps": 300,
            "deterministic": True,
        },
        "navigator": {},
        "candidates": [
            {
                "step": m[2],
                "eval_return_mean": m[3],
                f"navigator_{first_maze}": m[0],
                "open_space": m[1],
            }
            for m in measured
        ],
    }
    if training:
        entry["training"] = training
    for maze in mazes:
        nav = (
            first_nav
            if maze == first_maze
            else navigator_success(maze, episodes=episodes, seed=seed, actor=actor)
        )
        entry["navigator"][maze] = {**nav, "action_noise": ACTION_NOISE}
        print(
            f"[ship] navigator {maze}: {100 * nav['success_rate']:.0f}% of {episodes} "
            f"(mean steps of the successes: {nav['mean_steps']}, flips: {nav['flips']})"
        )
    update_policy_record({"antgoal": entry}, out)
    return entry


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Ship the goal-reaching ant of a `train_behaviour.py env=antgoal` run."
    )
    parser.add_argument("run_dir")
    parser.add_argument("--policy-dir", default=None)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument(
        "--mazes", nargs="+", default=["umaze", "medium", "large"], help="the first one picks"
    )
    parser.add_argument("--training", default=None, help="how the run was made (recorded)")
    args = parser.parse_args()
    ship_ant_policy(
        args.run_dir,
        policy_dir=args.policy_dir,
        episodes=args.episodes,
        candidates=args.candidates,
        mazes=args.mazes,
        training=args.training,
    )

"""Steering the shipped goal-reaching ant through a maze: the shipped policy, a waypoint
navigator over the maze grid (BFS, jittered waypoints, noisy commanded goals) and the
batched episodes it drives.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from torchrl_dmg.datagen.antmaze import goal_task
from torchrl_dmg.datagen.antmaze.goal_task import ANTGOAL_ID, RETIRED_ANTGOAL_IDS
from torchrl_dmg.datagen.antmaze.mazes import make_antmaze_env, make_antmaze_eval_env, task_cells
from torchrl_dmg.datagen.behaviour.policy import PortableActions, load_behaviour_actor
from torchrl_dmg.datagen.locomotion import POLICY_DIR
from torchrl_dmg.datagen.maze import (
    MazeGrid,
)

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


def ant_policy_path(policy_dir: str | os.PathLike | None = None) -> Path:
    """Path of the shipped goal-reaching ant policy (``antgoal.pt``)."""

    path = Path(policy_dir or POLICY_DIR) / "antgoal.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"No goal-reaching ant policy at {path}: the local AntMaze datasets are made with "
            "it. Train one with `python recipes/train_behaviour.py env=antgoal` and ship it "
            "with torchrl_dmg.datagen.antmaze.ant_policy.ship_ant_policy (docs/datasets.md, "
            "'AntMaze datasets'); meanwhile fine-tuning runs offline on the local PointMaze "
            "data: `python recipes/finetune.py dataset=local/pointmaze/medium-v0 "
            "family=pointmaze`."
        )
    return path


def load_ant_policy(path: str | os.PathLike):
    """The goal-reaching ant at ``path`` (``(actor, checkpoint meta)``); one trained on
    Gymnasium's retired gear-150 ant fails with a line naming the task to train instead."""

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


class NavigatedAnt:
    """One AntMaze env + its navigator + the episode's random stream (goals, jitter, noise)."""

    def __init__(self, maze: str, task: str, episode_steps: int, continuing: bool = True):
        make = make_antmaze_env if continuing else make_antmaze_eval_env
        self.env = make(maze, max_episode_steps=episode_steps)
        self.base = self.env.unwrapped
        self.grid = MazeGrid(self.base.maze.maze_map, self.base.maze.maze_size_scaling)
        self.starts, self.goals = task_cells(maze, task, self.grid)
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
        xy = self.obs["achieved_goal"]
        return goal_task.policy_observation(self.obs["observation"], xy, self.nav.waypoint(xy))

    def step(self, action: np.ndarray, recommand: bool = True):
        self.obs, reward, terminated, truncated, info = self.base.step(action)
        if recommand and np.linalg.norm(self.obs["achieved_goal"] - self.commanded) <= (
            GOAL_REACHED_RADIUS
        ):
            self._command()
        return self.obs, reward, terminated, truncated, info

    @property
    def flipped(self) -> bool:
        """The ant lies on its back (:func:`torchrl_dmg.datagen.antmaze.goal_task.is_flipped`): it cannot get
        up, its episode is over."""
        return bool(goal_task.is_flipped(self.obs["observation"]))


#: Each actor's :class:`PortableActions`, built at its first use.
_PORTABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def noisy_actions(actor, ants: list[NavigatedAnt], noise: float) -> np.ndarray:
    """The ants' actions: the actor's deterministic action, the same bits on every machine
    (:class:`~torchrl_dmg.datagen.behaviour.policy.PortableActions`: the datasets must not
    depend on the CPU that made them), plus each ant's ``N(0, noise^2)``, clipped to
    [-1, 1]."""
    portable = _PORTABLE.get(actor)
    if portable is None:
        portable = _PORTABLE[actor] = PortableActions(actor)
    actions = portable(np.stack([a.policy_input() for a in ants])).astype(np.float64)
    if noise > 0:
        actions = actions + np.stack([a.rng.normal(0.0, noise, actions.shape[1]) for a in ants])
    return np.clip(actions, -1.0, 1.0).astype(np.float32)

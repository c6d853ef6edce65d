"""The local AntMaze mazes: D4RL's ant in gymnasium-robotics' mazes (ids, reset and goal
cells, episode limits), their data-collection and evaluation envs, the dataset variants
and their ids, and how an AntMaze dataset is published (success-rate reference scores).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from torchrl_dmg.data.local import publish_dataset
from torchrl_dmg.datagen.antmaze.d4rl_ant import D4RL_ANTMAZE_IDS, register_d4rl_antmaze
from torchrl_dmg.datagen.maze import (
    MazeGrid,
    fixed_task_kwargs,
    maze_entry,
)

#: maze name -> (env id, reset cell, goal cell, episode limit). The envs are D4RL's ant in
#: gymnasium-robotics' mazes (:mod:`torchrl_dmg.datagen.antmaze.d4rl_ant`); cells are D4RL AntMaze's
#: evaluation task (opposite ends of the maze); limits are D4RL's (700 / 1000 / 1000).
ANTMAZE_MAZES: dict[str, tuple[str, tuple[int, int], tuple[int, int], int]] = {
    "umaze": (D4RL_ANTMAZE_IDS["umaze"][0], (3, 1), (1, 1), D4RL_ANTMAZE_IDS["umaze"][1]),
    "medium": (D4RL_ANTMAZE_IDS["medium"][0], (1, 1), (6, 6), D4RL_ANTMAZE_IDS["medium"][1]),
    "large": (D4RL_ANTMAZE_IDS["large"][0], (1, 1), (7, 9), D4RL_ANTMAZE_IDS["large"][1]),
}


#: Version of the local AntMaze dataset ids (``local/antmaze/<variant>-v3``). v2: the
#: navigator's flip-ending episodes are cut back to their last upright state (v1 kept the
#: tumble, and the critics diverged bootstrapping from it). v3: the ant's actions are the
#: same bits on every machine (:class:`~torchrl_dmg.datagen.behaviour.policy.PortableActions`;
#: v2's came from a float32 BLAS matmul, and a Xeon and an AMD EPYC made different data).
DATASET_VERSION = 3


def antmaze_entry(maze: str) -> tuple[str, tuple[int, int], tuple[int, int], int]:
    """``(env id, reset cell, goal cell, episode limit)`` of ``maze``."""
    return maze_entry(ANTMAZE_MAZES, maze)


def antmaze_env_id(maze: str) -> str:
    """Registered id of the maze, e.g. ``"umaze" -> "torchrl_dmg/AntMazeD4RL_UMaze-v0"``."""
    return antmaze_entry(maze)[0]


def antmaze_env_kwargs(maze: str, max_episode_steps: int | None = None) -> dict[str, Any]:
    """``gym.make`` keyword arguments of the data-collection (and online) env: fixed reset and
    goal cells, sparse reward, continuing task, the goal never moves."""
    _, start, goal, horizon = antmaze_entry(maze)
    return fixed_task_kwargs(maze, start, goal, max_episode_steps or horizon)


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


def publish_antmaze(
    dataset_id: str,
    buffers: list,
    env: gym.Env,
    maze: str,
    algorithm_name: str,
    description: str,
    params: dict[str, Any],
) -> None:
    """Publish an AntMaze dataset collected in ``env`` (closed afterwards), with the maze's
    evaluation env and success-rate reference scores (0 / 1)."""
    eval_env = make_antmaze_eval_env(maze)
    try:
        publish_dataset(
            dataset_id,
            buffers,
            env_spec=env.spec,
            eval_env_spec=eval_env.spec,
            algorithm_name=algorithm_name,
            code_permalink="torchrl_dmg/datagen/antmaze/datasets.py",
            ref_min_score=0.0,
            ref_max_score=1.0,
            description=description,
            generator_params=params,
            requirements=["gymnasium-robotics>=1.4,<1.5", "torchrl-dmg"],
        )
    finally:
        eval_env.close()
        env.close()


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


def variant_entry(variant: str) -> tuple[str, str]:
    try:
        return ANTMAZE_VARIANTS[variant.lower()]
    except KeyError:
        raise ValueError(
            f"unknown AntMaze dataset {variant!r}; expected one of {list(ANTMAZE_VARIANTS)}"
        ) from None


def antmaze_dataset_id(variant: str, goal_rule: str = "next") -> str:
    """Local Minari id of a navigator dataset, e.g. ``local/antmaze/medium-play-v3``
    (mirrors Minari's ``D4RL/antmaze/medium-play-v1``); made under D4RL's one goal per
    episode (``goal_rule="onegoal"``), ``local/antmaze/medium-play-onegoal-v3``."""
    variant_entry(variant)
    rule = "" if goal_rule == "next" else f"-{goal_rule}"
    return f"local/antmaze/{variant.lower()}{rule}-v{DATASET_VERSION}"


def task_cells(maze: str, task: str, grid: MazeGrid) -> tuple[list, list]:
    """(start cells, commanded-goal cells) of a task."""
    _, start, goal, _ = antmaze_entry(maze)
    if task == "fixed":
        return [start], [goal]
    if task == "play":
        return list(PLAY_CELLS[maze]), list(PLAY_CELLS[maze])
    cells = list(grid.free_cells)
    return cells, cells

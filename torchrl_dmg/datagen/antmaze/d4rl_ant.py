"""AntMaze with D4RL's ant: the maze envs every local AntMaze dataset is made on.

The paper's AntMaze is D4RL antmaze-v2, whose ant drives its 8 motors with ``gear 30`` at
``timestep 0.02`` (0.1 s per env step at ``frame_skip 5``; OGBench's ant is the same).
gymnasium-robotics' AntMaze uses Gymnasium's Ant instead (``gear 150``, ``timestep 0.01``:
five times the torque at twice the control rate), which flips over under smoothed random
actions in 18 of 20 episodes where D4RL's ant flips in none (``../shared/dmg-spec.md``).
So the local AntMaze benchmark runs gymnasium-robotics' ``AntMaze_*-v5`` on the model file
shipped here (:data:`ANT_XML`: Gymnasium's ant with D4RL's actuation; bodies, joints,
ranges and the observation layout unchanged), without contact forces in the observation
(the ant state stays 27 numbers, the layout of ``AntMaze_*-v4`` and of Minari's
``D4RL/antmaze/*-v1``).

The envs are registered under ids of this project (:data:`D4RL_ANTMAZE_IDS`,
:func:`register_d4rl_antmaze`), so a dataset's stored env spec names an id, never a file
path: it loads on another machine, in vector-env workers and after pickling
(``AntMaze_*-v5``'s own ``EzPickle`` arguments drop ``xml_file``, so a pickled copy of a
plain ``AntMaze_*-v5`` with ``xml_file=`` would rebuild Gymnasium's ant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.utils import EzPickle
from gymnasium_robotics.envs.maze import maps
from gymnasium_robotics.envs.maze.ant_maze_v5 import AntMazeEnv

__all__ = [
    "ANT_XML",
    "D4RL_ANTMAZE_IDS",
    "D4RL_ANT_GEAR",
    "D4RL_ANT_TIMESTEP",
    "D4RLAntMazeEnv",
    "register_d4rl_antmaze",
]

#: The shipped model file: Gymnasium's ant.xml with ``gear 30`` and ``timestep 0.02``.
ANT_XML = Path(__file__).parents[1] / "assets" / "ant_d4rl.xml"
D4RL_ANT_GEAR = 30.0
D4RL_ANT_TIMESTEP = 0.02

#: maze -> (registered id, D4RL's episode limit). umaze 700 steps, medium and large 1000.
D4RL_ANTMAZE_IDS: dict[str, tuple[str, int]] = {
    "umaze": ("torchrl_dmg/AntMazeD4RL_UMaze-v0", 700),
    "medium": ("torchrl_dmg/AntMazeD4RL_Medium-v0", 1000),
    "large": ("torchrl_dmg/AntMazeD4RL_Large-v0", 1000),
}
_DEFAULT_MAPS = {"umaze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}


class D4RLAntMazeEnv(AntMazeEnv):
    """gymnasium-robotics ``AntMaze-v5`` on :data:`ANT_XML` with a 27-number ant state.

    Takes ``AntMaze-v5``'s arguments except ``xml_file`` and
    ``include_cfrc_ext_in_observation``, which are fixed; pickles and unpickles as itself.
    """

    def __init__(
        self,
        maze_map: list[list[Any]] = maps.U_MAZE,
        reward_type: str = "sparse",
        continuing_task: bool = True,
        reset_target: bool = False,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        for fixed in ("xml_file", "include_cfrc_ext_in_observation"):
            if fixed in kwargs:
                raise TypeError(f"D4RLAntMazeEnv fixes {fixed}; do not pass it")
        super().__init__(
            render_mode=render_mode,
            maze_map=maze_map,
            reward_type=reward_type,
            continuing_task=continuing_task,
            reset_target=reset_target,
            xml_file=str(ANT_XML),
            include_cfrc_ext_in_observation=False,
            **kwargs,
        )
        # rebuild as this class (AntMazeEnv's own EzPickle arguments would drop the model)
        EzPickle.__init__(
            self,
            maze_map=maze_map,
            reward_type=reward_type,
            continuing_task=continuing_task,
            reset_target=reset_target,
            render_mode=render_mode,
            **kwargs,
        )


def register_d4rl_antmaze() -> None:
    """Register :data:`D4RL_ANTMAZE_IDS` with Gymnasium (idempotent; call before
    ``gym.make`` of one of them)."""
    for maze, (env_id, limit) in D4RL_ANTMAZE_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point="torchrl_dmg.datagen.antmaze.d4rl_ant:D4RLAntMazeEnv",
                max_episode_steps=limit,
                kwargs={"maze_map": _DEFAULT_MAPS[maze]},
            )

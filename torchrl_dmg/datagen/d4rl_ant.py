"""``torchrl_dmg.datagen.d4rl_ant:D4RLAntMazeEnv``: the gym entry point that the env spec of a
local AntMaze dataset on disk may name (Minari rebuilds a dataset's env from its stored
spec), kept so that every such dataset loads. The env itself is
:class:`torchrl_dmg.datagen.antmaze.d4rl_ant.D4RLAntMazeEnv`; new datasets name that."""

from torchrl_dmg.datagen.antmaze.d4rl_ant import D4RLAntMazeEnv

__all__ = ["D4RLAntMazeEnv"]

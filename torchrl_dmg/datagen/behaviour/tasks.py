"""The tasks a behaviour policy is trained on: the D4RL locomotion tasks (Gymnasium v5) and
the goal-reaching ant that steers AntMaze data collection; their names, D4RL's scores, and
the transition symmetries a task offers for augmenting SAC's replay buffer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from torchrl_dmg.data.scores import D4RL_REF_SCORES  # D4RL's (random, expert) returns
from torchrl_dmg.datagen.antmaze.goal_task import (
    ANTGOAL_ID,
    ANTGOAL_UNIFORM_ID,
    mirror_transitions,
    register_antgoal,
)

__all__ = [
    "D4RL_REF_SCORES",
    "ENV_IDS",
    "MIRROR_AUGMENTATIONS",
    "TASK_IDS",
    "d4rl_normalized_score",
    "env_short_name",
    "resolve_env_name",
]

#: Gymnasium v5 ids of the D4RL locomotion tasks, by short name.
ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
}

#: Every task train_sac can learn: the locomotion tasks and the goal-reaching ant
#: (:mod:`torchrl_dmg.datagen.antmaze.goal_task`, registered on first use).
TASK_IDS: dict[str, str] = {
    **ENV_IDS,
    "antgoal": ANTGOAL_ID,
    "antgoal-uniform": ANTGOAL_UNIFORM_ID,  # no targets-ahead share
}

#: Tasks whose every transition has an equally valid mirror image, and the function that
#: makes the images of transition-store rows (SAC's ``mirror_augment``): the ant's task
#: provides its own.
MIRROR_AUGMENTATIONS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
    ANTGOAL_ID: mirror_transitions,
    ANTGOAL_UNIFORM_ID: mirror_transitions,
}


def resolve_env_name(env_name: str) -> str:
    """The Gymnasium id for a short name (``"hopper"``, ``"antgoal"``) or an id
    (``"Hopper-v5"``); the goal-reaching ant's id is registered on the way."""
    env_id = TASK_IDS.get(env_name, env_name)
    if env_id.startswith("torchrl_dmg/AntGoal") and env_id not in TASK_IDS.values():
        raise ValueError(
            f"{env_id} was the goal-reaching task of Gymnasium's gear-150 ant, retired: the "
            f"AntMaze ant is D4RL's (torchrl_dmg.datagen.antmaze.d4rl_ant); use env=antgoal "
            f"({TASK_IDS['antgoal']}) or env=antgoal-uniform ({TASK_IDS['antgoal-uniform']})."
        )
    if env_id not in TASK_IDS.values():
        allowed = ", ".join(f"{k} ({v})" for k, v in TASK_IDS.items())
        raise ValueError(f"Unknown environment {env_name!r}; allowed: {allowed}.")
    if env_id.startswith("torchrl_dmg/AntGoal"):
        register_antgoal()  # idempotent
    return env_id


def env_short_name(env_name: str) -> str:
    env_id = resolve_env_name(env_name)
    return next(k for k, v in TASK_IDS.items() if v == env_id)


def d4rl_normalized_score(env_name: str, returns: float | np.ndarray) -> float | np.ndarray:
    """D4RL's normalised score: 0 = random policy, 100 = D4RL's expert."""
    low, high = D4RL_REF_SCORES[env_short_name(env_name)]
    return 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)

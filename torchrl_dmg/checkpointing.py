"""Checkpoint safety and exact resume, shared by every recipe.

* :func:`restart_collection`: the online env restarts a seeded episode at every checkpoint,
  in an uninterrupted run exactly as in a resumed one (an env's internal state is not
  saved), so a killed and resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from torchrl_dmg.training import rng_state, set_rng_state


def restart_collection(collector: Any, seed: int) -> None:
    """Start a new episode in ``collector``'s env, seeded with ``seed``, leaving the global
    random generators as they were.

    A resumed run cannot continue the episode that was running when its checkpoint was
    written (the simulator's state is not in the checkpoint): it starts a new one from
    ``seed``. An uninterrupted run calls this right after each checkpoint, so that both
    runs collect the same transitions; the global RNG state (exploration noise, batch
    sampling) is restored afterwards, as the resumed run restores it from the checkpoint.
    """
    state = rng_state()
    collector.env.set_seed(seed)
    collector.reset()
    set_rng_state(state)


def seed_before_collector(env: Any, seed: int) -> None:
    """Seed ``env`` before a collector is built on it: the collector resets the env in its
    constructor, and an unseeded first reset draws its start state from OS entropy (two
    runs with one seed then differ from the first online step)."""
    state = rng_state()
    env.set_seed(seed)
    set_rng_state(state)

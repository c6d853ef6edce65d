"""The ``local/...`` dataset ids this project makes, and who makes each one.

Loading (:mod:`torchrl_dmg.data`) never generates; a recipe that wants a dataset calls
:func:`ensure_dataset`, which makes a missing (or incomplete) local one first and then
opens it the way the data layer does (a complete local copy, else Minari's server).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from torchrl_dmg.data.local import dataset_lock, is_complete, validate_dataset_id
from torchrl_dmg.data.offline import DatasetUnavailableError, open_dataset
from torchrl_dmg.datagen.antmaze.datasets import (
    RANDOM_DATASET_VERSION,
    generate_antmaze_dataset,
    generate_antmaze_navigator_dataset,
)
from torchrl_dmg.datagen.antmaze.mazes import ANTMAZE_VARIANTS, DATASET_VERSION
from torchrl_dmg.datagen.locomotion import generate_locomotion_dataset
from torchrl_dmg.datagen.pointmaze import generate_pointmaze_dataset

__all__ = ["ensure_dataset", "generator_for", "local_dataset_ids", "make_if_missing"]

#: the navigator datasets' variants as a regex alternation (umaze|umaze-diverse|...)
_NAVIGATOR_VARIANTS = "|".join(map(re.escape, ANTMAZE_VARIANTS))

#: processes that step a navigator dataset made on first use: one per core, up to 8 (the
#: data are the same for any number; ``make_dataset``'s ``workers`` sets it there)
FIRST_USE_WORKERS = min(os.cpu_count() or 1, 8)


def _navigator_on_first_use(**kwargs) -> str:
    return generate_antmaze_navigator_dataset(workers=FIRST_USE_WORKERS, **kwargs)


# Local datasets the project can make itself: id pattern -> generator, called with the
# pattern's named groups as keyword arguments.
_GENERATORS: tuple[tuple[re.Pattern, Callable[..., str]], ...] = (
    (
        re.compile(r"^local/pointmaze/(?P<maze>umaze|medium|large)-v0$"),
        generate_pointmaze_dataset,
    ),
    (
        re.compile(
            rf"^local/antmaze/(?P<maze>umaze|medium|large)-random-v{RANDOM_DATASET_VERSION}$"
        ),
        generate_antmaze_dataset,
    ),
    (
        re.compile(
            rf"^local/antmaze/(?P<variant>{_NAVIGATOR_VARIANTS})"
            rf"(?:-(?P<goal_rule>onegoal))?-v{DATASET_VERSION}$"
        ),
        _navigator_on_first_use,
    ),
    (
        re.compile(
            r"^local/mujoco/(?P<env>hopper|halfcheetah|walker2d)/"
            r"(?P<quality>random|medium|medium-replay|expert|medium-expert)-v0$"
        ),
        generate_locomotion_dataset,
    ),
)


#: local AntMaze ids of the gear-150 ant (v0), which flipped over in half of its maze episodes
_RETIRED_V0 = re.compile(r"^local/antmaze/(?P<name>[a-z-]+)-v0$")
#: the navigator's v1 data, which kept the ant's tumble at the end of a flip-ending episode
_RETIRED_V1 = re.compile(rf"^local/antmaze/(?P<name>(?:{_NAVIGATOR_VARIANTS})(?:-onegoal)?)-v1$")
#: the navigator's v2 data, whose ant acted through a float32 BLAS matmul: other CPUs, other
#: data (a stored copy is still used; none is made)
_RETIRED_V2 = re.compile(rf"^local/antmaze/(?P<name>(?:{_NAVIGATOR_VARIANTS})(?:-onegoal)?)-v2$")


def generator_for(dataset_id: str, progress: bool) -> Callable[[], str] | None:
    """A call that makes ``dataset_id`` (and returns at once when an up-to-date complete
    copy exists), or ``None`` for an id this project does not make; a retired id is an
    error naming its successor."""
    current = f"-v{DATASET_VERSION}"
    retired = _RETIRED_V0.match(dataset_id)
    if retired:
        raise DatasetUnavailableError(
            f"{dataset_id} was made with Gymnasium's gear-150 ant (it flipped over in half "
            f"of its maze episodes) and is retired; use local/antmaze/{retired['name']}"
            f"{current} (D4RL's ant), made on first use"
        )
    retired = _RETIRED_V1.match(dataset_id)
    if retired:
        raise DatasetUnavailableError(
            f"{dataset_id} kept the ant's tumble at the end of its flip-ending episodes, from "
            "which the critics bootstrap and diverge; it is retired: use "
            f"local/antmaze/{retired['name']}{current} (the tumbles cut), made on first use"
        )
    retired = _RETIRED_V2.match(dataset_id)
    if retired and is_complete(dataset_id):  # a stored copy still serves its own runs
        return lambda: dataset_id
    if retired:
        raise DatasetUnavailableError(
            f"{dataset_id}'s data depended on the CPU that made them (the ant's actions came "
            "from a float32 BLAS matmul) and it is retired: use "
            f"local/antmaze/{retired['name']}{current} (the same data on every machine), made "
            "on first use"
        )
    for pattern, generate in _GENERATORS:
        match = pattern.match(dataset_id)
        if match:
            kwargs = match.groupdict()
            return lambda: generate(**kwargs, dataset_id=dataset_id, progress=progress)
    return None


def local_dataset_ids() -> list[str]:
    """Every ``local/...`` id this project can generate (the patterns of its generators
    spelled out)."""
    ids = [f"local/pointmaze/{m}-v0" for m in ("umaze", "medium", "large")]
    ids += [
        f"local/antmaze/{v}{rule}-v{DATASET_VERSION}"
        for rule in ("", "-onegoal")
        for v in ANTMAZE_VARIANTS
    ]
    ids += [
        f"local/antmaze/{m}-random-v{RANDOM_DATASET_VERSION}" for m in ("umaze", "medium", "large")
    ]
    ids += [
        f"local/mujoco/{e}/{q}-v0"
        for e in ("hopper", "halfcheetah", "walker2d")
        for q in ("random", "medium", "medium-replay", "expert", "medium-expert")
    ]
    return ids


def make_if_missing(dataset_id: str, *, progress: bool = True) -> None:
    """Make ``dataset_id`` when this project makes it and no complete, up-to-date copy is
    stored (generated once; a partial one is rebuilt). An unknown ``local/`` id is an error
    that lists the ids this project makes; any other id is left to the loader."""
    validate_dataset_id(dataset_id)  # before any file system or network action
    generator = generator_for(dataset_id, progress)
    if generator is not None:
        with dataset_lock(dataset_id):  # a second maker waits, then reuses the first's
            generator()
    elif dataset_id.startswith("local/"):
        raise DatasetUnavailableError(
            f"unknown local dataset {dataset_id!r}: it is not stored locally and this project "
            f"cannot make it; the ones this project makes are {', '.join(local_dataset_ids())}"
        )


def ensure_dataset(dataset_id: str, *, download: bool = True, progress: bool = True):
    """The :class:`minari.MinariDataset` for ``dataset_id``, made available first: a
    dataset this project generates (``local/pointmaze/<maze>-v0``,
    ``local/mujoco/<env>/<quality>-v0``, ``local/antmaze/<variant>-v3``, its D4RL-goal-rule
    twin ``local/antmaze/<variant>-onegoal-v3`` and the placeholder
    ``local/antmaze/<maze>-random-v1``) is made once (:func:`make_if_missing`); then
    :func:`torchrl_dmg.data.offline.open_dataset` (a complete local copy, or Minari's
    remote server with ``download=True``)."""
    make_if_missing(dataset_id, progress=progress)
    return open_dataset(dataset_id, download=download)

"""Local Minari storage helpers shared by every dataset generator.

Generated datasets must never be half-visible: a training run that finds
``<root>/<dataset_id>/data`` assumes it is whole, and TorchRL's
``MinariExperienceReplay(load_from_local_minari=True)`` reads the HDF5 file directly. So a
generator builds its dataset under a hidden temporary directory on the same filesystem as the
datasets root (hidden names are skipped by ``minari.list_local_datasets``), checks it, and only
then moves it into place with a rename. An exception or Ctrl-C anywhere before that leaves the
final path untouched.

The datasets root is resolved exactly as minari 0.5 does it
(``minari.storage.get_dataset_path``): ``$MINARI_DATASETS_PATH`` if set, else
``~/.minari/datasets``.

``MINARI_DATASETS_PATH`` is process-global, so :func:`building_dataset` is not thread-safe;
generators run in a single thread anyway.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import minari
from minari.storage import get_dataset_path

__all__ = [
    "InvalidDatasetIdError",
    "building_dataset",
    "dataset_lock",
    "dataset_path",
    "datasets_root",
    "is_complete",
    "minari_datasets_path",
    "remove_dataset",
    "validate_dataset_id",
]

_ENV_VAR = "MINARI_DATASETS_PATH"
_NAMESPACE_METADATA = "namespace_metadata.json"


# One path component of an id: letters, digits, '_', '.', '-' (no '..', no empty part).
_ID_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ID_VERSION = re.compile(r"-v\d+$")


class InvalidDatasetIdError(ValueError):
    """A dataset id that is not of Minari's form ``[namespace/...]name-vN``."""


def validate_dataset_id(dataset_id: object) -> str:
    """Return ``dataset_id`` if it is a well-formed Minari id, else raise one clear line.

    Checked before any file or network action, because an id maps to a directory under the
    datasets root and replacing a dataset deletes that directory: an empty id, ``/``, a
    bare namespace (``local``, ``local/pointmaze``), ``..`` or an absolute path would name
    the root or a folder holding other datasets. A well-formed id is
    ``namespace/.../name-vN``: non-empty parts of letters, digits, ``_``, ``.``, ``-``, not
    starting with ``.`` or ``-``, the last one ending in ``-v`` and a version number.
    """
    example = "e.g. dataset=local/pointmaze/medium-v0 or mujoco/hopper/medium-v0"
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise InvalidDatasetIdError(
            f"invalid dataset id {dataset_id!r}: give a Minari id [namespace/]name-vN ({example})"
        )
    parts = dataset_id.split("/")
    bad = [p for p in parts if not _ID_PART.match(p)]
    if bad:
        raise InvalidDatasetIdError(
            f"invalid dataset id {dataset_id!r}: part {bad[0]!r} is empty or has characters "
            f"other than letters, digits, '_', '.', '-' (or starts with '.'/'-'); {example}"
        )
    if not _ID_VERSION.search(parts[-1]):
        raise InvalidDatasetIdError(
            f"invalid dataset id {dataset_id!r}: a dataset id ends in a name with a version, "
            f"name-vN (a bare namespace names a folder of datasets, not one); {example}"
        )
    return dataset_id


def datasets_root() -> Path:
    """Root folder of the local Minari datasets (created if missing), as minari resolves it."""
    return Path(get_dataset_path()).absolute()


def dataset_path(dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """Directory of ``dataset_id`` (ids with slashes map to nested folders); the id is
    validated first (:func:`validate_dataset_id`), so the path is always one dataset's own
    directory strictly inside the root."""
    validate_dataset_id(dataset_id)
    base = Path(root) if root is not None else datasets_root()
    return base.joinpath(*dataset_id.split("/"))


@contextmanager
def minari_datasets_path(path: str | os.PathLike) -> Iterator[None]:
    """Temporarily point ``MINARI_DATASETS_PATH`` at ``path``; the previous value is restored."""
    prev = os.environ.get(_ENV_VAR)
    os.environ[_ENV_VAR] = str(path)
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop(_ENV_VAR, None)
        else:
            os.environ[_ENV_VAR] = prev


def is_complete(dataset_id: str, root: str | os.PathLike | None = None) -> bool:
    """Whether ``dataset_id`` exists locally and is whole.

    True only if the metadata loads through ``minari.load_dataset``, names this id, counts at
    least one episode, and its ``total_steps`` / ``total_episodes`` agree with the episodes in
    the data file (each episode's recorded step count and, for HDF5, its reward/action array
    lengths). Any error while checking means "not complete", so a crashed or half-copied
    dataset is rebuilt, not used.
    """
    base = Path(root) if root is not None else datasets_root()
    data_dir = dataset_path(dataset_id, base) / "data"
    if not (data_dir / "metadata.json").is_file():
        return False
    try:
        with minari_datasets_path(base):
            dataset = minari.load_dataset(dataset_id)
        storage = dataset.storage
        metadata = storage.metadata
        if metadata.get("dataset_id") != dataset_id:
            return False
        total_episodes = int(metadata["total_episodes"])
        total_steps = int(metadata["total_steps"])
        if total_episodes <= 0:
            return False
        if metadata.get("data_format") == "hdf5":
            return _hdf5_counts_match(data_dir / "main_data.hdf5", total_episodes, total_steps)
        episode_meta = list(storage.get_episode_metadata(range(total_episodes)))
        if len(episode_meta) != total_episodes:
            return False
        if sum(int(m["total_steps"]) for m in episode_meta) != total_steps:
            return False
        last = next(iter(storage.get_episodes([total_episodes - 1])))
        if len(last["rewards"]) != int(episode_meta[-1]["total_steps"]):
            return False
    except Exception:
        return False
    return True


def _hdf5_counts_match(path: Path, total_episodes: int, total_steps: int) -> bool:
    # Reading h5py attributes directly is ~5x faster than minari's per-episode metadata
    # generator, which matters for datasets with thousands of short episodes.

    with h5py.File(path, "r") as file:
        if len(file) != total_episodes:
            return False
        steps = 0
        for i in range(total_episodes):
            group = file[f"episode_{i}"]
            n = int(group.attrs["total_steps"])
            if int(group["rewards"].shape[0]) != n or int(group["actions"].shape[0]) != n:
                return False
            steps += n
    return steps == total_steps


def remove_dataset(dataset_id: str, root: str | os.PathLike | None = None) -> None:
    """Delete the local copy of ``dataset_id`` if present (no error when absent). Only that
    dataset's own directory: the id is validated, and a directory that holds no ``data/``
    folder and nothing else (a namespace, or a folder that holds more than one dataset's
    files) is never deleted."""
    path = dataset_path(dataset_id, root)
    if path.is_dir() and not path.is_symlink():
        others = sorted(p.name for p in path.iterdir() if p.name != "data")
        if others:
            raise InvalidDatasetIdError(
                f"refusing to delete {path}: besides a dataset's data/ it holds {others[:3]}; "
                "move that away by hand if it is yours"
            )
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_namespace_metadata(tmp_root: Path, root: Path, dataset_id: str) -> None:
    # minari.create_dataset_from_buffers writes namespace_metadata.json files for the id's
    # namespaces inside the temporary root; mirror any that the real root lacks so that
    # minari's namespace listing sees the same thing as if it had been created in place.
    parts = dataset_id.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        src = tmp_root.joinpath(*parts[:depth], _NAMESPACE_METADATA)
        dst = root.joinpath(*parts[:depth], _NAMESPACE_METADATA)
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        elif not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(json.dumps({}))


@contextmanager
def dataset_lock(
    dataset_id: str, root: str | os.PathLike | None = None, *, notify: bool = True
) -> Iterator[None]:
    """Hold an exclusive lock on making ``dataset_id`` (an ``flock`` on
    ``<root>/.locks/<id>.lock``; hidden, so Minari's listing skips it). A second process
    making the same dataset waits here (saying so once) and then finds the first one's
    complete copy instead of building its own. The lock goes with the process: a killed
    maker never leaves it held."""
    validate_dataset_id(dataset_id)
    base = Path(root) if root is not None else datasets_root()
    path = base / ".locks" / (dataset_id.replace("/", "__") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if notify:
                print(f"[data] waiting for another process making {dataset_id} ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def building_dataset(dataset_id: str, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Build ``dataset_id`` out of sight and publish it atomically.

    Inside the ``with`` block ``MINARI_DATASETS_PATH`` points at a fresh hidden directory
    ``<root>/.tmp-XXXX`` (same filesystem, so the final move is a rename); create the dataset
    there under the SAME id, e.g. with ``minari.create_dataset_from_buffers(dataset_id, ...)``.
    On a normal exit the result is checked with :func:`is_complete` and renamed to
    ``<root>/<dataset_id>``, replacing any previous copy (which stays in place until the new one
    is ready). On any exception, KeyboardInterrupt included, the temporary directory is deleted
    and the final path is left as it was. A stale *incomplete* final directory is deleted up
    front, so nothing half-built survives a rebuild attempt.

    Yields:
        the temporary datasets root.
    """
    validate_dataset_id(dataset_id)  # before any file is touched
    base = Path(root).absolute() if root is not None else datasets_root()
    base.mkdir(parents=True, exist_ok=True)
    final = dataset_path(dataset_id, base)
    if (final.exists() or final.is_symlink()) and not is_complete(dataset_id, base):
        remove_dataset(dataset_id, base)
    tmp_root = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    trash: Path | None = None
    try:
        with minari_datasets_path(tmp_root):
            yield tmp_root
        built = dataset_path(dataset_id, tmp_root)
        if not is_complete(dataset_id, tmp_root):
            raise RuntimeError(
                f"dataset {dataset_id!r} was not created (or is incomplete) in {tmp_root}"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():
            # Move the old copy aside first: os.replace cannot overwrite a non-empty dir.
            trash = Path(tempfile.mkdtemp(prefix=".old-", dir=base)) / "dataset"
            os.replace(final, trash)
        try:
            os.replace(built, final)
        except BaseException:
            if trash is not None and trash.exists() and not final.exists():
                os.replace(trash, final)  # put the previous copy back
            raise
        _copy_namespace_metadata(tmp_root, base, dataset_id)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash.parent, ignore_errors=True)


def publish_dataset(
    dataset_id: str,
    buffers: list,
    *,
    env_spec: Any,
    eval_env_spec: Any,
    algorithm_name: str,
    code_permalink: str,
    ref_min_score: float,
    ref_max_score: float,
    description: str,
    generator_params: dict[str, Any],
    requirements: list[str],
    num_episodes_average_score: int = 100,
) -> None:
    """Create a generated Minari dataset from episode buffers through
    :func:`building_dataset` (published only when whole), with the project's author fields
    and the generator's parameters stored in its metadata (``generator_params``)."""
    with building_dataset(dataset_id):
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env_spec,
            eval_env=eval_env_spec,
            algorithm_name=algorithm_name,
            author="torchrl_dmg",
            author_email="n/a",
            code_permalink=code_permalink,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            num_episodes_average_score=num_episodes_average_score,
            description=description,
            requirements=requirements,
        )
        dataset.storage.update_metadata({"generator_params": generator_params})


def stored_generator_params(dataset_id: str) -> dict[str, Any] | None:
    """The ``generator_params`` a local dataset was made with (``None``: no readable
    dataset; ``{}``: none recorded)."""
    try:
        return dict(minari.load_dataset(dataset_id).storage.metadata.get("generator_params", {}))
    except Exception:
        return None


def stored_generator_version(dataset_id: str) -> int | None:
    """The ``generator_version`` a local dataset was made with (``None``: none recorded, or
    no readable dataset): generators rebuild data made by an older version of themselves."""
    try:
        return int((stored_generator_params(dataset_id) or {}).get("generator_version"))
    except (TypeError, ValueError):
        return None

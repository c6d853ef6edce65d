"""Every transition a SAC behaviour run collects, kept on disk in collection order (D4RL's
medium-replay is that run's buffer until its medium checkpoint), and the conversions between
collector batches, stored rows and replay-buffer entries."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage

from torchrl_dmg.recording import write_json

__all__ = ["TransitionStore", "load_transitions", "replay_entries", "store_rows"]

#: the checkpoint file of TorchRL's ``TensorStorageCheckpointer``: the storage's length
LENGTH_FILE = "storage_metadata.json"


class TransitionStore:
    """Every transition collected, in order, in a TorchRL
    :class:`~torchrl.data.LazyMemmapStorage` whose memory-mapped files live in ``root``
    (TorchRL's checkpoint layout: ``meta.json`` and one ``<field>.memmap`` per field,
    ``capacity`` rows preallocated, sparse on disk; ``storage_metadata.json`` holds the
    length). Reopened with ``LazyMemmapStorage.loads``.

    A log of the earlier raw-binary format (``<field>.bin``, ``meta.json`` with a count) is
    converted on opening (the same rows, then swapped in as a grown store is).

    Crash safety: rows are written into the memory maps (and fsynced) first, then the
    length, atomically; a crash mid-append leaves rows past the length, overwritten by the
    next append. TorchRL's own ``dumps`` is not used after each append: it rewrites
    ``meta.json`` and ``storage_metadata.json`` in place (plain ``open(..., "w")``), so a
    ``kill -9`` inside it could leave the store unreadable; the length file is written in
    its format, atomically, instead. A resume takes its count from the atomically saved
    trainer state (:meth:`truncate`).
    """

    def __init__(
        self, root: str | os.PathLike, obs_dim: int, act_dim: int, *, capacity: int = 1_000_000
    ) -> None:
        self.root = Path(root)
        self.fields = {
            "observation": (torch.float32, (obs_dim,)),
            "action": (torch.float32, (act_dim,)),
            "reward": (torch.float32, ()),
            "next_observation": (torch.float32, (obs_dim,)),
            "terminated": (torch.bool, ()),
            "truncated": (torch.bool, ()),
            "step": (torch.int64, ()),
        }
        _finish_growth(self.root)
        if _is_legacy(self.root):  # converted once, in place
            rows = _read_legacy(self.root, None)
            saved = {k: tuple(v.shape[1:]) for k, v in rows.items()}
            if saved != {k: shape for k, (_, shape) in self.fields.items()}:
                raise ValueError(f"{self.root} holds transitions of another shape: {saved}.")
            data = self._as_tensordict(rows) if len(rows["step"]) else None
            self.storage = _swap_in(self.root, data, max(capacity, len(rows["step"])))
        elif (self.root / LENGTH_FILE).is_file():
            self.storage = _open_storage(self.root)
            first = self.storage.get(slice(0, 1))
            saved = {k: (v.dtype, tuple(v.shape[1:])) for k, v in first.items()}
            if saved != self.fields:
                raise ValueError(f"{self.root} holds transitions of another shape: {saved}.")
            if self.capacity < capacity:  # a resume to more steps than the run began with
                self.storage = _grow(self.root, self.storage, capacity)
        else:  # a fresh store (or one cut before its first length was written: empty)
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            self.storage = LazyMemmapStorage(capacity, scratch_dir=self.root, existsok=True)

    @property
    def capacity(self) -> int:
        return int(self.storage.max_size)

    def __len__(self) -> int:
        return len(self.storage)

    def _write_length(self, count: int) -> None:
        self.storage._len = count  # as TorchRL's checkpointer sets it on loads
        if self.storage.initialized:  # else no rows yet: nothing on disk to describe
            _write_length_file(self.root, count)

    def append(self, rows: dict[str, np.ndarray]) -> None:
        n, count = len(rows["step"]), len(self)
        if count + n > self.capacity:
            raise ValueError(
                f"{self.root} holds at most {self.capacity} transitions (the capacity it was "
                f"opened with); {count + n} asked for: open it with capacity >= {count + n}."
            )
        self.storage.set(torch.arange(count, count + n), self._as_tensordict(rows))
        _fsync(self.root)  # the rows reach the disk before the length does
        self._write_length(count + n)

    def _as_tensordict(self, rows: dict[str, np.ndarray]) -> TensorDict:
        n = len(rows["step"])
        return TensorDict(
            {
                name: torch.as_tensor(np.asarray(rows[name])).to(dtype).reshape(n, *shape)
                for name, (dtype, shape) in self.fields.items()
            },
            batch_size=[n],
        )

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` rows (a resume drops what came after its state)."""
        if count > len(self):
            raise ValueError(f"Cannot keep {count} transitions: only {len(self)} stored.")
        self._write_length(count)

    def mark_last_truncated(self) -> None:
        """Flag the last row as an episode cut (its episode does not go on after a resume)."""
        last = len(self) - 1
        if last < 0:
            return
        row = self.storage.get(last).clone()
        if not bool(row["terminated"]):
            row["truncated"] = torch.ones((), dtype=torch.bool)
            self.storage.set(last, row, set_cursor=False)  # in place: the length stays

    def read(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        if not self.storage.initialized:
            return {
                k: np.zeros((0, *shape), dtype=torch.empty((), dtype=dtype).numpy().dtype)
                for k, (dtype, shape) in self.fields.items()
            }
        return _rows(self.storage, start, stop)


def _rows(storage: LazyMemmapStorage, start: int, stop: int | None) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` (at most the stored ones) as NumPy arrays, copied out of the maps."""
    stop = len(storage) if stop is None else min(stop, len(storage))
    rows = storage.get(slice(start, max(start, stop)))
    return {k: v.numpy().copy() for k, v in rows.items()}


def _write_length_file(root: Path, count: int) -> None:
    """TorchRL's ``storage_metadata.json`` (what ``loads`` reads), written atomically."""
    write_json(root / LENGTH_FILE, {"metadata": {}, "is_pytree": False, "len": count})


def _fsync(root: Path) -> None:
    for path in root.glob("*.memmap"):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


def _grow(root: Path, storage: LazyMemmapStorage, capacity: int) -> LazyMemmapStorage:
    """The store copied into one of ``capacity`` rows (:func:`_swap_in`)."""
    count = len(storage)
    return _swap_in(root, storage.get(slice(0, count)) if count else None, capacity)


def _swap_in(root: Path, data: TensorDictBase | None, capacity: int) -> LazyMemmapStorage:
    """A storage of ``capacity`` rows holding ``data`` in place of ``root``'s: built whole
    in ``<root>.grow``, then renamed (:func:`_finish_growth` completes an interrupted swap)."""
    grow, old = _growth_dirs(root)
    shutil.rmtree(grow, ignore_errors=True)
    if data is None:  # nothing to keep
        shutil.rmtree(root)
        root.mkdir()
        return LazyMemmapStorage(capacity, scratch_dir=root, existsok=True)
    new = LazyMemmapStorage(capacity, scratch_dir=grow, existsok=True)
    new.set(torch.arange(data.shape[0]), data)
    _fsync(grow)
    _write_length_file(grow, data.shape[0])
    root.rename(old)
    grow.rename(root)
    shutil.rmtree(old)
    return _open_storage(root)


def _growth_dirs(root: Path) -> tuple[Path, Path]:
    return root.with_name(root.name + ".grow"), root.with_name(root.name + ".old")


def _finish_growth(root: Path) -> None:
    """After a crash inside :func:`_grow`: the new store if it was complete and already
    moved aside the old one, else the old one; the leftovers removed."""
    grow, old = _growth_dirs(root)
    if not root.exists() and (grow / LENGTH_FILE).is_file():
        grow.rename(root)
    shutil.rmtree(grow, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _open_storage(root: Path) -> LazyMemmapStorage:
    """The memory-mapped storage in ``root``, reopened by TorchRL (length included)."""
    capacity = TensorDict.load_memmap(root).shape[0]
    storage = LazyMemmapStorage(capacity, scratch_dir=root, existsok=True)
    storage.loads(root)
    return storage


def _is_legacy(root: Path) -> bool:
    """A store of the format before TorchRL's storage: raw ``<field>.bin`` files."""
    return (root / "observation.bin").is_file()


def _read_legacy(root: Path, max_step: int | None) -> dict[str, np.ndarray]:
    """Deprecated: the raw-binary store of earlier versions, read-only."""
    warnings.warn(
        f"{root} is in the old raw-binary transitions format; reading it is deprecated "
        "(train_sac writes TorchRL's LazyMemmapStorage, and converts this log when it "
        "resumes its run).",
        DeprecationWarning,
        stacklevel=3,
    )
    meta = json.loads((root / "meta.json").read_text())
    count = int(meta["count"]) if max_step is None else min(int(meta["count"]), max_step)
    out = {}
    for name, field in meta["fields"].items():
        shape = tuple(field["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        data = np.fromfile(root / f"{name}.bin", dtype=field["dtype"], count=count * size)
        out[name] = data.reshape(-1, *shape)
    return out


def load_transitions(out_dir: str | os.PathLike, max_step: int | None = None) -> dict:
    """Transitions of a :func:`~torchrl_dmg.datagen.behaviour.trainer.train_sac` run, in collection order: ``observation``,
    ``action``, ``reward``, ``next_observation``, ``terminated``, ``truncated`` and
    ``step`` (the env step count after the transition, 1-based). ``max_step``: only the
    transitions collected until then (``step <= max_step``), e.g. a checkpoint's step for
    D4RL's medium-replay. An episode still running at ``max_step`` ends there unflagged.
    """
    root = Path(out_dir) / "transitions"
    if _is_legacy(root):
        return _read_legacy(root, max_step)
    return _rows(_open_storage(root), 0, max_step)  # step == row index + 1


def replay_entries(rows: dict[str, np.ndarray]) -> TensorDict:
    """Replay-buffer entries (what SACLoss reads) from transition-store rows."""
    n = len(rows["step"])
    terminated = torch.as_tensor(rows["terminated"]).reshape(n, 1)
    truncated = torch.as_tensor(rows["truncated"]).reshape(n, 1)
    return TensorDict(
        {
            "observation": torch.as_tensor(rows["observation"]),
            "action": torch.as_tensor(rows["action"]),
            "next": {
                "observation": torch.as_tensor(rows["next_observation"]),
                "reward": torch.as_tensor(rows["reward"]).reshape(n, 1),
                "terminated": terminated,
                "done": terminated | truncated,
            },
        },
        batch_size=[n],
    )


def store_rows(batch: TensorDictBase, first_step: int) -> dict[str, np.ndarray]:
    """Transition-store rows from a collector batch whose first transition is env step
    ``first_step`` (1-based). A batch of several envs (``[num_envs, T]``) is stored env
    after env, each env's last transition marked truncated (its episode goes on in the
    next batch, which the store cannot join to this part)."""
    truncated = batch["next", "truncated"].clone()
    if batch.ndim > 1:
        truncated[..., -1, :] = True
        batch = batch.reshape(-1)
        truncated = truncated.reshape(batch.shape[0], -1)
    n = batch.numel()
    nxt = batch["next"]
    return {
        "observation": batch["observation"].numpy(),
        "action": batch["action"].numpy(),
        "reward": nxt["reward"].reshape(n).numpy(),
        "next_observation": nxt["observation"].numpy(),
        "terminated": nxt["terminated"].reshape(n).numpy(),
        "truncated": truncated.reshape(n).numpy(),
        "step": np.arange(first_step, first_step + n, dtype=np.int64),
    }

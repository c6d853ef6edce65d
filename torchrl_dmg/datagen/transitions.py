"""Every transition a SAC behaviour run collects, kept on disk in collection order (D4RL's
medium-replay is that run's buffer until its medium checkpoint), and the conversions between
collector batches, stored rows and replay-buffer entries."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from torchrl_dmg.datagen.antgoal import mirror_action, mirror_observation
from torchrl_dmg.recording import atomic_write

__all__ = ["TransitionStore", "load_transitions", "mirrored_rows", "replay_entries", "store_rows"]


class TransitionStore:
    """Every transition collected, in order, as one append-only raw binary file per field
    under ``root`` (``<field>.bin``) plus ``meta.json`` (dtypes, row shapes, row count).

    The row count in ``meta.json`` is written (atomically) after the rows themselves, so
    a crash mid-append leaves at most some unreferenced bytes, cut on the next append or
    on :meth:`truncate`. Read with :func:`load_transitions`.
    """

    def __init__(self, root: str | os.PathLike, obs_dim: int, act_dim: int) -> None:
        self.root = Path(root)
        self.fields = {
            "observation": ("float32", (obs_dim,)),
            "action": ("float32", (act_dim,)),
            "reward": ("float32", ()),
            "next_observation": ("float32", (obs_dim,)),
            "terminated": ("bool", ()),
            "truncated": ("bool", ()),
            "step": ("int64", ()),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            saved = {k: (v["dtype"], tuple(v["shape"])) for k, v in meta["fields"].items()}
            if saved != self.fields:
                raise ValueError(f"{self.root} holds transitions of another shape: {saved}.")
            self.count = int(meta["count"])
        else:
            self.count = 0
            for name in self.fields:
                (self.root / f"{name}.bin").touch()
            self._write_meta()

    def _row_bytes(self, name: str) -> int:
        dtype, shape = self.fields[name]
        return np.dtype(dtype).itemsize * math.prod(shape)

    def _write_meta(self) -> None:
        meta = {
            "fields": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in self.fields.items()},
            "count": self.count,
        }
        _atomic_write_text(self.root / "meta.json", json.dumps(meta, indent=1))

    def __len__(self) -> int:
        return self.count

    def append(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["step"])
        for name, (dtype, shape) in self.fields.items():
            arr = np.ascontiguousarray(rows[name], dtype=dtype).reshape(n, *shape)
            with open(self.root / f"{name}.bin", "r+b") as f:
                f.truncate(self.count * self._row_bytes(name))  # drop a torn earlier append
                f.seek(0, os.SEEK_END)
                f.write(arr.tobytes())
                f.flush()
                os.fsync(f.fileno())
        self.count += n
        self._write_meta()

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` rows (a resume drops what came after its state)."""
        if count > self.count:
            raise ValueError(f"Cannot keep {count} transitions: only {self.count} stored.")
        for name in self.fields:
            os.truncate(self.root / f"{name}.bin", count * self._row_bytes(name))
        self.count = count
        self._write_meta()

    def mark_last_truncated(self) -> None:
        """Flag the last row as an episode cut (its episode does not go on after a resume)."""
        if self.count == 0:
            return
        with open(self.root / "terminated.bin", "rb") as f:
            f.seek(self.count - 1)
            terminated = f.read(1) == b"\x01"
        if not terminated:
            with open(self.root / "truncated.bin", "r+b") as f:
                f.seek(self.count - 1)
                f.write(b"\x01")

    def read(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        stop = self.count if stop is None else min(stop, self.count)
        out = {}
        for name, (dtype, shape) in self.fields.items():
            size = math.prod(shape)
            with open(self.root / f"{name}.bin", "rb") as f:
                f.seek(start * self._row_bytes(name))
                data = np.fromfile(f, dtype=dtype, count=max(stop - start, 0) * size)
            out[name] = data.reshape(-1, *shape)
        return out


def load_transitions(out_dir: str | os.PathLike, max_step: int | None = None) -> dict:
    """Transitions of a :func:`train_sac` run, in collection order: ``observation``,
    ``action``, ``reward``, ``next_observation``, ``terminated``, ``truncated`` and
    ``step`` (the env step count after the transition, 1-based). ``max_step``: only the
    transitions collected until then (``step <= max_step``), e.g. a checkpoint's step for
    D4RL's medium-replay. An episode still running at ``max_step`` ends there unflagged.
    """
    root = Path(out_dir) / "transitions"
    meta = json.loads((root / "meta.json").read_text())
    fields = meta["fields"]
    obs_dim = fields["observation"]["shape"][0]
    act_dim = fields["action"]["shape"][0]
    store = TransitionStore(root, obs_dim, act_dim)
    return store.read(0, max_step)  # step == row index + 1


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


def mirrored_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mirror images of AntGoal transitions (:func:`torchrl_dmg.datagen.antgoal.mirror_observation`;
    reward, termination and truncation are mirror-invariant)."""
    return {
        **rows,
        "observation": mirror_observation(rows["observation"]),
        "next_observation": mirror_observation(rows["next_observation"]),
        "action": mirror_action(rows["action"]),
    }


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


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))

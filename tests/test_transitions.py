"""The SAC run's transition log (torchrl_dmg.datagen.behaviour.transitions) is TorchRL's
LazyMemmapStorage on disk; the raw-binary format of earlier versions stays readable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchrl.data import LazyMemmapStorage

from torchrl_dmg.datagen.behaviour.transitions import TransitionStore, load_transitions


def _rows(first: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(first)
    return {
        "observation": rng.normal(size=(n, 2)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
        "reward": np.arange(first, first + n, dtype=np.float32),
        "next_observation": rng.normal(size=(n, 2)).astype(np.float32),
        "terminated": rng.random(n) < 0.2,
        "truncated": np.zeros(n, bool),
        "step": np.arange(first, first + n),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_store_is_a_torchrl_storage_that_torchrl_reopens(tmp_path):
    store = TransitionStore(tmp_path / "transitions", obs_dim=2, act_dim=1, capacity=10)
    store.append(_rows(1, 4))
    storage = LazyMemmapStorage(10, scratch_dir=tmp_path / "transitions", existsok=True)
    storage.loads(tmp_path / "transitions")  # TorchRL alone, no code of ours
    assert len(storage) == 4
    torch.testing.assert_close(storage.get(slice(0, 4))["reward"], torch.arange(1.0, 5.0))


def test_a_longer_resume_grows_the_store_and_keeps_its_rows(tmp_path):
    root = tmp_path / "transitions"
    store = TransitionStore(root, obs_dim=2, act_dim=1, capacity=5)
    store.append(_rows(1, 4))
    with pytest.raises(ValueError, match="at most 5 transitions"):
        store.append(_rows(5, 2))
    store = TransitionStore(root, obs_dim=2, act_dim=1, capacity=8)
    assert store.capacity == 8 and len(store) == 4
    store.append(_rows(5, 4))
    _assert_same(load_transitions(tmp_path), _merge(_rows(1, 4), _rows(5, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transitions"]


def test_a_growth_cut_by_a_crash_finishes_or_is_dropped(tmp_path):
    root = tmp_path / "transitions"
    TransitionStore(root, obs_dim=2, act_dim=1, capacity=5).append(_rows(1, 4))
    # a copy cut before its length was written: dropped, the store as it was
    (tmp_path / "transitions.grow").mkdir()
    (tmp_path / "transitions.grow" / "meta.json").write_text("{")
    store = TransitionStore(root, obs_dim=2, act_dim=1, capacity=5)
    assert len(store) == 4 and not (tmp_path / "transitions.grow").exists()
    # killed between the two renames: the complete new store takes its place
    TransitionStore(tmp_path / "grown", obs_dim=2, act_dim=1, capacity=9).append(_rows(1, 4))
    root.rename(tmp_path / "transitions.old")
    (tmp_path / "grown").rename(tmp_path / "transitions.grow")
    store = TransitionStore(root, obs_dim=2, act_dim=1, capacity=9)
    assert store.capacity == 9 and len(store) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transitions"]


def _merge(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_legacy(root, rows: dict) -> None:
    """The raw-binary layout of the earlier TransitionStore (frozen here as a fixture):
    ``<field>.bin`` plus ``meta.json`` with the fields and the row count."""
    root.mkdir(parents=True)
    dtypes = {"terminated": "bool", "truncated": "bool", "step": "int64"}
    fields = {}
    for name, value in rows.items():
        dtype = dtypes.get(name, "float32")
        np.ascontiguousarray(value, dtype=dtype).tofile(root / f"{name}.bin")
        fields[name] = {"dtype": dtype, "shape": list(np.shape(value)[1:])}
    (root / "meta.json").write_text(json.dumps({"fields": fields, "count": len(rows["step"])}))


def test_the_old_raw_binary_format_reads_the_same_with_a_deprecation(tmp_path):
    """A run directory of the old format still yields the same transitions (so the same
    medium-replay dataset)."""
    rows = _rows(1, 7)
    _write_legacy(tmp_path / "old" / "transitions", rows)
    TransitionStore(tmp_path / "new" / "transitions", 2, 1, capacity=7).append(rows)
    with pytest.warns(DeprecationWarning, match="old raw-binary"):
        old = load_transitions(tmp_path / "old", max_step=5)
    _assert_same(old, load_transitions(tmp_path / "new", max_step=5))


def test_opening_an_old_format_log_to_write_converts_it_in_place(tmp_path):
    """A resumed run of the old format goes on in TorchRL's storage, rows unchanged."""
    root = tmp_path / "transitions"
    _write_legacy(root, _rows(1, 7))
    with pytest.warns(DeprecationWarning):
        store = TransitionStore(root, obs_dim=2, act_dim=1, capacity=10)
    assert len(store) == 7 and store.capacity == 10
    assert not list(root.glob("*.bin"))
    store.truncate(5)
    store.append(_rows(6, 3))
    first_five = {k: v[:5] for k, v in _rows(1, 7).items()}
    _assert_same(load_transitions(tmp_path), _merge(first_five, _rows(6, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transitions"]
    _write_legacy(tmp_path / "other", _rows(1, 2))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="another shape"):
        TransitionStore(tmp_path / "other", obs_dim=3, act_dim=1)

"""Tests for the maze utilities, local Minari storage helpers and the PointMaze generator."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import minari
import numpy as np
import pytest
from gymnasium_robotics.envs.maze import maps
from gymnasium_robotics.envs.maze.maze_v4 import Maze

import torchrl_dmg.datagen.pointmaze as pm
from torchrl_dmg.data.local import building_dataset, dataset_path, is_complete
from torchrl_dmg.datagen.maze import MazeGrid, maze_map_with_cells

TINY_STEPS = 2_500


# --------------------------------------------------------------------------- maze grid
def _bfs_len(grid_map, start, goal):
    """Independent BFS over the raw map (reference for MazeGrid)."""
    seen = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if grid_map[nr][nc] != 1 and (nr, nc) not in seen:
                seen[(nr, nc)] = seen[(r, c)] + 1
                queue.append((nr, nc))
    return seen.get(goal, -1)


def test_bfs_shortest_path_medium():
    grid = MazeGrid(maps.MEDIUM_MAZE)
    path = grid.shortest_path((1, 1), (6, 6))
    assert path[0] == (1, 1) and path[-1] == (6, 6)
    assert len(path) == 11  # 10 moves through the medium maze
    assert len(set(path)) == len(path)
    for r, c in path:
        assert maps.MEDIUM_MAZE[r][c] != 1
    for (r0, c0), (r1, c1) in zip(path[:-1], path[1:], strict=True):
        assert abs(r0 - r1) + abs(c0 - c1) == 1
    # Every pair of free cells: path length equals an independent BFS distance.
    for start in grid.free_cells:
        for goal in grid.free_cells:
            expected = _bfs_len(maps.MEDIUM_MAZE, start, goal)
            assert grid.distance(start, goal) == expected
            assert len(grid.shortest_path(start, goal)) == expected + 1
    assert grid.shortest_path((3, 3), (3, 3)) == [(3, 3)]
    with pytest.raises(ValueError):
        grid.shortest_path((0, 0), (6, 6))  # wall


def test_unreachable_goal_raises():
    grid = MazeGrid([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]])
    assert grid.distance((1, 1), (1, 3)) == -1
    with pytest.raises(ValueError):
        grid.shortest_path((1, 1), (1, 3))


@pytest.mark.parametrize("scaling", [1.0, 4.0])
@pytest.mark.parametrize("maze_map", [maps.U_MAZE, maps.MEDIUM_MAZE, maps.LARGE_MAZE])
def test_cell_xy_round_trip_matches_gymnasium_robotics(maze_map, scaling):
    grid = MazeGrid(maze_map, scaling)
    ref = Maze(maze_map, scaling, 0.5)
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            xy = grid.cell_to_xy((r, c))
            np.testing.assert_allclose(xy, ref.cell_rowcol_to_xy(np.array([r, c])))
            assert grid.xy_to_cell(xy) == (r, c)
            # anywhere strictly inside the cell maps back to it
            jitter = np.array([0.49, -0.49]) * scaling
            assert grid.xy_to_cell(xy + jitter) == (r, c)
            assert tuple(ref.cell_xy_to_rowcol(xy + jitter)) == (r, c)
    # y decreases with the row index, x grows with the column index
    assert grid.cell_to_xy((1, 1))[1] > grid.cell_to_xy((2, 1))[1]
    assert grid.cell_to_xy((1, 2))[0] > grid.cell_to_xy((1, 1))[0]


def test_next_waypoint():
    grid = MazeGrid(maps.MEDIUM_MAZE)
    start_xy = grid.cell_to_xy((1, 1)) + 0.1
    goal_xy = grid.cell_to_xy((6, 6)) + np.array([0.2, -0.1])
    np.testing.assert_allclose(grid.next_waypoint(start_xy, goal_xy), grid.cell_to_xy((2, 1)))
    inside = grid.cell_to_xy((6, 6)) - 0.3
    np.testing.assert_allclose(grid.next_waypoint(inside, goal_xy), goal_xy)


def test_maze_map_with_cells():
    m = maze_map_with_cells(maps.MEDIUM_MAZE_DIVERSE_GR, goal=(6, 6), reset=(1, 1))
    flat = [v for row in m for v in row]
    assert flat.count("g") == 1 and flat.count("r") == 1 and "c" not in flat
    with pytest.raises(ValueError):
        maze_map_with_cells(maps.MEDIUM_MAZE, goal=(0, 0))


# ------------------------------------------------------------------------- controller
@pytest.mark.parametrize("maze", ["umaze", "medium"])
def test_noiseless_controller_reaches_fixed_goal(maze):
    env = pm.make_pointmaze_eval_env(maze)
    ctrl = pm.WaypointController(env.unwrapped.maze.maze_map, noise=0.0)
    horizon = env.spec.max_episode_steps
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        reached_at = None
        for step in range(1, horizon + 1):
            obs, _, terminated, truncated, info = env.step(ctrl(obs))
            assert not terminated
            if info["success"]:
                reached_at = step
                break
        assert reached_at is not None, f"{maze}: goal not reached in {horizon} steps ({seed=})"
        assert reached_at < 0.6 * horizon
    env.close()


# ---------------------------------------------------------------------- datasets
@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def _tiny(dataset_id: str, seed: int = 0, **kwargs) -> str:
    return pm.generate_pointmaze_dataset(
        "umaze",
        num_steps=TINY_STEPS,
        seed=seed,
        dataset_id=dataset_id,
        progress=False,
        num_ref_episodes=2,
        **kwargs,
    )


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


def test_tiny_dataset_loads(minari_root):
    did = _tiny("local/pointmaze/umaze-test-v0")
    assert os.environ["MINARI_DATASETS_PATH"] == str(minari_root)
    assert is_complete(did)
    assert (minari_root / "local" / "pointmaze" / "umaze-test-v0" / "data").is_dir()
    assert _leftovers(minari_root) == []
    ds = minari.load_dataset(did)
    assert ds.total_steps == TINY_STEPS
    steps = 0
    for ep in ds.iterate_episodes():
        n = len(ep.rewards)
        steps += n
        assert set(ep.observations) == {"observation", "achieved_goal", "desired_goal"}
        assert ep.observations["observation"].shape == (n + 1, 4)
        assert ep.observations["achieved_goal"].shape == (n + 1, 2)
        assert ep.observations["desired_goal"].shape == (n + 1, 2)
        assert ep.actions.shape == (n, 2)
        for arr in (*ep.observations.values(), ep.actions, ep.rewards):
            assert np.issubdtype(arr.dtype, np.floating)
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert not ep.terminations.any()
        assert ep.truncations[-1] and not ep.truncations[:-1].any()
        # a goal never changes inside an episode (split at each goal reach)
        assert np.all(ep.observations["desired_goal"] == ep.observations["desired_goal"][0])
        assert ep.infos["success"].shape == (n + 1,)
    assert steps == TINY_STEPS
    assert ds.total_episodes > 5  # several goals reached in 2.5k steps of the U-maze
    md = ds.storage.metadata
    assert md["ref_max_score"] > md["ref_min_score"]
    assert md["generator_params"]["seed"] == 0
    assert md["generator_params"]["num_steps"] == TINY_STEPS
    assert minari.get_normalized_score(ds, np.array(md["ref_max_score"])) == pytest.approx(1.0)
    eval_env = ds.recover_environment(eval_env=True)
    assert eval_env.spec.max_episode_steps == 300
    assert eval_env.spec.kwargs["reset_target"] is False
    flat = [v for row in eval_env.spec.kwargs["maze_map"] for v in row]
    assert flat.count("g") == 1 and flat.count("r") == 1
    eval_env.close()
    # reuse: a complete dataset is not regenerated
    assert _tiny(did, seed=123) == did
    assert minari.load_dataset(did).storage.metadata["generator_params"]["seed"] == 0


def _arrays(dataset_id: str) -> list[np.ndarray]:
    out = []
    for ep in minari.load_dataset(dataset_id).iterate_episodes():
        out += [*ep.observations.values(), ep.actions, ep.rewards, ep.truncations]
    return out


def test_same_seed_same_data(minari_root):
    a = _arrays(_tiny("local/pm/a-v0", seed=3))
    b = _arrays(_tiny("local/pm/b-v0", seed=3))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = _arrays(_tiny("local/pm/c-v0", seed=4))
    assert len(a) != len(c) or not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_interrupted_collection_leaves_nothing(minari_root, monkeypatch):
    calls = {"n": 0}
    original = pm.WaypointController.__call__

    def flaky(self, obs):
        calls["n"] += 1
        if calls["n"] > 500:
            raise KeyboardInterrupt
        return original(self, obs)

    monkeypatch.setattr(pm.WaypointController, "__call__", flaky)
    did = "local/pointmaze/umaze-int-v0"
    with pytest.raises(KeyboardInterrupt):
        _tiny(did)
    assert not is_complete(did)
    assert not dataset_path(did).exists()
    assert _leftovers(minari_root) == []


def test_interrupted_write_leaves_nothing(minari_root, monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    original = HDF5Storage.update_episodes

    def half_write(self, episodes):
        original(self, list(episodes)[:2])  # part of the data really hits the disk
        raise KeyboardInterrupt

    monkeypatch.setattr(HDF5Storage, "update_episodes", half_write)
    did = "local/pointmaze/umaze-half-v0"
    with pytest.raises(KeyboardInterrupt):
        _tiny(did)
    assert not is_complete(did)
    assert not dataset_path(did).exists()
    assert _leftovers(minari_root) == []
    assert os.environ["MINARI_DATASETS_PATH"] == str(minari_root)


def test_stale_incomplete_dataset_is_rebuilt(minari_root):
    import json

    did = _tiny("local/pointmaze/umaze-stale-v0")
    meta_file = dataset_path(did) / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["total_steps"] += 7  # metadata no longer matches the episodes
    meta_file.write_text(json.dumps(meta))
    assert not is_complete(did)
    (dataset_path(did) / "data" / "main_data.hdf5").write_bytes(b"garbage")
    assert not is_complete(did)
    assert _tiny(did) == did
    assert is_complete(did)
    assert minari.load_dataset(did).total_steps == TINY_STEPS


def test_building_dataset_requires_a_dataset(minari_root):
    with pytest.raises(RuntimeError), building_dataset("local/nothing-v0"):
        pass
    assert not dataset_path("local/nothing-v0").exists()
    assert _leftovers(minari_root) == []


def test_default_root_and_unset_env_var_restored(tmp_path, monkeypatch):
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    did = _tiny("local/pointmaze/umaze-home-v0")
    assert "MINARI_DATASETS_PATH" not in os.environ
    root = tmp_path / ".minari" / "datasets"
    assert (root / "local" / "pointmaze" / "umaze-home-v0" / "data" / "metadata.json").is_file()
    assert is_complete(did)
    assert _leftovers(root) == []


# ---------------------------------------------------------------------- the make_dataset recipe
def test_make_dataset_makes_a_pointmaze_dataset(tmp_path):
    """``make_dataset.py env=pointmaze-umaze`` makes ``local/pointmaze/umaze-v0``, the id the
    offline recipe reads, with the steps asked for."""
    from recipe_runner import run_recipe

    from torchrl_dmg.data.local import minari_datasets_path

    root = tmp_path / "minari"
    proc = run_recipe(
        "make_dataset.py",
        tmp_path / "run",
        str(root),
        "env=pointmaze-umaze",
        "steps=400",
        "progress=false",
        base=(),
    )
    assert "[make_dataset] local/pointmaze/umaze-v0: " in proc.stdout, proc.stdout
    assert " 400 steps; " in proc.stdout
    with minari_datasets_path(root):
        assert is_complete("local/pointmaze/umaze-v0")
        assert minari.load_dataset("local/pointmaze/umaze-v0").total_steps == 400


@pytest.mark.parametrize("env", ["pointmaze", "pointmaze-tiny", "antmaze-huge", "ant"])
def test_make_dataset_names_every_env_in_one_line_for_an_unknown_one(tmp_path, env):
    """A wrong env name is refused in one line that lists every env make_dataset makes,
    PointMaze's included, before any data are made."""
    from recipe_runner import run_recipe

    proc = run_recipe(
        "make_dataset.py", tmp_path / "run", str(tmp_path), f"env={env}", base=(), check=False
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert f"Unknown env {env!r}; choose one of: " in last
    for name in ("hopper", "halfcheetah", "walker2d", "pointmaze-umaze", "pointmaze-medium"):
        assert name in last
    for name in ("pointmaze-large", "antmaze-umaze", "antmaze-large-diverse"):
        assert name in last
    assert not (tmp_path / "local").exists()


def test_make_dataset_refuses_a_locomotion_key_for_pointmaze(tmp_path):
    from recipe_runner import run_recipe

    proc = run_recipe(
        "make_dataset.py",
        tmp_path / "run",
        str(tmp_path),
        "env=pointmaze-umaze",
        "quality=expert",
        base=(),
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "quality=expert does not apply to PointMaze" in last and "pointmaze-large" in last
    assert not (tmp_path / "local").exists()

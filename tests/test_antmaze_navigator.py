"""The goal-reaching ant task, the waypoint navigator and the D4RL-style AntMaze datasets,
on tiny sizes with a small untrained ant policy (the shipped one is measured in the README)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from recipe_runner import run_recipe

from torchrl_dmg.datagen.antmaze.ant_policy import goal_reaching_success
from torchrl_dmg.datagen.antmaze.datasets import (
    generate_antmaze_navigator_dataset,
    navigator_success,
)
from torchrl_dmg.datagen.antmaze.goal_task import (
    ANTGOAL_ID,
    AntGoalEnv,
    heading_frame,
    policy_observation,
    torso_yaw,
)
from torchrl_dmg.datagen.antmaze.mazes import PLAY_CELLS, antmaze_dataset_id
from torchrl_dmg.datagen.antmaze.navigator import WaypointNavigator
from torchrl_dmg.datagen.maze import MazeGrid, base_maze_map

EPISODES, EPISODE_STEPS = 3, 40


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A directory holding a small random-init goal-reaching policy as ``antgoal.pt``."""
    from torchrl_dmg.modules import make_sac_actor

    torch.manual_seed(0)
    actor = make_sac_actor(29, 8, num_cells=(16, 16))
    path = tmp_path_factory.mktemp("policies")
    torch.save(
        {
            "env": ANTGOAL_ID,
            "step": 123,
            "obs_dim": 29,
            "act_dim": 8,
            "num_cells": [16, 16],
            "action_low": [-1.0] * 8,
            "action_high": [1.0] * 8,
            "actor": actor.state_dict(),
        },
        path / "antgoal.pt",
    )
    return path


@pytest.fixture(scope="module")
def nav_root(tmp_path_factory, policy_dir):
    """A Minari root with tiny umaze and medium-play navigator datasets."""
    from torchrl_dmg.data.local import minari_datasets_path

    root = tmp_path_factory.mktemp("minari_nav")
    with minari_datasets_path(root):
        for variant in ("umaze", "medium-play"):
            generate_antmaze_navigator_dataset(
                variant,
                num_steps=EPISODES * EPISODE_STEPS,
                episode_steps=EPISODE_STEPS,
                policy_dir=policy_dir,
                progress=False,
            )
    return str(root)


# ------------------------------------------------------------------ the ant task
def test_heading_frame_rotates_into_the_ants_view():
    # an ant turned by +90 degrees (facing +y) sees a target at +y straight ahead (+x)
    yaw = np.array(math.pi / 2)
    np.testing.assert_allclose(heading_frame(np.array([0.0, 2.0]), yaw), [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(heading_frame(np.array([1.0, 0.0]), yaw), [0.0, -1.0], atol=1e-12)
    # quaternion of a yaw rotation (w, x, y, z) = (cos(a/2), 0, 0, sin(a/2)), entries 1..4
    ant_obs = np.zeros(27)
    ant_obs[1], ant_obs[4] = math.cos(0.3), math.sin(0.3)
    assert torso_yaw(ant_obs) == pytest.approx(0.6)
    obs = policy_observation(ant_obs, np.zeros(2), np.array([30.0, 0.0]))
    assert obs.shape == (29,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:27], ant_obs, atol=1e-7)
    assert np.linalg.norm(obs[27:]) == pytest.approx(6.0)  # clipped length
    np.testing.assert_allclose(obs[27:], 6.0 * np.array([math.cos(0.6), -math.sin(0.6)]), rtol=1e-6)


def _teleport(env: AntGoalEnv, xy=None, z=None) -> None:
    ant = env._maze.ant_env
    qpos = ant.data.qpos.copy()
    if xy is not None:
        qpos[:2] = xy
    if z is not None:
        qpos[2] = z
    ant.set_state(qpos, np.zeros_like(ant.data.qvel))


def test_antgoal_reward_target_and_termination():
    env = AntGoalEnv()
    obs, info = env.reset(seed=3)
    assert obs.shape == (29,) and env.observation_space.shape == (29,)
    xy = env._xy.copy()
    assert 1.0 - 1e-9 <= np.linalg.norm(info["target"] - xy) <= 6.0 + 1e-9
    # reward: velocity towards the target + healthy - ctrl cost
    action = np.full(8, 0.5)
    d_prev = np.linalg.norm(env.target - env._xy)
    _, reward, terminated, truncated, info = env.step(action)
    expected = (d_prev - info["distance"]) / env.dt + 1.0 - 0.1 * 8 * 0.25
    assert reward == pytest.approx(expected) and not terminated and not truncated
    # reaching the target draws a new one
    old = env.target.copy()
    _teleport(env, xy=old)
    _, _, _, _, info = env.step(np.zeros(8))
    assert info["reached"] and info["targets_reached"] == 1
    assert not np.allclose(env.target, old)
    # a torso above the healthy range (thrown up, or flipping) terminates
    _teleport(env, z=1.5)
    _, reward, terminated, _, _ = env.step(np.zeros(8))
    assert terminated
    env.close()


def test_a_flipped_ant_ends_a_v1_episode_but_not_a_v0_one():
    """On its back the torso rests inside Ant-v4's height range: v1 terminates on the
    torso's up axis (is_flipped), v0 (the first version) did not."""
    from torchrl_dmg.datagen.antmaze.goal_task import is_flipped, torso_upright

    upright = np.zeros(27)
    upright[1] = 1.0  # quaternion w, x, y, z = 1, 0, 0, 0
    on_back = np.zeros(27)
    on_back[2] = 1.0  # half a turn about x
    assert torso_upright(upright) == pytest.approx(1.0) and not is_flipped(upright)
    assert torso_upright(on_back) == pytest.approx(-1.0) and is_flipped(on_back)
    for terminate, expected in ((True, True), (False, False)):
        env = AntGoalEnv(terminate_when_flipped=terminate)
        env.reset(seed=0)
        ant = env._maze.ant_env
        qpos = ant.data.qpos.copy()
        qpos[2], qpos[3:7] = 0.3, (0.0, 1.0, 0.0, 0.0)  # lying on its back, z in (0.2, 1)
        ant.set_state(qpos, np.zeros_like(ant.data.qvel))
        _, reward, terminated, _, _ = env.step(np.zeros(8))
        assert terminated is expected
        if not expected:  # v0 kept paying the healthy reward
            assert reward > 0.5
        env.close()


def _mirrored_state(qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MuJoCo state of the world mirrored in y (the ant's free joint, then 8 hinges in the
    order hip_1, ankle_1, ..., hip_4, ankle_4), written out from the XML independently of
    the observation maps under test."""
    legs = [6, 7, 4, 5, 2, 3, 0, 1]
    signs = np.array([-1.0, 1.0] * 4)
    qp, qv = qpos.copy(), qvel.copy()
    qp[1] = -qpos[1]  # y
    qp[4], qp[6] = -qpos[4], -qpos[6]  # quaternion w, x, y, z -> w, -x, y, -z
    qp[7:15] = qpos[7:15][legs] * signs
    qv[1], qv[3], qv[5] = -qvel[1], -qvel[3], -qvel[5]  # vy; angular x, z
    qv[6:14] = qvel[6:14][legs] * signs
    return qp, qv


def test_the_ant_task_is_mirror_symmetric():
    """Mirrored state, target and actions give the mirrored trajectory: observations and
    policy inputs (mirror_observation), the same rewards and terminations. What SAC's
    mirror_augment relies on."""
    from torchrl_dmg.datagen.antmaze.goal_task import mirror_action, mirror_observation

    rng = np.random.default_rng(0)
    env, twin = AntGoalEnv(), AntGoalEnv()
    env.reset(seed=0)
    twin.reset(seed=0)
    for _ in range(20):  # somewhere off the start pose
        env.step(rng.uniform(-1, 1, 8))
    ant, twin_ant = env._maze.ant_env, twin._maze.ant_env
    qpos, qvel = ant.data.qpos.copy(), ant.data.qvel.copy()
    qpos[:2] = 0.3, 0.7
    ant.set_state(qpos, qvel)
    twin_ant.set_state(*_mirrored_state(qpos, qvel))
    env._xy, twin._xy = qpos[:2].copy(), np.array([qpos[0], -qpos[1]])
    env.target = np.array([3.0, 2.5])
    twin.target = np.array([3.0, -2.5])
    for _ in range(30):
        action = rng.uniform(-1, 1, 8)
        obs, reward, terminated, _, _ = env.step(action)
        twin_obs, twin_reward, twin_terminated, _, _ = twin.step(mirror_action(action))
        np.testing.assert_allclose(mirror_observation(obs), twin_obs, atol=1e-5)
        assert twin_reward == pytest.approx(reward, abs=1e-6)
        assert twin_terminated == terminated
    np.testing.assert_allclose(mirror_observation(mirror_observation(obs)), obs)
    action = rng.uniform(-1, 1, (4, 8))
    np.testing.assert_array_equal(mirror_action(mirror_action(action)), action)
    as_torch = mirror_observation(torch.as_tensor(obs))
    np.testing.assert_allclose(as_torch.numpy(), mirror_observation(obs))
    env.close()
    twin.close()


def test_antgoal_is_registered_and_seeded():
    import gymnasium as gym

    from torchrl_dmg.datagen.behaviour.tasks import resolve_env_name

    assert resolve_env_name("antgoal") == ANTGOAL_ID
    a, b = gym.make(ANTGOAL_ID), gym.make(ANTGOAL_ID)
    assert a.spec.max_episode_steps == 500
    oa, ia = a.reset(seed=5)
    ob, ib = b.reset(seed=5)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["target"], ib["target"])
    a.close()
    b.close()
    uniform = gym.make(resolve_env_name("antgoal-uniform"))
    assert uniform.unwrapped.forward_fraction == 0.0 and uniform.unwrapped.terminate_when_flipped
    assert gym.make(resolve_env_name("antgoal")).unwrapped.forward_fraction == 0.5
    uniform.close()


def test_goal_reaching_success_counts_reached_targets(policy_dir):
    from torchrl_dmg.datagen.behaviour.policy import load_behaviour_actor

    actor, _ = load_behaviour_actor(policy_dir / "antgoal.pt")
    far = goal_reaching_success(actor, episodes=2, max_steps=5, min_dist=5.0)
    assert far["success_rate"] == 0.0 and far["episodes"] == 2  # 5 steps cannot cover 5 units
    near = goal_reaching_success(actor, episodes=2, max_steps=2, min_dist=0.01, max_dist=0.02)
    assert near["success_rate"] == 1.0 and near["mean_steps_to_reach"] == 1.0


# ------------------------------------------------------------------ navigator
def test_waypoint_navigator_follows_the_shortest_path():
    grid = MazeGrid(base_maze_map("medium"), 4.0)
    nav = WaypointNavigator(grid, np.random.default_rng(0), jitter=0.5, radius=1.5)
    start, goal = (1, 1), (6, 6)
    goal_xy = grid.cell_to_xy(goal)
    nav.set_goal(grid.cell_to_xy(start), goal_xy)
    assert nav.cells == grid.shortest_path(start, goal)
    # the first waypoint: the jittered centre of the next cell on the path
    w = nav.waypoint(grid.cell_to_xy(start))
    assert np.all(np.abs(w - grid.cell_to_xy(nav.cells[1])) <= 0.5)
    # walking along the waypoints passes every cell of the path and ends at the goal itself
    xy, visited = grid.cell_to_xy(start), []
    for _ in range(100):
        w = nav.waypoint(xy)
        visited.append(grid.xy_to_cell(w))
        if np.allclose(w, goal_xy):
            break
        xy = w  # arrive at the waypoint
    assert np.allclose(w, goal_xy)
    assert [c for i, c in enumerate(visited) if i == 0 or c != visited[i - 1]] == nav.cells[1:]
    # pushed back along the path: aims at most one cell ahead again
    nav.set_goal(grid.cell_to_xy(start), goal_xy)
    for _ in range(4):
        nav.waypoint(nav.points[nav.k])  # walk four waypoints on
    back = nav.cells[1]
    w = nav.waypoint(grid.cell_to_xy(back))
    assert grid.xy_to_cell(w) in (back, nav.cells[2])
    # an agent pushed off the path is re-planned from its cell
    off = (4, 1)
    assert off not in nav.cells
    nav.waypoint(grid.cell_to_xy(off))
    assert nav.cells[0] == off and nav.cells[-1] == goal


# ------------------------------------------------------------------ datasets
def test_navigator_dataset_structure(nav_root, monkeypatch):
    import minari

    from torchrl_dmg.data.offline import load_offline_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", nav_root)
    dataset_id = antmaze_dataset_id("umaze")
    assert dataset_id == "local/antmaze/umaze-v3"
    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_episodes == EPISODES and dataset.total_steps == EPISODES * EPISODE_STEPS
    assert dataset.spec.env_spec.id == "torchrl_dmg/AntMazeD4RL_UMaze-v0"
    assert dataset.spec.env_spec.kwargs["continuing_task"] is True
    eval_env = dataset.recover_environment(eval_env=True)
    assert eval_env.spec.kwargs["continuing_task"] is False
    assert eval_env.spec.max_episode_steps == 700
    eval_env.close()
    meta = dataset.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (0.0, 1.0)
    params = meta["generator_params"]
    assert params["policy_step"] == 123 and params["action_noise"] == 0.2
    for ep in dataset.iterate_episodes():
        n = len(ep.actions)
        obs = ep.observations
        assert n == EPISODE_STEPS and ep.actions.shape == (n, 8)
        assert obs["observation"].shape == (n + 1, 27) and obs["achieved_goal"].shape == (n + 1, 2)
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
        # sparse reward of the evaluation goal, which the stored desired_goal holds
        assert set(np.unique(ep.rewards)) <= {0.0, 1.0}
        assert np.all(obs["desired_goal"] == obs["desired_goal"][0])
        assert np.allclose(obs["desired_goal"][0], (-4.0, 4.0), atol=1.0)
        dist = np.linalg.norm(obs["achieved_goal"][1:] - obs["desired_goal"][1:], axis=1)
        np.testing.assert_array_equal(ep.rewards, (dist <= 0.45).astype(float))
        # umaze: from the evaluation start cell (3, 1), commanded to the goal cell (1, 1)
        assert np.allclose(obs["achieved_goal"][0], (-4.0, -4.0), atol=1.0)
        assert np.allclose(ep.infos["commanded_goal"], (-4.0, 4.0), atol=1.0)
        assert ep.infos["success"].shape == (n + 1,)

    # goal flattening of the antmaze family: [xy, ant state] = 29 dims, rewards shifted by -1
    data = load_offline_dataset(
        dataset_id, obs_keys=["achieved_goal", "observation"], reward_shift=-1.0, progress=False
    ).data
    assert data["observation"].shape == (EPISODES * EPISODE_STEPS, 29)
    assert set(data["next", "reward"].unique().tolist()) <= {-1.0, 0.0}
    assert data["next", "truncated"].sum() == EPISODES and not data["next", "terminated"].any()


def test_play_variant_starts_and_commands_from_the_play_cells(nav_root, monkeypatch):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", nav_root)
    dataset = minari.load_dataset(antmaze_dataset_id("medium-play"))
    assert dataset.spec.env_spec.id == "torchrl_dmg/AntMazeD4RL_Medium-v0"
    grid = MazeGrid(base_maze_map("medium"), 4.0)
    starts = set()
    for ep in dataset.iterate_episodes():
        starts.add(grid.xy_to_cell(ep.observations["achieved_goal"][0]))
        for goal in ep.infos["commanded_goal"]:
            assert grid.xy_to_cell(goal) in PLAY_CELLS["medium"]
    assert starts <= set(PLAY_CELLS["medium"]) and len(starts) > 1


def test_the_navigator_sends_the_ant_on_or_holds_its_goal(policy_dir, monkeypatch):
    """The datasets' rule sends the ant to the next play cell on arrival; ``hold_goal``
    (D4RL's generator, measured by benchmarks/navigator_goal_rule.py) keeps the episode's
    first goal. Every step counts as an arrival here."""
    from torchrl_dmg.datagen.antmaze import datasets, navigator

    monkeypatch.setattr(navigator, "GOAL_REACHED_RADIUS", 1e9)
    actor = navigator.load_ant_policy(navigator.ant_policy_path(policy_dir))[0]
    grid = MazeGrid(base_maze_map("medium"), 4.0)
    for hold in (False, True):
        (ep,) = datasets.navigate_episodes("medium", "play", [12], 0, 0, actor, 0.2, hold_goal=hold)
        goals = np.stack(ep["commanded_goal"])
        assert all(grid.xy_to_cell(g) in PLAY_CELLS["medium"] for g in goals)
        changes = int((np.abs(np.diff(goals, axis=0)).sum(axis=1) > 0).sum())
        assert changes == (0 if hold else len(goals) - 1)


def test_a_onegoal_dataset_keeps_each_episodes_goal_and_is_not_mistaken_for_a_next_one(
    policy_dir, tmp_path, monkeypatch
):
    """``goal_rule="onegoal"`` (D4RL's one target per episode) is its own id, records its
    rule, keeps one commanded goal per episode, and a stored dataset made under the other
    rule is rebuilt rather than reused; the registry makes the ``-onegoal-v1`` ids."""
    import minari

    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.antmaze import navigator
    from torchrl_dmg.datagen.registry import generator_for

    monkeypatch.setattr(navigator, "GOAL_REACHED_RADIUS", 1e9)  # every step an arrival
    kwargs = dict(num_steps=2 * EPISODE_STEPS, episode_steps=EPISODE_STEPS, progress=False)
    with minari_datasets_path(tmp_path):
        dataset_id = generate_antmaze_navigator_dataset(
            "medium-play", goal_rule="onegoal", policy_dir=policy_dir, **kwargs
        )
        assert dataset_id == "local/antmaze/medium-play-onegoal-v3"
        dataset = minari.load_dataset(dataset_id)
        assert dataset.storage.metadata["generator_params"]["goal_rule"] == "onegoal"
        for ep in dataset.iterate_episodes():
            goals = ep.infos["commanded_goal"]
            assert (goals == goals[0]).all()
        # the same id asked for under the other rule: rebuilt, every step a new goal
        generate_antmaze_navigator_dataset(
            "medium-play", dataset_id=dataset_id, policy_dir=policy_dir, **kwargs
        )
        dataset = minari.load_dataset(dataset_id)
        assert dataset.storage.metadata["generator_params"]["goal_rule"] == "next"
        goals = next(iter(dataset.iterate_episodes())).infos["commanded_goal"]
        assert (np.abs(np.diff(goals, axis=0)).sum(axis=1) > 0).all()
    with pytest.raises(ValueError, match="goal_rule must be one of"):
        generate_antmaze_navigator_dataset("umaze", goal_rule="hold", policy_dir=policy_dir)
    assert generator_for("local/antmaze/umaze-onegoal-v3", False) is not None
    assert generator_for("local/antmaze/umaze-twogoal-v3", False) is None


def test_navigator_dataset_is_deterministic_and_reused(nav_root, policy_dir, tmp_path):
    import minari

    from torchrl_dmg.data.local import minari_datasets_path

    def episodes(root):
        with minari_datasets_path(root):
            return list(minari.load_dataset(antmaze_dataset_id("umaze")).iterate_episodes())

    with minari_datasets_path(tmp_path):
        generate_antmaze_navigator_dataset(
            "umaze",
            num_steps=EPISODES * EPISODE_STEPS,
            episode_steps=EPISODE_STEPS,
            policy_dir=policy_dir,
            progress=False,
        )
        path = minari.load_dataset(antmaze_dataset_id("umaze")).storage.data_path
        mtime = (path / "main_data.hdf5").stat().st_mtime_ns
        # a second request returns the stored copy untouched
        generate_antmaze_navigator_dataset(
            "umaze", num_steps=10, episode_steps=5, policy_dir=policy_dir, progress=False
        )
        assert (path / "main_data.hdf5").stat().st_mtime_ns == mtime
    for a, b in zip(episodes(nav_root), episodes(tmp_path), strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        for key in a.observations:
            np.testing.assert_array_equal(a.observations[key], b.observations[key])
    # another seed: other action noise
    other = tmp_path / "other"
    with minari_datasets_path(other):
        generate_antmaze_navigator_dataset(
            "umaze",
            num_steps=EPISODE_STEPS,
            episode_steps=EPISODE_STEPS,
            seed=1,
            policy_dir=policy_dir,
            progress=False,
        )
    assert not np.array_equal(episodes(other)[0].actions, episodes(nav_root)[0].actions)


def test_interrupted_navigator_collection_leaves_nothing(policy_dir, tmp_path, monkeypatch):
    from torchrl_dmg.data.local import dataset_path, is_complete, minari_datasets_path
    from torchrl_dmg.datagen.antmaze import datasets

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "navigate_episodes", boom)
    with minari_datasets_path(tmp_path), pytest.raises(KeyboardInterrupt):
        generate_antmaze_navigator_dataset(
            "umaze", num_steps=20, episode_steps=10, policy_dir=policy_dir, progress=False
        )
    with minari_datasets_path(tmp_path):
        assert not is_complete(antmaze_dataset_id("umaze"))
        assert not dataset_path(antmaze_dataset_id("umaze")).exists()


def test_missing_ant_policy_names_the_fix(tmp_path):
    from torchrl_dmg.data.local import minari_datasets_path

    with minari_datasets_path(tmp_path), pytest.raises(FileNotFoundError, match="env=antgoal"):
        generate_antmaze_navigator_dataset("umaze", num_steps=10, policy_dir=tmp_path)
    with pytest.raises(ValueError, match="medium-play"):
        antmaze_dataset_id("medium-hard")


def test_navigator_success_on_the_evaluation_task(policy_dir):
    from torchrl_dmg.datagen.behaviour.policy import load_behaviour_actor

    actor, _ = load_behaviour_actor(policy_dir / "antgoal.pt")
    result = navigator_success("umaze", episodes=2, actor=actor)
    assert result["episodes"] == 2 and 0.0 <= result["success_rate"] <= 1.0


def test_make_dataset_recipe_for_antmaze(policy_dir, tmp_path):
    proc = run_recipe(
        "make_dataset.py",
        tmp_path / "run",
        str(tmp_path / "minari"),
        "env=antmaze-umaze-diverse",
        "steps=30",
        f"policy_dir={policy_dir}",
        "progress=false",
        base=(),
    )
    assert "[make_dataset] local/antmaze/umaze-diverse-v3: 1 episodes, 30 steps" in proc.stdout
    assert re.search(
        r"steps there, [01] ended by a flip \(\d+ tumbling steps cut\), at ", proc.stdout
    ), proc.stdout
    bad = run_recipe(
        "make_dataset.py",
        tmp_path / "bad",
        str(tmp_path / "minari"),
        "env=antmaze-umaze",
        "quality=expert",
        base=(),
        check=False,
    )
    assert bad.returncode != 0 and "variant is part of env" in bad.stderr


def test_ship_ant_policy_records_its_measurements(policy_dir, tmp_path):
    import shutil

    from torchrl_dmg.datagen.antmaze.ant_policy import ship_ant_policy

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for step in (1000, 2000):
        shutil.copy(policy_dir / "antgoal.pt", run / "checkpoints" / f"step_{step:08d}.pt")
    (run / "progress.csv").write_text("step,eval_return_mean\n1000,5.0\n2000,7.0\n")
    out = tmp_path / "ship"
    entry = ship_ant_policy(run, policy_dir=out, candidates=2, episodes=2, mazes=("umaze",))
    assert (out / "antgoal.pt").is_file()
    record = json.loads((out / "policies.json").read_text())["antgoal"]
    assert record == json.loads(json.dumps(entry))
    assert record["checkpoint_step"] == 2000 and record["run_steps"] == 2000  # tie: the later
    assert set(record["navigator"]) == {"umaze"} and record["open_space"]["episodes"] == 2
    assert [c["step"] for c in record["candidates"]] == [2000, 1000]  # best return first
    assert set(record["candidates"][0]) == {
        "step",
        "eval_return_mean",
        "navigator_umaze",
        "open_space",
    }


def _generate_with_flips(policy_dir, tmp_path, monkeypatch, every: int):
    """A 100-step umaze navigator dataset (episodes of 40) whose ant counts as flipped at
    every ``every``-th flip check; returns its total steps, episodes and generator
    parameters."""
    import minari

    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.antmaze import goal_task

    calls = {"n": 0}

    def flips_periodically(ant_obs):
        calls["n"] += 1
        return calls["n"] % every == 0

    monkeypatch.setattr(goal_task, "is_flipped", flips_periodically)
    with minari_datasets_path(tmp_path):
        dataset_id = generate_antmaze_navigator_dataset(
            "umaze", num_steps=100, episode_steps=40, policy_dir=policy_dir, progress=False
        )
        dataset = minari.load_dataset(dataset_id)
        episodes = list(dataset.iterate_episodes())
        params = dataset.storage.metadata["generator_params"]
    return dataset.total_steps, episodes, params


def test_an_episode_ends_when_the_ant_flips_and_the_budget_is_still_filled(
    policy_dir, tmp_path, monkeypatch
):
    """A flipped ant cannot get up: its episode stops there (truncated), and the generator
    draws further episodes until num_steps are collected."""
    total_steps, episodes, params = _generate_with_flips(policy_dir, tmp_path, monkeypatch, 7)
    assert total_steps == 100
    assert all(len(ep.actions) < 40 for ep in episodes)  # every one ended by a flip
    assert len(episodes) > 100 // 40 + 1
    for ep in episodes:
        assert ep.truncations[-1] and not ep.truncations[:-1].any()
        assert not ep.terminations.any()
    assert params["episodes"] == len(episodes)
    assert params["episodes_ended_flipped"] >= len(episodes) - 1  # the last may be cut


def test_flip_cut_keeps_the_steps_up_to_the_last_upright_state():
    from torchrl_dmg.datagen.antmaze.datasets import flip_cut

    def ant_states(upright):  # torso quaternion (w, x, 0, 0) with 1 - 2x^2 = upright
        obs = np.zeros((len(upright), 27))
        obs[:, 2] = np.sqrt((1 - np.asarray(upright)) / 2)
        return obs

    # observations 0..5; the last upright one (> 0.8) is 3: transitions 0, 1, 2 stay and
    # the final next-observation is observation 3
    assert flip_cut(ant_states([1.0, 1.0, 0.9, 0.85, 0.5, -0.2])) == 3
    assert flip_cut(ant_states([1.0, 0.95, -0.5])) == 1
    assert flip_cut(ant_states([0.5, -0.5])) == 0  # never upright: nothing kept


def test_flip_ending_episodes_lose_their_tumble_and_the_budget_is_still_filled(
    policy_dir, tmp_path, monkeypatch
):
    """A flip-ending episode is cut back to its last upright state: no flipped or tumbling
    next-state for the critics to bootstrap from. More episodes fill num_steps."""
    from torchrl_dmg.datagen.antmaze import datasets

    def last_two_tumbling(obs):  # an episode's last two states lean past 37 degrees
        upright = np.ones(len(obs))
        upright[-2:] = (0.5, -0.5)
        return upright

    monkeypatch.setattr(datasets, "torso_upright", last_two_tumbling)
    total_steps, episodes, params = _generate_with_flips(policy_dir, tmp_path, monkeypatch, 9)
    assert total_steps == 100
    assert params["episodes_ended_flipped"] >= len(episodes) - 1
    # two steps cut from each flip-ending episode (also from those drawn but not needed)
    assert params["flip_steps_cut"] >= 2 * params["episodes_ended_flipped"] > 0
    for ep in episodes:
        assert ep.truncations[-1] and not ep.terminations.any()
        assert len(ep.observations["observation"]) == len(ep.actions) + 1


def test_navigator_workers_give_the_same_data(policy_dir, tmp_path, monkeypatch):
    """workers=2 (spawned processes, whole groups of episodes each) = one process on two
    torch threads: the ant's actions do not go through torch's matmul
    (:class:`~torchrl_dmg.datagen.behaviour.policy.PortableActions`)."""
    import minari

    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.antmaze import datasets

    monkeypatch.setattr(datasets, "EPISODE_GROUP", 2)  # 3 episodes -> groups [0, 1], [2]
    data = {}
    threads = torch.get_num_threads()
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        torch.set_num_threads(2)
        try:
            with minari_datasets_path(root):
                dataset_id = generate_antmaze_navigator_dataset(
                    "umaze-diverse",
                    num_steps=3 * EPISODE_STEPS,
                    episode_steps=EPISODE_STEPS,
                    policy_dir=policy_dir,
                    progress=False,
                    workers=workers,
                )
                data[workers] = list(minari.load_dataset(dataset_id).iterate_episodes())
        finally:
            torch.set_num_threads(threads)
    assert len(data[1]) == len(data[2]) == 3
    for a, b in zip(data[1], data[2], strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        for key in a.observations:
            np.testing.assert_array_equal(a.observations[key], b.observations[key])
    with pytest.raises(ValueError, match="workers"):
        generate_antmaze_navigator_dataset("umaze", num_steps=10, workers=0, policy_dir=policy_dir)


#: SHA-256 (first 16 hex digits) of the shipped ant's portable actions on
#: ``_portable_probe()``: the same on every machine (IEEE-754 float64, no BLAS). It changes
#: only with the shipped policy or PortableActions' arithmetic, and then the AntMaze data
#: change too: bump ``DATASET_VERSION``.
SHIPPED_ANT_ACTIONS_DIGEST = "ca6a725b2aea"


def _portable_probe() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(256, 29)).astype(np.float32)


def _digest(*arrays: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[
        :12
    ]


def test_portable_actions_are_the_actors_deterministic_actions(policy_dir):
    """PortableActions = ``act(..., deterministic=True)`` up to the float32 actor's rounding, for the
    test's small actor and the shipped ant; the shipped ant's are the recorded bits; an
    actor that is not a ReLU MLP is refused."""
    from torchrl_dmg.datagen.antmaze.navigator import ant_policy_path
    from torchrl_dmg.datagen.behaviour.policy import PortableActions, act, load_behaviour_actor

    obs = _portable_probe()
    for path in (policy_dir / "antgoal.pt", ant_policy_path()):
        actor, _ = load_behaviour_actor(path)
        portable = PortableActions(actor)(obs)
        assert portable.dtype == np.float32 and portable.shape == (256, 8)
        np.testing.assert_allclose(portable, act(actor, obs, deterministic=True), atol=2e-5)
    assert _digest(portable) == SHIPPED_ANT_ACTIONS_DIGEST
    actor.module[0].module[0][1] = torch.nn.Tanh()  # the first activation, swapped
    with pytest.raises(ValueError, match="ReLU-MLP SAC actor"):
        PortableActions(actor)
    with pytest.raises(ValueError, match=r"expected observations \[B, 29\]"):
        PortableActions(load_behaviour_actor(ant_policy_path())[0])(obs[:, :28])


def test_the_shipped_ant_loads_and_its_record_holds_the_measurements():
    """torchrl_dmg/datagen/policies/antgoal.pt acts in AntMaze's 29-dim policy space, and
    policies.json records its step, open-space and per-maze navigator success."""
    from torchrl_dmg.datagen.antmaze.navigator import ant_policy_path
    from torchrl_dmg.datagen.behaviour.policy import act, load_behaviour_actor
    from torchrl_dmg.datagen.locomotion import POLICY_DIR

    actor, meta = load_behaviour_actor(ant_policy_path())
    assert (meta["obs_dim"], meta["act_dim"]) == (29, 8)
    action = act(actor, np.zeros(29, dtype=np.float32), deterministic=True)
    assert action.shape == (8,) and np.all(np.abs(action) <= 1.0)
    record = json.loads((POLICY_DIR / "policies.json").read_text())["antgoal"]
    assert record["checkpoint_step"] == meta["step"] and record["env"] == meta["env"]
    assert record["open_space"]["episodes"] >= 50
    assert 0.0 <= record["open_space"]["success_rate"] <= 1.0
    for maze in ("umaze", "medium", "large"):
        assert record["navigator"][maze]["episodes"] >= 50

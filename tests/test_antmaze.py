"""The AntMaze code path on a tiny locally generated (random-policy placeholder) dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from recipe_runner import run_recipe

ANTMAZE_ID = "local/antmaze/umaze-random-v1"
EPISODES, EPISODE_STEPS = 2, 100
# The antmaze family's data settings (recipes/config/family/antmaze.yaml).
ANTMAZE_DATA = {"obs_keys": ["achieved_goal", "observation"], "reward_shift": -1.0}


@pytest.fixture(scope="module")
def antmaze_root(tmp_path_factory) -> str:
    """A Minari root holding a tiny UMaze placeholder dataset (2 episodes x 100 steps)."""
    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.antmaze.datasets import generate_antmaze_dataset

    root = tmp_path_factory.mktemp("minari_antmaze")
    with minari_datasets_path(root):
        generate_antmaze_dataset(
            "umaze", num_steps=EPISODES * EPISODE_STEPS, episode_steps=EPISODE_STEPS, progress=False
        )
    return str(root)


@pytest.fixture
def antmaze_env(antmaze_root, monkeypatch) -> str:
    monkeypatch.setenv("MINARI_DATASETS_PATH", antmaze_root)
    return ANTMAZE_ID


def test_generated_dataset_has_antmaze_v4_layout(antmaze_env):
    import minari

    dataset = minari.load_dataset(antmaze_env)
    assert dataset.total_episodes == EPISODES and dataset.total_steps == EPISODES * EPISODE_STEPS
    assert dataset.spec.env_spec.id == "torchrl_dmg/AntMazeD4RL_UMaze-v0"
    meta = dataset.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (0.0, 1.0)
    for ep in dataset.iterate_episodes():
        obs = ep.observations
        n = len(ep.actions)
        assert n == EPISODE_STEPS
        assert obs["observation"].shape == (n + 1, 27)
        assert obs["achieved_goal"].shape == (n + 1, 2)
        assert obs["desired_goal"].shape == (n + 1, 2)
        assert ep.actions.shape == (n, 8)
        for x in (*obs.values(), ep.actions, ep.rewards):
            assert np.issubdtype(x.dtype, np.floating)
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert not ep.terminations.any()
        assert ep.truncations[-1] and not ep.truncations[:-1].any()
        assert set(np.unique(ep.rewards)) <= {0.0, 1.0}
        # fixed goal near the goal cell (1, 1) = (-4, 4), start near the reset cell (3, 1)
        assert np.all(obs["desired_goal"] == obs["desired_goal"][0])
        assert np.allclose(obs["desired_goal"][0], (-4.0, 4.0), atol=1.0)
        assert np.allclose(obs["achieved_goal"][0], (-4.0, -4.0), atol=1.0)
        assert obs["observation"][0, 0] == pytest.approx(0.75)  # torso height, not x/y


def test_generation_is_deterministic(antmaze_env, tmp_path):
    import minari

    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.antmaze.datasets import generate_antmaze_dataset

    with minari_datasets_path(tmp_path):
        generate_antmaze_dataset(
            "umaze", num_steps=EPISODE_STEPS, episode_steps=EPISODE_STEPS, progress=False
        )
        again = next(minari.load_dataset(ANTMAZE_ID).iterate_episodes())
    first = next(minari.load_dataset(antmaze_env).iterate_episodes())
    np.testing.assert_array_equal(first.actions, again.actions)
    for key in first.observations:
        np.testing.assert_array_equal(first.observations[key], again.observations[key])


def test_eval_env_terminates_with_reward_one_at_the_goal(antmaze_env):
    import minari

    env = minari.load_dataset(antmaze_env).recover_environment(eval_env=True)
    assert env.spec.kwargs["continuing_task"] is False and env.spec.max_episode_steps == 700
    env.reset(seed=0)
    base = env.unwrapped
    qpos = base.ant_env.data.qpos.copy()
    qpos[:2] = base.goal  # teleport the ant onto the goal
    base.ant_env.set_state(qpos, base.ant_env.data.qvel.copy())
    _, reward, terminated, truncated, info = env.step(np.zeros(8, dtype=np.float32))
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    env.close()


def test_antmaze_family_transitions_and_env_layout(antmaze_env):
    import minari

    from torchrl_dmg.data.offline import load_offline_dataset
    from torchrl_dmg.envs import make_env

    dataset = load_offline_dataset(antmaze_env, **ANTMAZE_DATA, progress=False)
    data = dataset.data
    assert data["observation"].shape == (EPISODES * EPISODE_STEPS, 29)
    assert data["observation"].dtype == torch.float32 and dataset.action_dim == 8
    raw = next(minari.load_dataset(antmaze_env).iterate_episodes())
    expected = np.concatenate(
        [raw.observations["achieved_goal"], raw.observations["observation"]], -1
    )
    torch.testing.assert_close(
        data["observation"][:EPISODE_STEPS], torch.tensor(expected[:-1]).float()
    )
    reward = data["next", "reward"][:EPISODE_STEPS, 0]
    torch.testing.assert_close(reward, torch.tensor(raw.rewards).float() - 1.0)
    assert not data["next", "terminated"].any()
    assert data["next", "truncated"].sum() == EPISODES
    assert dataset.normalized_score(np.array([0.0, 1.0])).tolist() == [0.0, 100.0]

    # the evaluation env concatenates the same keys in the same order: xy, then the ant state
    env = make_env(dataset)
    td = env.reset()
    obs = td["observation"]
    assert obs.shape == (29,) and obs.dtype == torch.float32
    assert torch.allclose(obs[:2], torch.tensor([-4.0, -4.0]), atol=1.0)
    assert obs[2].item() == pytest.approx(0.75)
    env.close()


def test_finetune_recipe_runs_on_antmaze(antmaze_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe(
        "finetune.py",
        run_dir,
        antmaze_root,
        "family=antmaze",
        f"dataset={ANTMAZE_ID}",
        "offline_steps=50",
        "online_steps=50",
        "network.num_cells=[32,32]",
        "batch_size=32",
        "eval.episodes=1",
        "eval.max_steps=20",
        "eval.interval=25",
        "logger.log_interval=25",
        "checkpoint_interval=0",
        "progress=false",
        base=(),
    )
    final = [line for line in proc.stdout.splitlines() if "FINAL" in line]
    assert final and final[-1].startswith(
        f"[dmg] FINAL dataset={ANTMAZE_ID} seed=0 online_steps=50 normalized_score="
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["family"] == "antmaze" and summary["dataset"] == ANTMAZE_ID
    assert summary["online_steps"] == 50 and summary["update_steps"] == 50
    assert 0.0 <= summary["normalized_score"] <= 100.0


# ------------------------------------------------------------------ D4RL's ant
def test_the_shipped_ant_model_has_d4rl_actuation_and_timestep():
    import gymnasium as gym

    from torchrl_dmg.datagen.antmaze.d4rl_ant import D4RL_ANTMAZE_IDS, register_d4rl_antmaze

    register_d4rl_antmaze()
    for maze, (env_id, limit) in D4RL_ANTMAZE_IDS.items():
        env = gym.make(env_id)
        ant = env.unwrapped.ant_env
        np.testing.assert_array_equal(ant.model.actuator_gear[:, 0], np.full(8, 30.0))
        assert ant.model.opt.timestep == 0.02 and ant.dt == pytest.approx(0.1)
        assert env.spec.max_episode_steps == limit == (700 if maze == "umaze" else 1000)
        obs, _ = env.reset(seed=0)
        assert obs["observation"].shape == (27,)  # no contact forces: the v4 / D4RL layout
        env.close()


def test_a_pickled_d4rl_antmaze_rebuilds_d4rls_ant():
    import pickle

    from torchrl_dmg.datagen.antmaze.d4rl_ant import D4RLAntMazeEnv

    env = D4RLAntMazeEnv()
    copy = pickle.loads(pickle.dumps(env))
    assert copy.ant_env.model.actuator_gear[0, 0] == 30.0
    assert copy.ant_env.model.opt.timestep == 0.02
    env.close()
    copy.close()


def test_an_env_spec_naming_the_stored_entry_point_builds_d4rls_ant():
    """A stored AntMaze dataset's env spec names ``torchrl_dmg.datagen.d4rl_ant:D4RLAntMazeEnv``;
    Minari rebuilds the env from that spec, so that entry point still makes D4RL's ant."""
    import gymnasium as gym

    from torchrl_dmg.datagen.antmaze.d4rl_ant import D4RL_ANTMAZE_IDS, D4RLAntMazeEnv

    env_id, limit = D4RL_ANTMAZE_IDS["umaze"]
    spec = gym.envs.registration.EnvSpec(
        env_id, entry_point="torchrl_dmg.datagen.d4rl_ant:D4RLAntMazeEnv", max_episode_steps=limit
    )
    env = gym.make(spec)
    assert isinstance(env.unwrapped, D4RLAntMazeEnv)
    assert env.unwrapped.ant_env.model.actuator_gear[0, 0] == 30.0
    env.close()


def test_retired_gear150_ids_fail_with_the_new_ids():
    from torchrl_dmg.data.offline import DatasetUnavailableError
    from torchrl_dmg.datagen.behaviour.tasks import resolve_env_name
    from torchrl_dmg.datagen.registry import ensure_dataset

    with pytest.raises(DatasetUnavailableError, match="retired.*local/antmaze/umaze-v3"):
        ensure_dataset("local/antmaze/umaze-v0", download=False)
    with pytest.raises(ValueError, match="retired.*env=antgoal"):
        resolve_env_name("torchrl_dmg/AntGoal-v1")


def test_retired_v2_ids_name_v3_unless_a_copy_is_stored(monkeypatch):
    """v2's data depended on the CPU that made them: an id with no stored copy fails with a
    line naming v3; a stored copy still serves its own runs (their fingerprints say which)."""
    from torchrl_dmg.data.offline import DatasetUnavailableError
    from torchrl_dmg.datagen import registry

    monkeypatch.setattr(registry, "is_complete", lambda dataset_id: False)
    with pytest.raises(
        DatasetUnavailableError, match=r"depended on the CPU.*local/antmaze/large-play-v3"
    ):
        registry.generator_for("local/antmaze/large-play-v2", False)
    monkeypatch.setattr(registry, "is_complete", lambda dataset_id: True)
    assert registry.generator_for("local/antmaze/large-play-v2", False)() == (
        "local/antmaze/large-play-v2"
    )
    assert registry.generator_for("local/antmaze/large-play-v3", False) is not None


def test_a_navigator_dataset_made_on_first_use_steps_its_episodes_on_every_core(monkeypatch):
    from torchrl_dmg.datagen import registry

    calls = []
    monkeypatch.setattr(
        registry, "generate_antmaze_navigator_dataset", lambda **kw: calls.append(kw) or "id"
    )
    registry.generator_for("local/antmaze/medium-play-onegoal-v3", False)()
    assert calls == [
        {
            "variant": "medium-play",
            "goal_rule": "onegoal",
            "dataset_id": "local/antmaze/medium-play-onegoal-v3",
            "progress": False,
            "workers": registry.FIRST_USE_WORKERS,
        }
    ]
    assert registry.FIRST_USE_WORKERS == min(os.cpu_count() or 1, 8)


# ------------------------------------------------------------------ Minari D4RL/antmaze v1
MINARI_V1_ID = "D4RL/antmaze/umaze-v1"


@pytest.fixture(scope="module")
def minari_v1_root(tmp_path_factory) -> str:
    """A Minari root with a tiny dataset in the format of Minari's ``D4RL/antmaze/*-v1``:
    dict observations, AntMaze_UMaze-v4 with ``continuing_task=True`` as both env and
    evaluation env (no termination, reward 1 on every step within 0.45 of the goal),
    terminations never set, truncation at the limit, reference scores that are returns
    (step counts at the goal), not success rates."""
    import gymnasium as gym
    import gymnasium_robotics
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from torchrl_dmg.data.local import minari_datasets_path

    gym.register_envs(gymnasium_robotics)
    maze_map = [
        [1, 1, 1, 1, 1],
        [1, "g", 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, "r", 0, 0, 1],
        [1, 1, 1, 1, 1],
    ]
    kwargs = dict(maze_map=maze_map, continuing_task=True, reset_target=False)
    env = gym.make("AntMaze_UMaze-v4", max_episode_steps=700, **kwargs)
    rng = np.random.default_rng(0)
    buffers = []
    for i, n in enumerate((30, 20)):
        obs, _ = env.reset(seed=i)
        observations = {k: [v] for k, v in obs.items()}
        actions = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        for a in actions:
            obs, *_ = env.step(a)
            for k, v in obs.items():
                observations[k].append(v)
        rewards = np.zeros(n)
        rewards[-5:] = 1.0  # as if the ant stood at the goal at the end (continuing reward)
        truncations = np.zeros(n, dtype=bool)
        truncations[-1] = True
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=i,
                observations={k: np.stack(v) for k, v in observations.items()},
                actions=actions,
                rewards=rewards,
                terminations=np.zeros(n, dtype=bool),
                truncations=truncations,
                infos={},
            )
        )
    root = tmp_path_factory.mktemp("minari_v1")
    with minari_datasets_path(root):
        minari.create_dataset_from_buffers(
            dataset_id=MINARI_V1_ID,
            buffer=buffers,
            env=env.spec,
            eval_env=env.spec,
            algorithm_name="fixture",
            ref_min_score=0.0,
            ref_max_score=400.0,
        )
    env.close()
    return str(root)


def test_minari_v1_antmaze_transitions_keep_the_shift_and_the_truncations(
    minari_v1_root, monkeypatch
):
    from torchrl_dmg.data.offline import load_offline_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_v1_root)
    dataset = load_offline_dataset(
        MINARI_V1_ID, obs_keys=ANTMAZE_DATA["obs_keys"], reward_shift=-1.0, progress=False
    )
    data = dataset.data
    assert data["observation"].shape == (50, 29)
    reward = data["next", "reward"].squeeze(-1)
    expected = torch.full((50,), -1.0)
    expected[25:30] = 0.0
    expected[45:50] = 0.0
    torch.testing.assert_close(reward, expected)  # r - 1: 0 at the goal, -1 elsewhere
    assert not data["next", "terminated"].any()  # continuing: never bootstrapped away
    truncated = data["next", "truncated"].squeeze(-1)
    assert truncated.nonzero().squeeze(-1).tolist() == [29, 49]
    assert torch.equal(data["next", "done"], data["next", "truncated"])
    assert dataset.success_scored


def test_goal_terminal_ends_the_steps_into_the_goal_as_d4rls_terminals_do(
    minari_v1_root, monkeypatch
):
    """The paper trains on D4RL's ``terminals``, set exactly where the reward is 1; Minari's
    v1 data never set terminations. ``goal_terminal`` restores D4RL's: those steps, and no
    other, are terminated (their target ``r - 1 = 0`` without bootstrap)."""
    from torchrl_dmg.data.offline import load_offline_dataset
    from torchrl_dmg.data.returns import monte_carlo_returns

    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_v1_root)
    dataset = load_offline_dataset(
        MINARI_V1_ID,
        obs_keys=ANTMAZE_DATA["obs_keys"],
        reward_shift=-1.0,
        goal_terminal=True,
        progress=False,
    )
    data = dataset.data
    assert dataset.goal_terminal
    at_goal = list(range(25, 30)) + list(range(45, 50))
    terminated = data["next", "terminated"].squeeze(-1)
    assert terminated.nonzero().squeeze(-1).tolist() == at_goal
    assert torch.equal(data["next", "reward"].squeeze(-1)[terminated], torch.zeros(10))
    done = data["next", "done"].squeeze(-1)
    assert torch.equal(done, terminated | data["next", "truncated"].squeeze(-1))
    assert data["next", "truncated"].squeeze(-1).nonzero().squeeze(-1).tolist() == [29, 49]
    # the return that follows a step just before the goal: -1, then 0 and nothing after
    returns = monte_carlo_returns(data, 0.99).squeeze(-1)
    assert returns[24].item() == pytest.approx(-1.0) and returns[25].item() == 0.0
    assert returns[0].item() == pytest.approx(-sum(0.99**k for k in range(25)), rel=1e-5)


def test_goal_terminal_is_off_unless_asked_and_reaches_the_loaded_dataset(
    minari_v1_root, monkeypatch
):
    """Off in every family (the recorded AntMaze runs were made without it); asked for, the
    recipes' loader marks the goal steps terminated."""
    from hydra import compose, initialize_config_dir
    from recipe_runner import ROOT
    from utils import load_dataset  # recipes/utils.py

    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_v1_root)
    families = ("antmaze", "pointmaze", "locomotion")
    with initialize_config_dir(str(ROOT / "recipes" / "config"), version_base="1.3"):
        cfgs = [compose("offline", overrides=[f"family={f}"]) for f in families]
        asked = compose(
            "offline",
            overrides=["family=antmaze", f"dataset={MINARI_V1_ID}", "data.goal_terminal=true"],
        )
    assert all(cfg.data.get("goal_terminal", False) is False for cfg in cfgs)
    dataset = load_dataset(asked, progress=False)
    assert dataset.goal_terminal and int(dataset.data["next", "terminated"].sum()) == 10


def test_minari_v1_antmaze_scores_the_success_rate_not_the_normalised_return(
    minari_v1_root, monkeypatch
):
    from tensordict import TensorDict

    from torchrl_dmg.data.offline import load_offline_dataset
    from torchrl_dmg.envs import episode_successes, evaluate_scores, make_env, summarize_returns

    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_v1_root)
    dataset = load_offline_dataset(
        MINARI_V1_ID, obs_keys=ANTMAZE_DATA["obs_keys"], reward_shift=-1.0, progress=False
    )
    # a continuing evaluation episode of 700 steps: at the goal from step 600 on, paid 1 on
    # each of its last 100 steps; a second one never there
    reward = torch.zeros(2, 700, 1)
    reward[0, 600:] = 1.0
    done = torch.zeros(2, 700, 1, dtype=torch.bool)
    done[:, -1] = True  # truncated at the limit
    rollout = TensorDict({"next": {"reward": reward, "done": done}}, batch_size=[2, 700])
    successes = episode_successes(rollout).numpy()
    returns = rollout["next", "reward"].sum((1, 2)).numpy()
    assert successes.tolist() == [1.0, 0.0]
    result = summarize_returns(returns, dataset, successes)
    assert result["normalized_score"] == 50.0  # (100 + 0) / 2: a success rate in percent
    assert result["return_mean"] == 50.0
    import minari

    minari_normalised = 100 * np.asarray(
        minari.get_normalized_score(dataset.minari_dataset, returns)
    )
    assert float(minari_normalised.mean()) == pytest.approx(12.5)  # not that
    assert dataset.reference.name == "success" and "success rate" in dataset.reference.describe()
    # the real continuing evaluation env: a still ant never reaches the goal -> 0
    env = make_env(dataset, num_envs=2)

    def still(td):
        return td.set("action", torch.zeros(*td.batch_size, 8))

    assert evaluate_scores(env, still, dataset, max_steps=20, seed=0)["normalized_score"] == 0.0
    env.close()

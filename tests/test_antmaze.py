"""The AntMaze code path on a tiny locally generated (random-policy placeholder) dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from recipe_runner import run_recipe

ANTMAZE_ID = "local/antmaze/umaze-random-v0"
EPISODES, EPISODE_STEPS = 2, 100
# The antmaze family's data settings (recipes/config/family/antmaze.yaml).
ANTMAZE_DATA = {"obs_keys": ["achieved_goal", "observation"], "reward_shift": -1.0}


@pytest.fixture(scope="module")
def antmaze_root(tmp_path_factory) -> str:
    """A Minari root holding a tiny UMaze placeholder dataset (2 episodes x 100 steps)."""
    from torchrl_dmg.data.antmaze import generate_antmaze_dataset
    from torchrl_dmg.data.local import minari_datasets_path

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
    assert dataset.spec.env_spec.id == "AntMaze_UMaze-v4"
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

    from torchrl_dmg.data.antmaze import generate_antmaze_dataset
    from torchrl_dmg.data.local import minari_datasets_path

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

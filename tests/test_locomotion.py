"""Local D4RL-style locomotion datasets (torchrl_dmg.datagen.locomotion), on tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrl_dmg.data.local import dataset_path, is_complete
from torchrl_dmg.datagen import locomotion
from torchrl_dmg.datagen.behaviour.tasks import D4RL_REF_SCORES
from torchrl_dmg.datagen.behaviour.transitions import TransitionStore
from torchrl_dmg.datagen.locomotion import generate_locomotion_dataset, locomotion_dataset_id
from torchrl_dmg.modules import make_sac_actor

OBS, ACT = 11, 3  # Hopper-v5


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path


@pytest.fixture()
def policy_dir(tmp_path):
    """Tiny stand-ins for the shipped hopper policies, in the checkpoint format."""
    out = tmp_path / "policies"
    out.mkdir()
    for level, step in (("medium", 40), ("expert", 100)):
        torch.manual_seed(step)
        actor = make_sac_actor(OBS, ACT, num_cells=(8, 8))
        torch.save(
            {
                "env": "Hopper-v5",
                "step": step,
                "obs_dim": OBS,
                "act_dim": ACT,
                "num_cells": [8, 8],
                "actor": actor.state_dict(),
                "eval_return_mean": 0.0,
                "eval_return_std": 0.0,
            },
            out / f"hopper-{level}.pt",
        )
    return out


def load(dataset_id):
    import minari

    return minari.load_dataset(dataset_id)


def check_episodes(dataset, total_steps):
    assert dataset.total_steps == total_steps
    steps = 0
    for ep in dataset.iterate_episodes():
        n = len(ep.rewards)
        assert ep.observations.shape == (n + 1, OBS) and ep.actions.shape == (n, ACT)
        ends = ep.terminations | ep.truncations
        assert ends[-1] and not ends[:-1].any()  # exactly one end, at the last step
        assert np.abs(ep.actions).max() <= 1.0
        steps += n
    assert steps == total_steps


@pytest.mark.parametrize("quality", ["random", "medium", "expert"])
def test_each_policy_quality_makes_a_loadable_dataset_with_d4rl_reference_scores(
    root, policy_dir, quality
):
    dataset_id = generate_locomotion_dataset(
        "hopper", quality, num_steps=300, progress=False, policy_dir=policy_dir
    )
    assert (
        dataset_id
        == locomotion_dataset_id("hopper", quality)
        == f"local/mujoco/hopper/{quality}-v0"
    )
    dataset = load(dataset_id)
    check_episodes(dataset, 300)
    meta = dataset.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == D4RL_REF_SCORES["hopper"]
    assert dataset.recover_environment(eval_env=True).spec.id == "Hopper-v5"
    assert meta["generator_params"]["quality"] == quality


def test_medium_expert_is_the_medium_and_expert_data_concatenated(root, policy_dir):
    kw = {"num_steps": 200, "progress": False, "policy_dir": policy_dir}
    both = load(generate_locomotion_dataset("hopper", "medium-expert", **kw))
    medium = load(generate_locomotion_dataset("hopper", "medium", **kw))
    expert = load(generate_locomotion_dataset("hopper", "expert", **kw))
    check_episodes(both, 400)
    actions = np.concatenate([ep.actions for ep in both.iterate_episodes()])
    parts = [np.concatenate([ep.actions for ep in d.iterate_episodes()]) for d in (medium, expert)]
    np.testing.assert_array_equal(actions, np.concatenate(parts))


def fake_sac_run(run):
    """60 transitions of a SAC run: episodes of 10 and 20 steps, then a running one."""
    store = TransitionStore(run / "transitions", OBS, ACT)
    n = 60
    rng = np.random.default_rng(0)
    terminated = np.zeros(n, dtype=bool)
    terminated[[9, 29]] = True  # episodes of 10, 20, then one cut by the checkpoint
    states = rng.normal(size=(n + 1, OBS))
    next_observation = states[1:].copy()  # inside an episode, next = the following row
    next_observation[terminated] = rng.normal(size=(2, OBS))  # a fall, then a reset state
    store.append(
        {
            "observation": states[:n],
            "action": rng.uniform(-1, 1, size=(n, ACT)),
            "reward": rng.normal(size=n),
            "next_observation": next_observation,
            "terminated": terminated,
            "truncated": np.zeros(n, dtype=bool),
            "step": np.arange(1, n + 1),
        }
    )


def test_medium_replay_is_the_sac_run_until_the_medium_checkpoint(root, policy_dir, tmp_path):
    run = tmp_path / "run"
    fake_sac_run(run)
    dataset = load(
        generate_locomotion_dataset(
            "hopper", "medium-replay", progress=False, policy_dir=policy_dir, behaviour_run=run
        )
    )
    check_episodes(dataset, 40)  # the medium checkpoint is at step 40
    lengths = [len(ep.rewards) for ep in dataset.iterate_episodes()]
    assert lengths == [10, 20, 10]
    last = list(dataset.iterate_episodes())[-1]
    assert last.truncations[-1] and not last.terminations[-1]


def test_a_packed_medium_replay_regenerates_the_same_dataset_without_the_run(
    root, policy_dir, tmp_path
):
    from torchrl_dmg.data.local import remove_dataset
    from torchrl_dmg.datagen.locomotion import pack_medium_replay

    run = tmp_path / "run"
    fake_sac_run(run)
    kw = {"progress": False, "policy_dir": policy_dir}
    from_run = load(generate_locomotion_dataset("hopper", "medium-replay", behaviour_run=run, **kw))
    episodes = [
        (
            ep.observations.copy(),
            ep.actions.copy(),
            ep.rewards.copy(),
            ep.terminations.copy(),
            ep.truncations.copy(),
        )
        for ep in from_run.iterate_episodes()
    ]
    packed = pack_medium_replay(run, "hopper", policy_dir=policy_dir)
    assert packed == policy_dir / "hopper-medium-replay.npz"
    remove_dataset("local/mujoco/hopper/medium-replay-v0")
    import shutil

    shutil.rmtree(run)
    again = load(generate_locomotion_dataset("hopper", "medium-replay", **kw))
    for old, ep in zip(episodes, again.iterate_episodes(), strict=True):
        new = (ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations)
        for a, b in zip(old, new, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_medium_replay_without_the_sac_run_says_how_to_make_it(root, policy_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="train_behaviour.py env=hopper"):
        generate_locomotion_dataset(
            "hopper", "medium-replay", policy_dir=policy_dir, behaviour_run=tmp_path / "none"
        )


def test_a_missing_behaviour_policy_or_bad_name_fails_early(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="No medium behaviour policy for hopper"):
        generate_locomotion_dataset("hopper", "medium", num_steps=10, policy_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown env 'ant'"):
        generate_locomotion_dataset("ant", "medium")
    with pytest.raises(ValueError, match="Unknown quality 'good'"):
        generate_locomotion_dataset("hopper", "good")


def test_same_seed_same_data_and_a_second_request_reuses_the_dataset(root, policy_dir):
    kw = {"num_steps": 120, "progress": False, "policy_dir": policy_dir}
    first = load(generate_locomotion_dataset("hopper", "medium", seed=3, **kw))
    actions = [ep.actions.copy() for ep in first.iterate_episodes()]
    data_file = dataset_path("local/mujoco/hopper/medium-v0") / "data" / "main_data.hdf5"
    mtime = data_file.stat().st_mtime_ns
    generate_locomotion_dataset("hopper", "medium", seed=3, **kw)
    assert data_file.stat().st_mtime_ns == mtime  # reused, not rebuilt
    again = load(generate_locomotion_dataset("hopper", "medium", seed=3, force=True, **kw))
    for a, b in zip(actions, (ep.actions for ep in again.iterate_episodes()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_interrupted_collection_leaves_nothing_that_loads(root, policy_dir, monkeypatch):
    real = locomotion._collect

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(locomotion, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_locomotion_dataset("hopper", "random", num_steps=50, progress=False)
    assert not is_complete("local/mujoco/hopper/random-v0")
    assert not dataset_path("local/mujoco/hopper/random-v0").exists()
    monkeypatch.setattr(locomotion, "_collect", real)
    generate_locomotion_dataset("hopper", "random", num_steps=50, progress=False)
    assert is_complete("local/mujoco/hopper/random-v0")


def test_a_corrupt_dataset_is_rebuilt_not_loaded(root):
    from torchrl_dmg.datagen.registry import ensure_dataset

    dataset_id = generate_locomotion_dataset("hopper", "random", num_steps=80, progress=False)
    data_file = dataset_path(dataset_id) / "data" / "main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[:1000])  # a half-copied file
    assert not is_complete(dataset_id)
    # the generator id pattern makes it again (at the default size: keep it small here)
    monkeypatch_steps = locomotion.DEFAULT_NUM_STEPS
    try:
        locomotion.DEFAULT_NUM_STEPS = 80
        dataset = ensure_dataset(dataset_id, download=False, progress=False)
    finally:
        locomotion.DEFAULT_NUM_STEPS = monkeypatch_steps
    assert dataset.total_steps == 80 and is_complete(dataset_id)


def test_batched_evaluation_returns_equal_a_plain_gymnasium_loop(root):
    """make_env(num_envs=N) + evaluate: copy i seeded seed + i (``set_seed`` resets it once
    with the seed, the rollout's reset follows), first episode's return; the copies that
    fall early (hopper terminates) are not stepped again (``SkipFinishedVectorEnv``), and the
    rollout stops when the last copy is done: the simulation runs each episode's own steps."""
    import gymnasium as gym
    from tensordict import TensorDict

    from torchrl_dmg.data.offline import load_offline_dataset
    from torchrl_dmg.envs import evaluate, make_env
    from torchrl_dmg.modules import make_dmg_networks

    dataset_id = generate_locomotion_dataset("hopper", "random", num_steps=500, progress=False)
    dataset = load_offline_dataset(dataset_id, normalize_obs=True, progress=False)
    torch.manual_seed(0)
    actor = make_dmg_networks(OBS, ACT, -1.0, 1.0, num_cells=(16, 16))[0]
    env = make_env(dataset, num_envs=3)
    stepped = []
    for copy in env.base_env._env.envs:
        real_step = copy.step

        def counted(action, real_step=real_step):
            stepped.append(1)
            return real_step(action)

        copy.step = counted
    returns = evaluate(env, actor, max_steps=200, seed=7)

    expected, lengths = [], []
    for i in range(3):
        env = gym.make("Hopper-v5", max_episode_steps=200)
        env.reset(seed=7 + i)
        obs, total, done = env.reset()[0], 0.0, False
        while not done:
            x = (torch.as_tensor(obs, dtype=torch.float32) - dataset.obs_loc) / dataset.obs_scale
            with torch.no_grad():
                action = actor(TensorDict({"observation": x[None]}, [1]))["action"][0]
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            total, done = total + reward, terminated or truncated
            lengths.append(1)
        expected.append(total)
    np.testing.assert_allclose(returns, expected, rtol=1e-4)
    assert len(stepped) == len(lengths) < 3 * 200  # random hoppers fall long before 200


def test_shipping_picks_the_best_checkpoint_as_expert_and_a_third_of_it_as_medium(tmp_path):
    import json

    from torchrl_dmg.datagen.locomotion import ship_behaviour_policies

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    returns = {10: 100.0, 20: 900.0, 30: 1500.0, 40: 3000.0, 50: 2500.0}
    lines = ["step,eval_return_mean"] + [f"{k},{v}" for k, v in returns.items()]
    (run / "progress.csv").write_text("\n".join(lines) + "\n")
    for step in returns:
        torch.manual_seed(step)
        actor = make_sac_actor(OBS, ACT, num_cells=(8, 8))
        ckpt = {"env": "Hopper-v5", "step": step, "obs_dim": OBS, "act_dim": ACT}
        ckpt.update(num_cells=[8, 8], actor=actor.state_dict())
        torch.save(ckpt, run / "checkpoints" / f"step_{step:08d}.pt")
    out = tmp_path / "policies"
    record = ship_behaviour_policies(run, "hopper", policy_dir=out, episodes=2, max_steps=20)
    assert record["hopper-expert"]["checkpoint_step"] == 40  # best return
    assert record["hopper-medium"]["checkpoint_step"] == 20  # 900 is closest to 3000 / 3
    assert json.loads((out / "policies.json").read_text()) == record
    assert torch.load(out / "hopper-medium.pt", weights_only=False)["step"] == 20
    assert record["hopper-medium"]["episodes"] == 2

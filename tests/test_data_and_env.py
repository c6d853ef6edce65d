"""Minari -> TensorDict loading, normalisation shared with the evaluation env, clear errors."""

from __future__ import annotations

import minari
import numpy as np
import pytest
import torch

from torchrl_dmg.data.offline import (
    DatasetUnavailableError,
    load_offline_dataset,
    load_transitions,
)
from torchrl_dmg.datagen.registry import ensure_dataset
from torchrl_dmg.envs import episode_returns, evaluate, make_env, max_episode_steps


def test_transitions_are_float32_with_observation_then_desired_goal(tiny_dataset_env):
    dataset = minari.load_dataset(tiny_dataset_env)
    data = load_transitions(dataset, ["observation", "desired_goal"])
    episode = next(dataset.iterate_episodes())
    n = len(episode.actions)
    expected = np.concatenate(
        [episode.observations["observation"], episode.observations["desired_goal"]], -1
    )
    assert data["observation"].dtype == torch.float32
    assert data["action"].dtype == torch.float32
    assert data["next", "reward"].dtype == torch.float32
    torch.testing.assert_close(data["observation"][:n], torch.as_tensor(expected[:n]).float())
    torch.testing.assert_close(
        data["next", "observation"][:n], torch.as_tensor(expected[1 : n + 1]).float()
    )
    assert data.shape[0] == dataset.total_steps


def test_episode_ends_are_truncations_and_done_is_their_union(tiny_dataset_env):
    data = load_transitions(minari.load_dataset(tiny_dataset_env), ["observation", "desired_goal"])
    assert not data["next", "terminated"].any()
    assert data["next", "truncated"].sum() == minari.load_dataset(tiny_dataset_env).total_episodes
    assert torch.equal(data["next", "done"], data["next", "terminated"] | data["next", "truncated"])


def test_the_fingerprint_names_the_stored_transitions_whatever_the_preprocessing(
    tiny_dataset_env,
):
    """One fingerprint for one set of transitions, normalised, shifted or not; a single
    changed value in any fingerprinted entry gives another."""
    from torchrl_dmg.data.offline import FINGERPRINT_KEYS, data_fingerprint

    raw = load_offline_dataset(tiny_dataset_env, progress=False)
    prepared = load_offline_dataset(
        tiny_dataset_env, normalize_obs=True, reward_shift=-1.0, goal_terminal=True, progress=False
    )
    assert (
        raw.fingerprint
        == prepared.fingerprint
        == data_fingerprint(
            load_transitions(minari.load_dataset(tiny_dataset_env), ["observation", "desired_goal"])
        )
    )
    assert raw.fingerprint.startswith("sha256:") and len(raw.fingerprint) == 7 + 16
    for key in FINGERPRINT_KEYS:
        changed = raw.data.clone()
        value = changed.get(key)
        value.view(-1)[3] = (
            ~value.view(-1)[3] if value.dtype == torch.bool else value.view(-1)[3] + 1e-3
        )
        assert data_fingerprint(changed) != raw.fingerprint, key


def test_dict_observations_need_obs_keys(tiny_dataset_env):
    with pytest.raises(ValueError, match="obs_keys"):
        load_transitions(minari.load_dataset(tiny_dataset_env), None)


def test_normalisation_uses_mean_and_std_plus_eps_and_is_applied_to_the_data(tiny_dataset_env):
    raw = load_offline_dataset(tiny_dataset_env, progress=False)
    norm = load_offline_dataset(tiny_dataset_env, normalize_obs=True, progress=False)
    obs = raw.data["observation"]
    torch.testing.assert_close(norm.obs_loc, obs.mean(0))
    torch.testing.assert_close(norm.obs_scale, obs.std(0) + 1e-3)
    torch.testing.assert_close(norm.data["observation"], (obs - norm.obs_loc) / norm.obs_scale)
    torch.testing.assert_close(
        norm.data["next", "observation"],
        (raw.data["next", "observation"] - norm.obs_loc) / norm.obs_scale,
    )


def test_eval_env_applies_the_same_flattening_and_normalisation(tiny_dataset_env):
    dataset = load_offline_dataset(tiny_dataset_env, normalize_obs=True, progress=False)
    env = make_env(dataset)
    td = env.reset(seed=0)
    raw_env = dataset.minari_dataset.recover_environment(eval_env=True)
    raw_obs, _ = raw_env.reset(seed=0)
    flat = np.concatenate([raw_obs["observation"], raw_obs["desired_goal"]])
    expected = (torch.as_tensor(flat, dtype=torch.float32) - dataset.obs_loc) / dataset.obs_scale
    assert td["observation"].dtype == torch.float32
    torch.testing.assert_close(td["observation"], expected)


def test_reward_shift_is_added_to_dataset_rewards_only(tiny_dataset_env):
    raw = load_offline_dataset(tiny_dataset_env, progress=False)
    shifted = load_offline_dataset(tiny_dataset_env, reward_shift=-1.0, progress=False)
    torch.testing.assert_close(shifted.data["next", "reward"], raw.data["next", "reward"] - 1.0)


def test_normalized_score_uses_the_reference_scores(tiny_dataset_env):
    dataset = load_offline_dataset(tiny_dataset_env, progress=False)
    meta = dataset.minari_dataset.storage.metadata
    lo, hi = meta["ref_min_score"], meta["ref_max_score"]
    assert dataset.has_reference_scores
    np.testing.assert_allclose(dataset.normalized_score(np.array([lo, hi])), [0.0, 100.0])


def test_episode_returns_count_only_the_first_episode_of_each_env():
    from tensordict import TensorDict

    reward = torch.tensor([[1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 2.0, 2.0]]).unsqueeze(-1)
    done = torch.tensor([[False, False, True, False], [False, False, False, True]]).unsqueeze(-1)
    rollout = TensorDict({("next", "reward"): reward, ("next", "done"): done}, batch_size=[2, 4])
    torch.testing.assert_close(episode_returns(rollout), torch.tensor([3.0, 8.0]))


def test_evaluate_runs_one_episode_per_env_copy(tiny_dataset_env):
    dataset = load_offline_dataset(tiny_dataset_env, normalize_obs=True, progress=False)
    env = make_env(dataset, num_envs=2)
    assert max_episode_steps(dataset) == 300

    def zero_policy(td):
        return td.set("action", torch.zeros(*td.batch_size, 2))

    returns = evaluate(env, zero_policy, max_steps=20, seed=0)
    assert returns.shape == (2,)


def test_unknown_dataset_without_download_fails_early_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(
        DatasetUnavailableError, match="mujoco/hopper/medium-v0.*not stored locally"
    ):
        ensure_dataset("mujoco/hopper/medium-v0", download=False)


def test_unreachable_remote_fails_fast_with_the_dataset_name(tmp_path, monkeypatch):
    import minari as minari_module

    import torchrl_dmg.data.offline as offline

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setattr(offline, "_reachable", lambda host, timeout=3.0: False)

    def no_download(*args, **kwargs):
        raise AssertionError("must not try to download when the remote is unreachable")

    monkeypatch.setattr(minari_module, "download_dataset", no_download)
    with pytest.raises(DatasetUnavailableError, match="unreachable.*mujoco/hopper/medium-v0"):
        ensure_dataset("mujoco/hopper/medium-v0", download=True)


def test_incomplete_local_dataset_is_reported_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    broken = tmp_path / "someone" / "broken-v0" / "data"
    broken.mkdir(parents=True)
    (broken / "main_data.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetUnavailableError, match="incomplete or corrupt"):
        ensure_dataset("someone/broken-v0", download=False)


def test_dataset_families_are_checked_early():
    from torchrl_dmg.data.offline import check_family, expected_family

    assert expected_family("local/mujoco/hopper/medium-v0") == "locomotion"
    assert expected_family("mujoco/walker2d/simple-v0") == "locomotion"
    assert expected_family("local/mujoco/hopper/medium-expert-v0") == "locomotion_expert"
    assert expected_family("mujoco/halfcheetah/expert-v0") == "locomotion_expert"
    assert expected_family("D4RL/antmaze/umaze-v1") == "antmaze"
    assert expected_family("local/antmaze/medium-play-v2") == "antmaze"
    assert expected_family("local/pointmaze/medium-v0") == "pointmaze"
    assert expected_family("someone/else/data-v0") is None
    check_family("local/mujoco/hopper/medium-v0", "locomotion")
    check_family("someone/else/data-v0", "pointmaze")
    with pytest.raises(ValueError, match="family=locomotion_expert"):
        check_family("local/mujoco/hopper/expert-v0", "locomotion")


def test_recipe_with_the_wrong_family_stops_before_any_work(tmp_path, minari_root):
    from recipe_runner import run_recipe

    proc = run_recipe("offline.py", tmp_path / "run", minari_root, "family=locomotion", check=False)
    assert proc.returncode != 0
    assert "takes the spec's 'pointmaze' settings, but family=locomotion" in proc.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_batched_eval_env_stays_on_the_cpu_and_a_policy_elsewhere_is_moved(tiny_dataset_env):
    """make_env(num_envs>1, device=cuda) keeps the vector env on the CPU (TorchRL's vector
    wrapper cannot take a CUDA reset mask); evaluate() wraps a policy on another device."""
    from tensordict.nn import TensorDictModule

    from torchrl_dmg.envs import PolicyOnDevice, policy_device

    dataset = load_offline_dataset(tiny_dataset_env, normalize_obs=True, progress=False)
    env = make_env(dataset, num_envs=2, device="cuda")  # builds without touching CUDA
    assert env.device == torch.device("cpu")
    policy = torch.nn.Linear(env.observation_spec["observation"].shape[-1], 2)
    module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    assert policy_device(module) == torch.device("cpu")
    moved = PolicyOnDevice(module, "cpu")
    td = env.reset()
    out = moved(td.clone())
    assert out["action"].shape == (2, 2) and out["action"].device == td.device
    returns = evaluate(env, moved, max_steps=5, seed=0)
    assert returns.shape == (2,)


def test_eval_copies_in_processes_give_the_same_returns(tiny_dataset_env):
    """make_env(processes=True): Gymnasium's AsyncVectorEnv, one process per copy, runs the
    same seeded episodes as the in-process vector env."""
    dataset = load_offline_dataset(tiny_dataset_env, normalize_obs=True, progress=False)

    def policy(td):
        obs = td["observation"]
        return td.set("action", torch.tanh(obs[..., :2] - obs[..., 2:4]))

    returns, observations = {}, {}
    for processes in (False, True):
        env = make_env(dataset, num_envs=3, processes=processes)
        returns[processes] = evaluate(env, policy, max_steps=60, seed=5)
        env.set_seed(5)
        rollout = env.rollout(30, policy, break_when_any_done=False)
        observations[processes] = rollout["next", "observation"]
        env.close()
    np.testing.assert_allclose(returns[True], returns[False])
    torch.testing.assert_close(observations[True], observations[False])
    assert not torch.allclose(observations[True][0], observations[True][1])  # seeded apart


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "/",
        "///",
        "local",
        "local/pointmaze",
        "../x-v0",
        "/abs/x-v0",
        "a//b-v0",
        "hopper medium",
        "local/./x-v0",
        "local/pointmaze/",
    ],
)
def test_malformed_dataset_ids_are_refused_before_any_file_is_touched(tmp_path, bad_id):
    from torchrl_dmg.data.local import (
        InvalidDatasetIdError,
        building_dataset,
        remove_dataset,
    )

    keep = tmp_path / "local" / "pointmaze" / "umaze-v0" / "data"
    keep.mkdir(parents=True)
    (keep / "metadata.json").write_text("{}")
    for call in (
        lambda: remove_dataset(bad_id, tmp_path),
        lambda: building_dataset(bad_id, tmp_path).__enter__(),
        lambda: ensure_dataset(bad_id, download=False),
    ):
        with pytest.raises(InvalidDatasetIdError, match="invalid dataset id"):
            call()
    assert (keep / "metadata.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]


def test_make_dataset_with_a_namespace_as_id_deletes_nothing(tmp_path):
    import subprocess
    import sys

    keep = tmp_path / "local" / "pointmaze" / "umaze-v0" / "data"
    keep.mkdir(parents=True)
    (keep / "metadata.json").write_text("{}")
    for bad in ("local", "/"):
        proc = subprocess.run(
            [
                sys.executable,
                "recipes/make_dataset.py",
                f"dataset_id={bad}",
                f"hydra.run.dir={tmp_path}/out",
            ],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "MINARI_DATASETS_PATH": str(tmp_path)},
            cwd=__import__("pathlib").Path(__file__).parents[1],
        )
        assert proc.returncode != 0
        assert "invalid dataset id" in proc.stderr.strip().splitlines()[-1]
        assert (keep / "metadata.json").is_file()


@pytest.mark.parametrize("key", ["goal_rule=onegoal", "workers=2"])
def test_make_dataset_refuses_an_antmaze_setting_for_locomotion(tmp_path, key):
    """An AntMaze-only setting asked of a locomotion dataset fails in one line, before any
    data are made, instead of being ignored."""
    from recipe_runner import run_recipe

    proc = run_recipe(
        "make_dataset.py", tmp_path / "run", str(tmp_path), "env=hopper", key, base=(), check=False
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{key} applies to AntMaze only" in last and "drop it" in last
    assert not (tmp_path / "local").exists()


def test_a_dataset_directory_holding_other_things_is_never_deleted(tmp_path):
    from torchrl_dmg.data.local import InvalidDatasetIdError, remove_dataset

    odd = tmp_path / "ns" / "x-v0"
    (odd / "data").mkdir(parents=True)
    (odd / "y-v0").mkdir()
    with pytest.raises(InvalidDatasetIdError, match="refusing to delete"):
        remove_dataset("ns/x-v0", tmp_path)
    assert (odd / "y-v0").is_dir()


def test_an_unknown_local_id_lists_the_ones_the_project_makes(tmp_path, monkeypatch):
    from torchrl_dmg.datagen.registry import generator_for as _generator_for
    from torchrl_dmg.datagen.registry import local_dataset_ids

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(
        DatasetUnavailableError, match="unknown local dataset.*local/pointmaze/medium-v0"
    ):
        ensure_dataset("local/pointmaze/huge-v0", download=False)
    assert all(_generator_for(i, False) is not None for i in local_dataset_ids())


def test_a_second_maker_of_the_same_dataset_waits_and_reuses_the_first_ones(tmp_path, monkeypatch):
    import threading

    import torchrl_dmg.datagen.registry as registry
    from torchrl_dmg.data.local import dataset_lock

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    made = []
    # the generators return at once when a complete copy exists: model that
    monkeypatch.setattr(
        registry,
        "generator_for",
        lambda dataset_id, progress: lambda: made.append(dataset_id) if not made else None,
    )
    second = threading.Thread(target=registry.make_if_missing, args=("local/pointmaze/umaze-v0",))
    with dataset_lock("local/pointmaze/umaze-v0", notify=False):  # a first maker at work
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive()  # blocked on the lock, not building its own copy
        made.append("first")
    second.join()
    assert made == ["first"]  # the second found the first one's dataset


def test_a_wrong_family_is_one_line_without_a_traceback(tmp_path, minari_root):
    from recipe_runner import run_recipe

    proc = run_recipe("offline.py", tmp_path / "run", minari_root, "family=locomotion", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "family=pointmaze" in proc.stderr.strip().splitlines()[-1]


_GENERATORS_PROBE = """
import hashlib
import numpy as np
from torchrl_dmg.datagen import pointmaze as pm
from torchrl_dmg.datagen.antmaze.datasets import navigate_episodes
from torchrl_dmg.datagen.antmaze.navigator import ant_policy_path, load_ant_policy

def digest(arrays):
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()

actor, _ = load_ant_policy(ant_policy_path())
episodes = navigate_episodes("large", "play", [30] * 4, 0, 0, actor, 0.2)
print("antmaze", digest([np.stack(ep["actions"]) for ep in episodes]
                        + [np.stack(ep["observations"]["observation"]) for ep in episodes]))
settings = dict(kp=pm.DEFAULT_KP, kd=pm.DEFAULT_KD, noise=pm.DEFAULT_NOISE, max_episode_steps=600,
                split_on_success=True, max_dwell=pm.DEFAULT_MAX_DWELL)
_, data = pm._collect_with_controller("medium", 2000, 0, settings, False)
print("pointmaze", digest([v for _, v in sorted(data.items()) if isinstance(v, np.ndarray)]))
"""


def test_antmaze_and_pointmaze_data_do_not_depend_on_the_cpus_arithmetic():
    """The AntMaze navigator's episodes (the shipped ant, large-play) and the PointMaze
    controller's transitions are the same bits under another CPU's arithmetic as one machine
    imitates it (:data:`cpu_variants.CPU_VARIANTS`: MKL's reproducible kernels alone changed
    the AntMaze v2 data) as under the defaults (docs/datasets.md, "Same seed, same data")."""
    from cpu_variants import outputs_on_cpu_variants

    runs = outputs_on_cpu_variants(_GENERATORS_PROBE)
    assert runs[0] == runs[1]
    assert [line.split()[0] for line in runs[0].splitlines()] == ["antmaze", "pointmaze"]

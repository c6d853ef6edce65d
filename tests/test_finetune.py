"""Offline-to-online fine-tuning: schedules, replay buffer, exploration, online env, recipe."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from recipe_runner import TINY, read_metrics, run_recipe
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from utils import finetune_schedule, load_finetune_dataset, make_online_updater  # recipes/utils.py

from torchrl_dmg.data.offline import DatasetUnavailableError, load_offline_dataset
from torchrl_dmg.data.samplers import OfflineFractionSampler, make_finetune_buffer
from torchrl_dmg.envs import make_online_env, max_episode_steps
from torchrl_dmg.modules import RolloutActor, make_dmg_networks, make_exploration_policy
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.training import DMGUpdater, FinetuneSchedule
from torchrl_dmg.training.online import (
    crossed,
    finished_episode_returns,
    make_collector,
    online_data,
    to_transitions,
)


def tiny_loss(obs_dim: int = 4, action_dim: int = 2, **kwargs) -> DMGLoss:
    actor, qvalue, value = make_dmg_networks(obs_dim, action_dim, -1.0, 1.0, num_cells=(8, 8))
    return DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0), deactivate_vmap=True, **kwargs)


def transitions(n: int, marker: float, obs_dim: int = 4, action_dim: int = 2) -> TensorDict:
    """``n`` transitions whose observations are all ``marker`` (to tell where a sample came from)."""
    false = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": torch.full((n, obs_dim), marker),
            "action": torch.zeros(n, action_dim),
            "next": {
                "observation": torch.full((n, obs_dim), marker),
                "reward": torch.zeros(n, 1),
                "terminated": false.clone(),
                "truncated": false.clone(),
                "done": false.clone(),
            },
        },
        batch_size=[n],
    )


# ---------------------------------------------------------------- schedules
def test_schedules_follow_the_spec_formulas():
    s = FinetuneSchedule(mixture_start=0.25, mixture_end=0.5, penalty_start=0.5, penalty_end=0.005)
    assert s.mixture_coef(0) == pytest.approx(0.25) and s.penalty_coef(0) == pytest.approx(0.5)
    assert s.mixture_coef(999) == pytest.approx(0.25)  # d_t steps every 1000 gradient steps
    assert s.decay_factor(1000) == pytest.approx(0.99)
    assert s.mixture_coef(1000) == pytest.approx(0.5 - 0.25 * 0.99)
    assert s.penalty_coef(1000) == pytest.approx(0.005 + 0.495 * 0.99)
    assert s.mixture_coef(100_000) == pytest.approx(0.41, abs=0.005)
    assert s.penalty_coef(100_000) == pytest.approx(0.19, abs=0.005)
    assert s.mixture_coef(10**7) == pytest.approx(0.5)
    assert s.penalty_coef(10**7) == pytest.approx(0.005)


def test_schedule_values_reach_the_loss_buffers_in_place():
    loss = tiny_loss(mixture_coef=0.25, penalty_coef=0.5)
    buffers = (loss.mixture_coef, loss.penalty_coef)
    coefs = FinetuneSchedule().apply(loss, 100_000)
    assert loss.mixture_coef.item() == pytest.approx(coefs["mixture_coef"])
    assert loss.penalty_coef.item() == pytest.approx(coefs["penalty_coef"])
    assert loss.mixture_coef is buffers[0] and loss.penalty_coef is buffers[1]  # not rebuilt
    # and they are what the critic target uses: λ = 1 vs λ_t give different targets
    batch = transitions(8, 0.3)
    batch["next", "reward"] = torch.randn(8, 1)
    torch.manual_seed(0)
    _, md_t = loss.qvalue_loss(batch)
    loss.set_coefficients(mixture_coef=1.0)
    torch.manual_seed(0)
    _, md_1 = loss.qvalue_loss(batch)
    assert not torch.allclose(md_t["target_value"], md_1["target_value"])


def test_schedule_start_values_default_to_the_offline_coefficients():
    cfg = OmegaConf.create(
        {
            "loss": {"mixture_coef": 0.25, "penalty_coef": 0.1},
            "schedule": {
                "mixture_start": None,
                "mixture_end": 0.5,
                "penalty_start": None,
                "penalty_end": 0.005,
                "decay": 0.99,
                "interval": 1000,
            },
        }
    )
    s = finetune_schedule(cfg)
    assert (s.mixture_start, s.penalty_start) == (0.25, 0.1)


def test_events_fire_when_a_batch_crosses_an_interval():
    assert crossed(1000, 1, 1000) and not crossed(999, 1, 1000)
    assert crossed(1002, 4, 1000) and not crossed(1006, 4, 1000)
    assert not crossed(1000, 1, 0)


# ---------------------------------------------------------------- replay buffer
def test_buffer_holds_offline_and_online_data_and_samples_both_uniformly():
    buffer = make_finetune_buffer(transitions(300, 0.0), online_capacity=100, batch_size=4000)
    buffer.extend(to_transitions(transitions(100, 1.0)))
    assert len(buffer) == 400
    online = buffer.sample()["observation"][:, 0]
    assert set(online.unique().tolist()) == {0.0, 1.0}
    assert online.mean().item() == pytest.approx(0.25, abs=0.04)  # uniform over the union
    assert torch.equal(online_data(buffer, 300)["observation"], torch.ones(100, 4))


def test_offline_fraction_fixes_the_share_of_offline_samples():
    buffer = make_finetune_buffer(
        transitions(300, 0.0), online_capacity=100, batch_size=256, offline_fraction=0.75
    )
    assert isinstance(buffer.sampler, OfflineFractionSampler)
    assert buffer.sample()["observation"].abs().sum() == 0  # only offline data so far
    buffer.extend(transitions(10, 1.0))
    sample = buffer.sample()["observation"][:, 0]
    assert (sample == 0).sum().item() == 192 and (sample == 1).sum().item() == 64


def test_online_transitions_get_the_offline_reward_shift():
    batch = transitions(5, 0.5)
    batch["next", "reward"] = torch.ones(5, 1, dtype=torch.float64)
    out = to_transitions(batch, reward_shift=-1.0)
    assert out["next", "reward"].dtype == torch.float32
    assert torch.equal(out["next", "reward"], torch.zeros(5, 1))


def test_online_steps_into_the_goal_are_terminal_like_the_offline_ones():
    batch = transitions(4, 0.5)
    batch["next", "reward"] = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    batch["next", "truncated"][3] = True
    batch["next", "done"][3] = True
    out = to_transitions(batch, reward_shift=-1.0, goal_terminal=True)
    assert out["next", "terminated"].squeeze(-1).tolist() == [False, True, True, False]
    assert out["next", "done"].squeeze(-1).tolist() == [False, True, True, True]
    assert out["next", "reward"].squeeze(-1).tolist() == [-1.0, 0.0, 0.0, -1.0]
    assert not to_transitions(batch, reward_shift=-1.0)["next", "terminated"].any()


# ---------------------------------------------------------------- exploration
def constant_actor(value: float, action_dim: int = 2) -> TensorDictModule:
    return TensorDictModule(
        lambda obs: torch.full((*obs.shape[:-1], action_dim), value),
        in_keys=["observation"],
        out_keys=["action"],
    )


@pytest.mark.parametrize("max_action", [1.0, 2.0])
def test_exploration_noise_has_the_configured_scale(max_action):
    spec = Bounded(-max_action, max_action, shape=(2,))
    policy = make_exploration_policy(constant_actor(0.0), spec, noise=0.1)
    td = TensorDict({"observation": torch.zeros(20_000, 3)}, batch_size=[20_000])
    with set_exploration_type(ExplorationType.RANDOM):
        action = policy(td)["action"]
    assert action.mean().item() == pytest.approx(0.0, abs=0.01 * max_action)
    assert action.std().item() == pytest.approx(0.1 * max_action, rel=0.03)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert policy(td)["action"].abs().max() == 0  # evaluation: no noise


def test_exploration_respects_the_action_bounds():
    spec = Bounded(-1.0, 1.0, shape=(2,))
    policy = make_exploration_policy(constant_actor(0.98), spec, noise=0.1)
    td = TensorDict({"observation": torch.zeros(20_000, 3)}, batch_size=[20_000])
    with set_exploration_type(ExplorationType.RANDOM):
        action = policy(td)["action"]
    assert action.max().item() <= 1.0 and action.min().item() >= -1.0
    assert (action == 1.0).float().mean() > 0.3  # clipped, not resampled


def test_rollout_actor_acts_with_the_current_weights():
    loss = tiny_loss()
    actor = RolloutActor(loss)
    td = TensorDict({"observation": torch.randn(5, 4)}, batch_size=[5])
    before = actor(td.clone())["action"]
    with torch.no_grad():
        for p in loss.actor_network_params.values(True, True):
            p.add_(0.5)
    assert not torch.allclose(before, actor(td.clone())["action"])


# ---------------------------------------------------------------- updater
def test_online_updater_keeps_the_offline_state_with_a_constant_actor_lr():
    loss = tiny_loss()
    offline = DMGUpdater(loss, lr=3e-4, actor_cosine_steps=10)
    batch = transitions(16, 0.1)
    for _ in range(20):
        offline.update(batch)
    assert offline.actor_lr < 1e-6  # the end of the offline cosine schedule
    cfg = OmegaConf.create(
        {
            "optim": {"lr": 3e-4, "tau": 0.005, "policy_freq": 2, "actor_cosine": True},
            "compile": {"mode": "eager", "skip_guards": None, "matmul_precision": "highest"},
        }
    )
    online = make_online_updater(loss, cfg, offline.state_dict())
    assert online.scheduler is None and online.actor_lr == pytest.approx(3e-4)
    assert online.num_updates == 20
    assert online.optim_actor.state_dict()["state"]  # Adam moments carried over
    for _ in range(4):
        online.update(batch)
    assert online.actor_lr == pytest.approx(3e-4)


# ---------------------------------------------------------------- data and env
def test_unavailable_antmaze_fails_early_and_names_the_local_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    cfg = OmegaConf.create(
        {
            "dataset": "D4RL/antmaze/medium-play-v1",
            "data": {
                "obs_keys": ["achieved_goal", "observation"],
                "normalize_obs": False,
                "reward_shift": -1.0,
                "download": False,
            },
        }
    )
    with pytest.raises(DatasetUnavailableError, match="dataset=local/antmaze/medium-play-v3"):
        load_finetune_dataset(cfg, progress=False)


def test_finetune_defaults_are_local_antmaze_umaze_at_the_demo_budget():
    """No arguments: the local AntMaze umaze data, antmaze family, the CPU demo budget;
    ``budget=paper`` is the paper's 1M + 1M."""
    from hydra import compose, initialize_config_dir
    from recipe_runner import ROOT

    with initialize_config_dir(str(ROOT / "recipes" / "config"), version_base="1.3"):
        cfg = compose("finetune")
        paper = compose("finetune", overrides=["budget=paper"])
    assert cfg.dataset == "local/antmaze/umaze-v3" and cfg.family == "antmaze"
    assert cfg.budget == "demo" and cfg.offline_steps < 1_000_000
    assert cfg.utd == 1 and cfg.loss.expectile == 0.9 and cfg.data.reward_shift == -1.0
    assert paper.budget == "paper" and paper.online_steps == paper.offline_steps == 1_000_000
    assert paper.eval.episodes == 100 and paper.eval.interval == 50_000


def test_online_env_collects_transitions_that_fit_the_offline_buffer(tiny_dataset_env):
    dataset = load_offline_dataset(
        tiny_dataset_env,
        obs_keys=["observation", "desired_goal"],
        normalize_obs=True,
        progress=False,
    )
    loss = tiny_loss(dataset.obs_dim, dataset.action_dim)
    env = make_online_env(dataset)
    horizon = max_episode_steps(dataset, eval_env=False)
    policy = make_exploration_policy(RolloutActor(loss), env.action_spec)
    collector = make_collector(env, policy, total_frames=horizon + 5, frames_per_batch=horizon + 5)
    collector.set_seed(0)
    batch = next(iter(collector))
    collector.shutdown()
    online = to_transitions(batch)
    offline = dataset.data.exclude("episode")
    assert set(online.keys(True, True)) == set(offline.keys(True, True))
    for key in online.keys(True, True):
        assert (
            online[key].dtype == offline[key].dtype
            and online[key].shape[1:] == offline[key].shape[1:]
        )
    # the time limit truncates, it never terminates
    assert online["next", "truncated"].any() and not online["next", "terminated"].any()
    assert len(finished_episode_returns(batch)) == int(online["next", "done"].sum())
    buffer = make_finetune_buffer(dataset.data, online_capacity=len(online), batch_size=64)
    buffer.extend(online)
    assert len(buffer) == len(offline) + len(online)


# ---------------------------------------------------------------- the recipe
def test_finetune_recipe_runs_offline_then_online(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    proc = run_recipe(
        "finetune.py",
        run_dir,
        minari_root,
        "offline_steps=40",
        "online_steps=60",
        "eval.interval=30",
        "logger.log_interval=20",
        "checkpoint_interval=30",
        "schedule.interval=20",
    )
    assert "FINAL dataset=local/pointmaze/umaze-v0 seed=0 online_steps=60 normalized_score=" in (
        proc.stdout
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["online_steps"] == 60 and summary["update_steps"] == 60
    schedule = FinetuneSchedule(mixture_start=0.25, penalty_start=0.1, interval=20)
    assert summary["mixture_coef"] == pytest.approx(schedule.mixture_coef(59))
    assert summary["penalty_coef"] == pytest.approx(schedule.penalty_coef(59))
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [0, 30, 60]
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [20, 40, 60]
    lambdas = [float(r["mixture_coef"]) for r in rows if r["kind"] == "train"]
    assert lambdas == sorted(lambdas) and lambdas[0] < lambdas[-1]  # λ_t rises
    offline = torch.load(run_dir / "offline" / "checkpoint.pt", weights_only=False)
    assert offline["step"] == 40 and offline["updater"]["num_updates"] == 40
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 60 and ckpt["update_step"] == 60
    assert ckpt["updater"]["num_updates"] == 100  # offline + online updates
    assert ckpt["online_data"].shape[0] == 60
    assert ckpt["updater"]["optim_actor"]["param_groups"][0]["lr"] == pytest.approx(3e-4)
    assert not list(run_dir.glob("*.tmp"))
    # the run's log: its data, every evaluation of the online phase, how the session ended
    messages = [
        line.split(" ", 1)[1] for line in (run_dir / "finetune.log").read_text().splitlines()
    ]
    assert f"({summary['dataset_fingerprint']})" in messages[0]
    evals = [m.split(":")[0] for m in messages if m.startswith("[dmg] online step ")]
    assert evals == ["[dmg] online step 0", "[dmg] online step 30", "[dmg] online step 60"]
    assert "FINAL dataset=local/pointmaze/umaze-v0 seed=0 online_steps=60" in messages[-3]
    assert messages[-1].startswith("[dmg] session finished after ")


def test_finetune_starts_from_an_offline_recipe_checkpoint(tmp_path, minari_root):
    offline_dir = tmp_path / "offline"
    run_recipe(
        "offline.py",
        offline_dir,
        minari_root,
        "steps=20",
        "eval.interval=0",
        "eval.episodes=3",
        "network.num_cells=[16,16]",
    )
    run_dir = tmp_path / "finetune"
    proc = run_recipe(
        "finetune.py",
        run_dir,
        minari_root,
        f"checkpoint={offline_dir}",
        "online_steps=20",
        "eval.interval=0",
        "logger.log_interval=10",
        base=[o for o in TINY if not o.startswith(("eval.episodes", "family"))],
    )
    assert "starting from the offline checkpoint" in proc.stdout
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert list(cfg.network.num_cells) == [16, 16]  # the checkpoint's networks, not [32, 32]
    # the checkpoint's family and its evaluation settings, not the default AntMaze ones;
    # eval keys given on the command line win
    assert cfg.family == "pointmaze" and cfg.loss.expectile == 0.7
    assert cfg.eval.episodes == 3 and cfg.eval.interval == 0
    assert not (run_dir / "offline").exists()  # no offline phase was run
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["updater"]["num_updates"] == 40


def test_finetune_picks_one_agent_of_a_seed_stacked_checkpoint(tmp_path, minari_root):
    offline_dir = tmp_path / "offline"
    run_recipe(
        "offline.py", offline_dir, minari_root, "seed=5", "seeds=2", "steps=20", "eval.interval=0"
    )
    args = (f"checkpoint={offline_dir}", "online_steps=20", "eval.interval=0")
    proc = run_recipe("finetune.py", tmp_path / "nope", minari_root, *args, check=False)
    assert proc.returncode != 0
    assert "checkpoint_seed=<one of [5, 6]>" in proc.stderr + proc.stdout
    run_dir = tmp_path / "finetune"
    proc = run_recipe("finetune.py", run_dir, minari_root, *args, "checkpoint_seed=6")
    assert "starting from the offline checkpoint" in proc.stdout
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["updater"]["num_updates"] == 40


def test_resume_continues_the_online_phase_from_the_saved_step(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    run_recipe(
        "finetune.py",
        run_dir,
        minari_root,
        "offline_steps=20",
        "online_steps=40",
        "eval.interval=0",
        "logger.log_interval=20",
    )
    first = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    proc = run_recipe(
        "finetune.py",
        tmp_path / "hydra",
        minari_root,
        f"resume={run_dir}",
        "online_steps=80",
    )
    assert "resumed" in proc.stdout and "at online step 40" in proc.stdout
    assert "offline phase" not in proc.stdout  # nothing redone
    second = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert second["step"] == 80 and second["update_step"] == 80
    assert second["updater"]["num_updates"] == 100
    # the first 40 online transitions are the ones collected before the interruption
    assert torch.equal(second["online_data"][:40]["action"], first["online_data"]["action"])
    assert second["online_data"].shape[0] == 80
    actor_state = second["updater"]["optim_actor"]["state"]
    assert float(next(iter(actor_state.values()))["step"]) == 50  # Adam kept counting
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [20, 40, 60, 80]
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [0, 40, 80]

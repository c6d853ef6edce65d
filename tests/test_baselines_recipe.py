"""``algo=`` through ``recipes/offline.py``, the actor's cosine horizon, IQL's reward scale."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from recipe_runner import read_metrics, run_recipe
from tensordict import TensorDict
from utils import actor_cosine_steps, make_updater

from torchrl_dmg.data.rewards import episode_returns, iql_reward_scale, scale_rewards
from torchrl_dmg.objectives.baselines import make_iql_loss


@pytest.mark.parametrize("algo", ["dmg", "iql", "td3bc", "bc"])
def test_each_algo_runs_with_stacked_seeds_and_logs_the_diagnostic(tmp_path, minari_root, algo):
    run_dir = tmp_path / "run"
    proc = run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        f"algo={algo}",
        "seeds=2",
        "steps=40",
        "eval.interval=0",
        "logger.log_interval=20",
    )
    assert "seeds=[0, 1] steps=40 normalized_score mean over seeds" in proc.stdout
    assert f"algo={algo}" in proc.stdout
    assert json.loads((run_dir / "summary.json").read_text())["algo"] == algo
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["algo"] == algo
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [int(r["step"]) for r in train] == [20, 40]
    for row in train:
        assert math.isfinite(float(row["mc_return_mean"]))
        assert math.isfinite(float(row["loss_actor"]))
        if algo == "bc":  # no critic, no Q
            assert "q_data_mean" not in row
        else:
            q = [float(row[f"q_data_mean/s{s}"]) for s in (0, 1)]
            assert float(row["q_data_mean"]) == pytest.approx(sum(q) / 2, rel=1e-5)
            assert row["q_out_of_bounds"] == "0.0"


def test_a_baseline_run_resumes_with_its_optimisers(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    common = ("algo=td3bc", "eval.interval=0", "logger.log_interval=20")
    run_recipe("offline.py", run_dir, minari_root, *common, "steps=40")
    proc = run_recipe("offline.py", run_dir, minari_root, f"resume={run_dir}", "steps=60")
    assert "at step 40" in proc.stdout and "algo=td3bc" in proc.stdout
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert set(k for k in ckpt["updater"] if k.startswith("optim_")) == {
        "optim_qvalue",
        "optim_actor",
    }
    # TD3+BC: the actor every second step, 30 actor steps in 60
    assert float(next(iter(ckpt["updater"]["optim_actor"]["state"].values()))["step"]) == 30
    assert [int(r["step"]) for r in read_metrics(run_dir) if r["kind"] == "train"] == [20, 40, 60]


def test_an_unknown_algo_fails_early(tmp_path, minari_root):
    proc = run_recipe("offline.py", tmp_path / "run", minari_root, "algo=cql", check=False)
    assert proc.returncode != 0 and "algo" in proc.stderr


# ---------------------------------------------------------------- the actor's cosine horizon
def cosine_cfg(**optim):
    base = {"lr": 1e-3, "tau": 0.005, "policy_freq": 2, "actor_cosine": True}
    compile_ = {"mode": "eager", "skip_guards": None, "matmul_precision": "highest"}
    return OmegaConf.create({"optim": {**base, **optim}, "compile": compile_})


def test_the_actor_lr_anneals_over_the_fixed_horizon_whatever_the_run_length():
    cfg = cosine_cfg(actor_cosine_horizon=8)
    assert actor_cosine_steps(cfg, 1_000_000) == 8 and actor_cosine_steps(cfg, 20) == 8
    loss = make_iql_loss(3, 2, -torch.ones(2), torch.ones(2), num_cells=(8,))
    updater = make_updater(cfg, loss, steps=20)  # a run of 20 steps: 10 actor updates
    batch = TensorDict(
        {
            "observation": torch.randn(4, 3),
            "action": torch.rand(4, 2) * 2 - 1,
            "next": {
                "observation": torch.randn(4, 3),
                "reward": torch.zeros(4, 1),
                "terminated": torch.zeros(4, 1, dtype=torch.bool),
                "done": torch.zeros(4, 1, dtype=torch.bool),
            },
        },
        [4],
    )
    lrs = []
    for _ in range(8):  # 8 updates, 4 actor updates
        updater.update(batch)
        lrs.append(updater.actor_lr)
    expected = [1e-3 * (1 + math.cos(math.pi * k / 8)) / 2 for k in (0, 1, 1, 2, 2, 3, 3, 4)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(5e-4)  # half way through the horizon, not near 0


def test_the_paper_horizon_is_the_default_and_null_is_the_runs_own_steps():
    defaults = OmegaConf.load("recipes/config/offline.yaml")
    assert defaults.optim.actor_cosine_horizon == 500_000
    assert actor_cosine_steps(cosine_cfg(actor_cosine_horizon=None), 20_000) == 10_000
    assert actor_cosine_steps(cosine_cfg(actor_cosine=False), 20_000) is None
    assert actor_cosine_steps(cosine_cfg(actor_cosine_horizon=500_000), None) is None


# ---------------------------------------------------------------- IQL's reward scale
def episodes() -> TensorDict:
    """Two episodes: returns 1 + 2 = 3 (terminated) and 5 + 5 + 5 = 15 (truncated)."""
    done = torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool).unsqueeze(-1)
    return TensorDict(
        {
            "next": {
                "reward": torch.tensor([1.0, 2.0, 5.0, 5.0, 5.0]).unsqueeze(-1),
                "terminated": torch.tensor([0, 1, 0, 0, 0], dtype=torch.bool).unsqueeze(-1),
                "done": done,
            }
        },
        [5],
    )


def test_iql_scales_rewards_by_1000_over_the_spread_of_episode_returns():
    data = episodes()
    assert episode_returns(data).tolist() == [3.0, 15.0]
    assert iql_reward_scale(data) == pytest.approx(1000 / 12)
    assert scale_rewards(data, "iql") == pytest.approx(1000 / 12)
    assert data["next", "reward"][0].item() == pytest.approx(1000 / 12)
    assert scale_rewards(data, None) == 1.0

"""Fine-tuning IQL, the paper's Table 4 baseline: ``python recipes/finetune.py algo=iql``."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from algos import exploration_policy  # recipes/algos.py
from omegaconf import OmegaConf
from recipe_runner import ROOT, TINY, read_metrics, run_recipe
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_dmg.modules import RolloutActor
from torchrl_dmg.objectives.baselines import make_iql_loss

sys.path.insert(0, str(ROOT / "benchmarks"))  # fault_injection

#: TINY without its family: a checkpoint brings its own
BASE = [o for o in TINY if not o.startswith("family")]


@pytest.fixture(scope="module")
def iql_offline(tmp_path_factory, minari_root):
    """A tiny offline IQL run (20 steps) with a non-default expectile."""
    run_dir = tmp_path_factory.mktemp("iql") / "offline"
    run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        "algo=iql",
        "steps=20",
        "eval.interval=0",
        "iql.expectile=0.8",
    )
    return run_dir


def test_iql_finetunes_from_an_offline_iql_run(tmp_path, minari_root, iql_offline):
    run_dir = tmp_path / "ft"
    proc = run_recipe(
        "finetune.py",
        run_dir,
        minari_root,
        "algo=iql",
        f"checkpoint={iql_offline}",
        "online_steps=40",
        "eval.interval=20",
        "logger.log_interval=10",
        base=BASE,
    )
    assert "starting from the offline checkpoint" in proc.stdout
    final = [line for line in proc.stdout.splitlines() if "FINAL" in line]
    assert len(final) == 1 and "algo=iql" in final[0]
    assert final[0].startswith(
        "[dmg] FINAL dataset=local/pointmaze/umaze-v0 seed=0 online_steps=40 normalized_score="
    )
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [0, 20, 40]
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [10, 20, 30, 40]
    assert "mixture_coef" not in rows[0]  # no λ/ν schedule: it is DMG's
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.algo == "iql" and cfg.iql.expectile == 0.8  # the checkpoint's settings
    assert cfg.optim.policy_freq == 1  # IQL's actor steps at every update
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["updater"]["num_updates"] == 20 + 40
    assert ckpt["schedule"] == {"t": 40}
    assert ckpt["updater"]["optim_actor"]["param_groups"][0]["lr"] == pytest.approx(3e-4)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "iql" and summary["update_steps"] == 40


def test_iql_explores_by_sampling_its_actor_and_evaluates_deterministically():
    low, high = -torch.ones(2), torch.ones(2)
    loss = make_iql_loss(4, 2, low, high, num_cells=(8, 8))
    policy = exploration_policy("iql", RolloutActor(loss), Bounded(low, high, shape=(2,)), 0.1)
    td = TensorDict({"observation": torch.zeros(1000, 4)}, batch_size=[1000])
    with set_exploration_type(ExplorationType.RANDOM):  # a collector's
        sampled = policy(td.clone())["action"]
    with set_exploration_type(ExplorationType.DETERMINISTIC):  # evaluation's
        mode = policy(td.clone())["action"]
    assert sampled.std(0).min() > 0.1  # one state, many actions
    assert (sampled.abs() == 1.0).any()  # samples beyond the bounds, clipped
    assert mode.std(0).max() == 0
    assert sampled.abs().max() <= 1.0


def test_a_checkpoint_of_another_algo_is_refused_in_one_line(tmp_path, minari_root, iql_offline):
    proc = run_recipe(
        "finetune.py", tmp_path / "ft", minari_root, f"checkpoint={iql_offline}", check=False
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "algo=iql" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("algo", ["td3bc", "bc"])
def test_offline_only_baselines_are_refused_in_one_line(tmp_path, minari_root, algo):
    proc = run_recipe("finetune.py", tmp_path / "ft", minari_root, f"algo={algo}", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and f"algo={algo}" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_killed_iql_finetuning_resumes_bit_identical_with_every_row_once(tmp_path, minari_root):
    from fault_injection import run_trials

    trials = run_trials(  # killed between moving the old checkpoint aside and the new in place
        ["finetune_iql"],
        1,
        workdir=tmp_path,
        minari_root=minari_root,
        points=("ckpt-swap",),
        extra=("compile.mode=eager",),  # the checkpoint's atomicity, the same in every mode
        log=lambda s: None,
    )
    assert [t.kills for t in trials] == [1]
    assert all(t.identical and t.rows_once for t in trials), trials

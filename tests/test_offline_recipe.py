"""Smoke tests of ``recipes/offline.py`` on a tiny generated PointMaze dataset."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import torch
from recipe_runner import read_metrics, run_recipe


def test_offline_recipe_trains_evaluates_and_records_the_run(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    proc = run_recipe(
        "offline.py", run_dir, minari_root, "steps=60", "eval.interval=30", "logger.log_interval=20"
    )
    assert "FINAL dataset=local/pointmaze/umaze-v0 seed=0 steps=60 normalized_score=" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dataset"] == "local/pointmaze/umaze-v0"
    assert summary["seed"] == 0 and summary["steps"] == 60
    assert (run_dir / "config.yaml").exists()
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [30, 60]
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [20, 40, 60]
    assert all(r["normalized_score"] != "" for r in rows if r["kind"] == "eval")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 60
    assert ckpt["updater"]["num_updates"] == 60
    assert ckpt["dataset_id"] == "local/pointmaze/umaze-v0"
    assert not list(run_dir.glob("*.tmp"))
    assert summary["plot"] == str(run_dir / "scores.png")
    assert (run_dir / "scores.png").read_bytes().startswith(b"\x89PNG")
    # the run names the data it trained on and the machine it ran on
    from torchrl_dmg.data.offline import data_fingerprint, load_offline_dataset

    os.environ["MINARI_DATASETS_PATH"] = minari_root
    data = load_offline_dataset("local/pointmaze/umaze-v0", progress=False).data
    assert summary["dataset_fingerprint"] == data_fingerprint(data) == ckpt["dataset_fingerprint"]
    assert summary["transitions"] == len(data)
    assert summary["machine"]["cpu"] and summary["machine"]["torch_threads"] == 1
    assert f"({summary['dataset_fingerprint']})" in proc.stdout
    # ... and its log says the same, every line stamped with the UTC time
    log = log_lines(run_dir / "offline.log")
    assert f"({summary['dataset_fingerprint']})" in log[0][1] and "seeds=[0]" in log[0][1]
    assert any(m.startswith("[dmg] machine: ") and summary["machine"]["cpu"] in m for _, m in log)
    evals = [m for _, m in log if m.startswith("[dmg] step ")]  # the last one: FINAL below
    assert len(evals) == 1 and evals[0].startswith("[dmg] step 30: normalized_score=")
    assert sum("FINAL dataset=local/pointmaze/umaze-v0 seed=0 steps=60" in m for _, m in log) == 1
    assert log[-1][1].startswith("[dmg] session finished after ")
    assert "machine: " not in proc.stdout  # the console shows what it showed before


def log_lines(path) -> list[tuple[datetime, str]]:
    """A run log's lines as (UTC time, message); fails on a line without its stamp."""
    lines = []
    for line in path.read_text().splitlines():
        stamp, message = line.split(" ", 1)
        lines.append((datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"), message))
    return lines


def test_resume_continues_from_the_checkpointed_step(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    run_recipe(
        "offline.py", run_dir, minari_root, "steps=40", "eval.interval=0", "logger.log_interval=20"
    )
    first = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    proc = run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        f"resume={run_dir}",
        "steps=80",
        "logger.log_interval=20",
    )
    assert "resumed" in proc.stdout and "at step 40" in proc.stdout
    second = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert second["step"] == 80 and second["updater"]["num_updates"] == 80
    # the optimiser state carried over: Adam's step counter kept counting
    actor_state = second["updater"]["optim_actor"]["state"]
    assert float(next(iter(actor_state.values()))["step"]) == 40
    assert first["updater"]["optim_actor"]["state"]
    steps = [int(r["step"]) for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert steps == [20, 40, 60, 80]
    # the run's log holds both sessions, in order: the resume appended to it
    messages = [m for _, m in log_lines(run_dir / "offline.log")]
    sessions = [i for i, m in enumerate(messages) if m.startswith("[dmg] session finished")]
    assert len(sessions) == 2 and sessions[1] == len(messages) - 1
    assert [m for m in messages if m.startswith("[dmg] resumed")] == [
        f"[dmg] resumed {run_dir} at step 40"
    ]
    assert messages.index(f"[dmg] resumed {run_dir} at step 40") > sessions[0]
    from torchrl_dmg.recording import machine_info, read_run_log

    recorded = read_run_log(run_dir / "offline.log")  # what the report's run-time table reads
    assert [s.ending for s in recorded] == ["finished", "finished"]
    assert all(s.wall_s > 0 and s.machine.startswith(machine_info()["cpu"]) for s in recorded)
    assert recorded[0].last <= recorded[1].start


def test_the_default_compiled_mode_trains_and_resumes_as_eager_does(tmp_path, minari_root):
    """compile.mode=auto (the default: the whole iteration compiled, guards skipped after
    warm-up) logs eager's losses for the same seed, and a resumed compiled run (which warms
    up again) continues as the uninterrupted eager run."""
    eager, compiled = tmp_path / "eager", tmp_path / "auto"
    common = ("eval.interval=0", "logger.log_interval=20")
    # auto on a CPU: two iterations per compiled call, which draws both batches at once;
    # eager is given the same K (it runs the same update_many loop, uncompiled)
    run_recipe("offline.py", eager, minari_root, "steps=80", "compile.updates_per_call=2", *common)
    first = run_recipe(
        "offline.py", compiled, minari_root, "steps=40", "compile.mode=auto", *common
    )
    assert "resolved to compile, 2 iteration(s) per call" in first.stdout
    proc = run_recipe(
        "offline.py",
        compiled,
        minari_root,
        f"resume={compiled}",
        "steps=80",
        "compile.mode=auto",
        *common,
    )
    assert "at step 40" in proc.stdout
    rows = {
        name: [r for r in read_metrics(d) if r["kind"] == "train"]
        for name, d in (("eager", eager), ("auto", compiled))
    }
    assert [r["step"] for r in rows["auto"]] == ["20", "40", "60", "80"]
    for a, b in zip(rows["eager"], rows["auto"], strict=True):
        for key in ("loss_value", "loss_qvalue", "loss_actor", "state_action_value"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3, abs=1e-5), (
                a["step"],
                key,
            )


def test_auto_iterations_per_call_are_two_only_where_a_compiled_cpu_run_allows_them():
    """compile.updates_per_call=auto: 2 for one seed compiled on a CPU when the steps, the
    start, every interval and policy_freq are compatible; 1 otherwise; a number stands."""
    import sys

    from omegaconf import OmegaConf
    from recipe_runner import ROOT

    sys.path.insert(0, str(ROOT / "recipes"))
    from utils import updates_per_call

    cpu = torch.device("cpu")

    def k(start=0, **changes):
        cfg = {
            "compile": {"updates_per_call": "auto", "mode": "auto"},
            "seeds": 1,
            "steps": 1000,
            "optim": {"policy_freq": 2},
            "logger": {"log_interval": 100},
            "eval": {"interval": 500},
            "checkpoint": {"interval": 0},
        }
        for dotted, value in changes.items():
            node = cfg
            *path, last = dotted.split("__")
            for name in path:
                node = node[name]
            node[last] = value
        return updates_per_call(OmegaConf.create(cfg), cpu, start)

    assert k() == 2
    assert k(compile__mode="compile") == 2
    assert k(optim__policy_freq=1) == 2
    assert k(compile__mode="eager") == 1
    assert k(seeds=5) == 1
    assert k(steps=1001) == 1
    assert k(start=7) == 1
    assert k(logger__log_interval=25) == 1
    assert k(eval__interval=5) == 1
    assert k(checkpoint__interval=333) == 1
    assert k(optim__policy_freq=3) == 1
    assert k(compile__updates_per_call=8) == 8
    assert k(compile__updates_per_call=1) == 1


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_logger_backends_mirror_the_metrics(tmp_path, minari_root, backend):
    run_dir = tmp_path / "run"
    run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        "steps=20",
        "eval.interval=0",
        f"logger.backend={backend}",
    )
    assert (run_dir / "metrics.csv").exists()
    produced = list((run_dir / ("tb" if backend == "tensorboard" else "wandb")).rglob("*"))
    assert produced, f"{backend} wrote nothing"


def test_several_seeds_train_at_once_and_report_each_seed(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    proc = run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        "seed=3",
        "seeds=3",
        "steps=40",
        "eval.interval=20",
        "logger.log_interval=20",
    )
    for seed in (3, 4, 5):
        assert f"FINAL dataset=local/pointmaze/umaze-v0 seed={seed} steps=40" in proc.stdout
    assert "seeds=[3, 4, 5] steps=40 normalized_score mean over seeds" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == [3, 4, 5]
    per_seed = [summary[f"normalized_score/s{s}"] for s in (3, 4, 5)]
    assert summary["normalized_score"] == pytest.approx(sum(per_seed) / 3)
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    assert [int(r["step"]) for r in evals] == [20, 40]
    assert all(r["normalized_score/s5"] != "" for r in evals)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    stacked = ckpt["updater"]["stacked"]
    assert stacked.batch_size == torch.Size([3])
    # different seeds, different agents
    weights = stacked["actor_network_params", "module", "0", "module", "0", "weight"]
    assert not torch.allclose(weights[0], weights[1])

    proc = run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        f"resume={run_dir}",
        "steps=60",
        "logger.log_interval=20",
    )
    assert "at step 40" in proc.stdout
    resumed = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 60 and resumed["updater"]["stacked"].batch_size == torch.Size([3])


def test_several_iterations_per_call_train_log_and_checkpoint_on_their_steps(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        "steps=48",
        "seeds=2",
        "eval.interval=24",
        "checkpoint.interval=16",
        "logger.log_interval=8",
        "compile.updates_per_call=8",
    )
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [8, 16, 24, 32, 40, 48]
    assert [int(r["step"]) for r in rows if r["kind"] == "eval"] == [24, 48]
    train = [r for r in rows if r["kind"] == "train"]
    assert all(r["loss_actor"] != "" and r["loss_qvalue"] != "" for r in train)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 48 and ckpt["updater"]["num_updates"] == 48


def test_iterations_per_call_that_do_not_divide_the_intervals_fail_early(tmp_path, minari_root):
    proc = run_recipe(
        "offline.py",
        tmp_path / "run",
        minari_root,
        "steps=60",
        "eval.interval=30",
        "compile.updates_per_call=8",
        check=False,
    )
    assert proc.returncode != 0
    assert "updates_per_call=8" in proc.stderr and "'steps': 60" in proc.stderr


def test_value_init_mc_starts_the_critics_at_the_datas_monte_carlo_return(tmp_path, minari_root):
    """``network.value_init=mc``: Q on the diagnostic sample starts at the data's mean
    Monte-Carlo return (r - 1 rewards: far below 0, where a default network starts)."""
    run_dir = tmp_path / "run"
    run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        "steps=2",
        "eval.interval=0",
        "logger.log_interval=2",
        "data.reward_shift=-1.0",
        "network.value_init=mc",
    )
    row = next(r for r in read_metrics(run_dir) if r["kind"] == "train")
    mc, q = float(row["mc_return_mean"]), float(row["q_data_mean"])
    assert mc < -10  # the tiny data's r - 1 returns (a default network starts near 0)
    assert abs(q - mc) < 0.05 * abs(mc), (q, mc)


def test_value_init_mc_is_the_mean_discounted_return_of_the_training_data():
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from utils import value_init

    # two episodes: rewards (-1, -1, 0) terminated, then (-1, -1) truncated
    reward = torch.tensor([-1.0, -1.0, 0.0, -1.0, -1.0]).reshape(5, 1)
    terminated = torch.tensor([0, 0, 1, 0, 0], dtype=torch.bool).reshape(5, 1)
    done = torch.tensor([0, 0, 1, 0, 1], dtype=torch.bool).reshape(5, 1)
    data = TensorDict(
        {"next": {"reward": reward, "terminated": terminated, "done": done}}, batch_size=[5]
    )
    g = 0.5
    expected = [-1 - g, -1, 0, -1 - g, -1]
    dataset = type("D", (), {"data": data})()
    cfg = OmegaConf.create({"algo": "dmg", "network": {"value_init": "mc"}, "loss": {"gamma": g}})
    assert value_init(cfg, dataset) == pytest.approx(sum(expected) / 5)
    cfg.network.value_init = -7
    assert value_init(cfg, dataset) == -7.0
    cfg.network.value_init = None
    assert value_init(cfg, dataset) is None

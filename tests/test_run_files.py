"""One checkpoint format (recipe and format fields, earlier formats migrated on load) and one
process per run directory."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_runner import ROOT, run_recipe
from tensordict import TensorDict

from torchrl_dmg.errors import RunRefused
from torchrl_dmg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    lock_run_dir,
    migrate,
)


def offline_run(run_dir: Path, minari_root: str, steps: int = 40) -> dict:
    run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        f"steps={steps}",
        "eval.interval=0",
        "logger.log_interval=20",
    )
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def to_format_0(state: dict) -> dict:
    """``state`` as checkpoints were written before the format field: no recipe or format
    field, γ as the loss's ``gamma`` buffer, and a config without the keys that came
    later."""
    state = dict(state)
    del state["recipe"], state["format"]
    loss = state["updater"]["loss"]
    loss["gamma"] = loss.pop("_value_estimator.gamma")
    config = state["config"]
    for key in ("seeds", "diagnostic", "guard"):
        del config[key]
    del config["network"]["value_init"], config["compile"]["matmul_precision"]
    del config["compile"]["updates_per_call"], config["data"]["check_family"]
    return state


def files(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ---------------------------------------------------------------- one checkpoint format
def test_checkpoints_name_their_recipe_and_format(tmp_path, minari_root):
    state = offline_run(tmp_path / "run", minari_root)
    assert state["recipe"] == "offline" and state["format"] == CHECKPOINT_FORMAT


def test_an_old_format_checkpoint_migrates_and_resumes(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    new = offline_run(run_dir, minari_root)
    (run_dir / "checkpoint.prev.pt").unlink(missing_ok=True)
    torch.save(
        to_format_0(torch.load(run_dir / "checkpoint.pt", weights_only=False)),
        run_dir / "checkpoint.pt",
    )

    migrated = load_checkpoint(run_dir / "checkpoint.pt")
    assert migrated["recipe"] == "offline" and migrated["format"] == CHECKPOINT_FORMAT
    assert torch.equal(
        migrated["updater"]["loss"]["_value_estimator.gamma"],
        new["updater"]["loss"]["_value_estimator.gamma"],
    )
    assert migrated["config"]["seeds"] == 1 and migrated["config"]["network"]["value_init"] is None

    proc = run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        f"resume={run_dir}",
        "steps=60",
        "logger.log_interval=20",
    )
    assert "resumed" in proc.stdout and "at step 40" in proc.stdout
    resumed = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 60 and resumed["format"] == CHECKPOINT_FORMAT


def test_a_seed_stacked_format_0_checkpoint_moves_gamma_into_the_value_estimator():
    stacked = TensorDict({"gamma": torch.full((3,), 0.99), "mixture_coef": torch.ones(3)}, [3])
    state = {"step": 1, "updater": {"stacked": stacked, "num_updates": 1}, "config": {}}
    migrate(state)
    assert ("_value_estimator", "gamma") in state["updater"]["stacked"].keys(True)
    assert "gamma" not in state["updater"]["stacked"].keys()
    assert state["recipe"] == "offline" and state["config"]["seeds"] == 1


def test_a_format_0_finetune_checkpoint_is_recognised_by_its_online_data():
    state = {"step": 1, "update_step": 1, "online_data": None, "updater": {}, "config": {}}
    assert migrate(state)["recipe"] == "finetune"
    assert "seeds" not in state["config"]  # an offline key only


def test_a_format_1_iql_checkpoint_ran_with_the_tanh_normal_actor():
    """IQL's actor became its authors' Gaussian (iql.actor=gaussian) in format 2: an IQL
    checkpoint written before reads as the TanhNormal actor it holds; other algorithms
    get no iql group."""
    iql = migrate(
        {
            "format": 1,
            "recipe": "offline",
            "step": 1,
            "updater": {},
            "config": {"algo": "iql", "iql": {"expectile": 0.9}},
        }
    )
    assert iql["config"]["iql"] == {"expectile": 0.9, "actor": "tanh_normal"}
    assert iql["format"] == CHECKPOINT_FORMAT
    dmg = migrate(
        {"format": 1, "recipe": "offline", "step": 1, "updater": {}, "config": {"algo": "dmg"}}
    )
    assert "iql" not in dmg["config"]


def test_a_baseline_config_loses_the_dmg_loss_group_and_keeps_its_gamma():
    config = {"algo": "bc", "loss": {"gamma": 0.95, "mixture_coef": 0.25}}
    state = migrate({"step": 1, "updater": {}, "config": config})
    assert "loss" not in state["config"] and state["config"]["bc"] == {"gamma": 0.95}


# ---------------------------------------------------------------- one process per run directory
def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A process that owns ``run_dir`` (as a run in flight does) until it is killed."""
    code = (
        "import sys, time\n"
        "from torchrl_dmg.training.checkpoint import lock_run_dir\n"
        "lock_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(RunRefused, match=f"in use by process {holder.pid}"):
            lock_run_dir(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_into_a_busy_run_directory_refuses_in_one_line(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    offline_run(run_dir, minari_root)
    before = files(run_dir)
    holder = hold_lock(run_dir)  # the first run, still writing
    try:
        for args in ((), (f"resume={run_dir}", "steps=60")):
            proc = run_recipe("offline.py", run_dir, minari_root, *args, check=False)
            assert proc.returncode == 2
            (line,) = [line for line in proc.stderr.splitlines() if "error" in line]
            assert f"is in use by process {holder.pid}" in line and "Traceback" not in proc.stderr
        assert files(run_dir) == before  # the first run's files whole
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_does_not_block_its_resume(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    offline_run(run_dir, minari_root)
    holder = hold_lock(run_dir)
    os.kill(holder.pid, signal.SIGKILL)  # kill -9: the lock file stays, naming a dead PID
    holder.wait()
    assert (run_dir / ".lock").read_text() == str(holder.pid)
    proc = run_recipe(
        "offline.py",
        run_dir,
        minari_root,
        f"resume={run_dir}",
        "steps=60",
        "logger.log_interval=20",
    )
    assert "at step 40" in proc.stdout
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 60


def test_the_run_log_appends_stamped_lines_and_a_failed_write_is_said_once(
    tmp_path, capsys, monkeypatch
):
    from torchrl_dmg.recording import close_run_log, open_run_log, say

    path = tmp_path / "offline.log"
    path.write_text("2026-01-01T00:00:00Z [dmg] an earlier session\n")
    open_run_log(path)
    try:
        say("[dmg] shown and kept")
        say("[dmg] kept only", echo=False)
        assert capsys.readouterr().out == "[dmg] shown and kept\n"
        lines = path.read_text().splitlines()
        assert lines[0] == "2026-01-01T00:00:00Z [dmg] an earlier session"  # appended to
        assert [line.split(" ", 1)[1] for line in lines[1:]] == [
            "[dmg] shown and kept",
            "[dmg] kept only",
        ]
        assert all(len(line.split(" ", 1)[0]) == len("2026-01-01T00:00:00Z") for line in lines)

        # a full disk: one warning on stderr, the run goes on, the messages still printed
        import logging

        from torchrl_dmg.recording import RUN_LOGGER

        (handler,) = logging.getLogger(RUN_LOGGER).handlers

        def full(*_):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(handler.stream, "write", full)
        say("[dmg] a")
        say("[dmg] b")
        captured = capsys.readouterr()
        assert captured.out == "[dmg] a\n[dmg] b\n"
        warnings = [line for line in captured.err.splitlines() if line]
        assert len(warnings) == 1 and "cannot write the run log" in warnings[0]
        assert "No space left on device" in warnings[0]
    finally:
        close_run_log()
    say("[dmg] no log open")  # printed, written nowhere
    assert len(path.read_text().splitlines()) == 3

"""Reliability: start-up validation, run-directory checks, safe checkpoints, NaN stop,
SIGTERM, deterministic fine-tuning and exact resume."""

from __future__ import annotations

import errno
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from recipe_runner import ROOT, TINY, read_metrics, run_recipe

from torchrl_dmg.errors import (
    CheckpointWriteError,
    RunInterrupted,
    RunRefused,
    TrainingDiverged,
)
from torchrl_dmg.training.checkpoint import (
    load_checkpoint_safely,
    previous_path,
    save_checkpoint_safely,
)
from torchrl_dmg.training.guards import StopRequest

sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import schema  # noqa: E402  (recipes/schema.py, beside the recipes)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` and its hash; the run directory's lock file, which
    names the process that last owned it (no run data), left out."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


# ---------------------------------------------------------------- the schema
def config(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "recipes" / "config"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("name", ["offline", "finetune", "train_behaviour", "make_dataset"])
def test_default_configs_pass_the_schema(name):
    cfg = config(name)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    schema.validate(cfg, name)


def test_mixture_coef_outside_the_unit_interval_is_refused_with_key_range_and_fix():
    with pytest.raises(RunRefused) as err:
        schema.validate(config("offline", "loss.mixture_coef=1.5"), "offline")
    assert "loss.mixture_coef=1.5" in str(err.value)
    assert "[0, 1]" in str(err.value) and "λ" in str(err.value)
    assert "e.g. loss.mixture_coef=0.25" in str(err.value)


@pytest.mark.parametrize(
    "override",
    [
        "loss.expectile=1.0",
        "loss.penalty_coef=-1",
        "loss.temperature=0",
        "steps=0",
        "checkpoint.interval=-5",
        "eval.episodes=0",
        "optim.lr=-1",
        "device=banana",
    ],
)
def test_each_out_of_range_value_is_refused_naming_its_key(override):
    with pytest.raises(RunRefused, match=override.split("=")[0].replace(".", r"\.")):
        schema.validate(config("offline", override), "offline")


@pytest.mark.parametrize(
    "overrides",
    [
        ("algo=iql", "iql.expectile=1.0"),
        ("algo=iql", "iql.temperature=0"),
        ("algo=iql", "iql.actor=beta"),
        ("algo=td3bc", "td3bc.alpha=-1"),
        ("algo=td3bc", "td3bc.noise_clip=-0.1"),
        ("optim.actor_cosine_horizon=0",),
        ("guard.check_interval=0",),
        ("data.score_reference=best",),
        ("data.reward_scale=huge",),
        ("network.vmap_critics=maybe",),
        ("network.value_init=median",),
        ("network.value_init=true",),
        ("diagnostic.size=0",),
    ],
)
def test_the_baselines_and_layout_keys_are_checked_too(overrides):
    key = overrides[-1].split("=")[0]
    with pytest.raises(RunRefused, match=key.replace(".", r"\.")):
        schema.validate(config("offline", *overrides), "offline")


def test_stacked_bf16_seeds_with_looped_critics_are_refused_naming_the_fix(monkeypatch):
    """seeds > 1 compiled under bf16 matmuls with a loop over the critics returned NaN
    (an inductor bug, torch 2.13): refused in one line, on a CPU with bf16 units."""
    monkeypatch.setattr(schema, "_cpu_has_bf16", lambda: True)
    bad = ("seeds=3", "compile.matmul_precision=medium", "network.vmap_critics=false")
    with pytest.raises(RunRefused, match=r"network.vmap_critics=true or auto.*compile.mode=eager"):
        schema.validate(config("offline", *bad), "offline")
    schema.validate(config("offline", *bad[:2]), "offline")  # auto: vmapped under bf16
    schema.validate(config("offline", *bad, "compile.mode=eager"), "offline")
    monkeypatch.setattr(schema, "_cpu_has_bf16", lambda: False)  # stays float32
    schema.validate(config("offline", *bad), "offline")


def test_every_config_key_has_a_schema_field():
    """A key added to recipes/config/ without a range in recipes/schema.py fails here."""
    from omegaconf import DictConfig

    def leaves(cfg, prefix=""):
        for k in cfg:
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                yield from leaves(node, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    cases = {
        "offline": [
            (f"algo={a}", f"family={f}")
            for a in ("dmg", "iql", "td3bc", "bc")
            for f in ("pointmaze", "antmaze", "locomotion")
        ],
        "finetune": [
            ("budget=demo",),
            ("budget=paper", "family=locomotion"),
            *[("algo=iql", f"family={f}") for f in ("pointmaze", "antmaze", "locomotion")],
        ],
        "train_behaviour": [()],
        "make_dataset": [()],
    }
    for name, variants in cases.items():
        known = {f.key for f in schema.SCHEMAS[name]}
        for overrides in variants:
            cfg = config(name, *overrides)
            OmegaConf.set_struct(cfg, False)
            cfg.pop("hydra", None)
            schema.validate(cfg, name)
            assert set(leaves(cfg)) <= known, (name, overrides, set(leaves(cfg)) - known)


def test_bad_value_exits_2_in_one_line_without_a_traceback_or_a_run_dir(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    proc = run_recipe("offline.py", run_dir, minari_root, "steps=abc", check=False)
    assert proc.returncode == 2
    assert "steps=abc is not an integer" in one_error_line(proc)
    assert not run_dir.exists()


def test_debug_flag_shows_the_traceback(tmp_path, minari_root, monkeypatch):
    monkeypatch.setenv("TORCHRL_DMG_DEBUG", "1")
    proc = run_recipe("offline.py", tmp_path / "run", minari_root, "steps=abc", check=False)
    assert proc.returncode != 0 and "RunRefused" in proc.stderr


# ---------------------------------------------------------------- runs and resumes
@pytest.fixture(scope="module")
def runs(tmp_path_factory, minari_root):
    """An offline run (40 steps) and a fine-tuning run started from it."""
    root = tmp_path_factory.mktemp("runs")
    offline = root / "offline"
    run_recipe("offline.py", offline, minari_root, "steps=40", "eval.interval=0")
    finetune = root / "finetune"
    run_recipe(
        "finetune.py",
        finetune,
        minari_root,
        f"checkpoint={offline}",
        "online_steps=20",
        "eval.interval=0",
        base=[o for o in TINY if not o.startswith("family")],
    )
    return offline, finetune


def test_offline_resume_of_a_finetuning_run_is_refused_before_writing(runs, minari_root):
    _, finetune = runs
    before = snapshot(finetune)
    proc = run_recipe("offline.py", None, minari_root, f"resume={finetune}", check=False)
    assert proc.returncode == 2
    assert "python recipes/finetune.py resume=" in one_error_line(proc)
    assert snapshot(finetune) == before


def test_finetune_resume_of_an_offline_run_is_refused_before_writing(runs, minari_root):
    offline, _ = runs
    before = snapshot(offline)
    proc = run_recipe("finetune.py", None, minari_root, f"resume={offline}", check=False)
    assert proc.returncode == 2
    assert "python recipes/offline.py resume=" in one_error_line(proc)
    assert snapshot(offline) == before


def test_resume_on_data_with_another_fingerprint_is_refused_before_writing(
    runs, minari_root, tmp_path
):
    """A dataset regenerated on another machine can keep its id and its observation
    statistics to the last digit shown, yet hold other episodes: a checkpoint names the
    data it was trained on (their fingerprint) and a resume on other data is refused."""
    import shutil

    offline, _ = runs
    run = tmp_path / "other_data"
    shutil.copytree(offline, run)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["dataset_fingerprint"].startswith("sha256:")
    state["dataset_fingerprint"] = "sha256:0000000000000000"
    torch.save(state, run / "checkpoint.pt")
    before = snapshot(run)
    proc = run_recipe("offline.py", None, minari_root, f"resume={run}", check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "trained on other data" in line and "sha256:0000000000000000" in line, line
    # the run's files are untouched; its log records the refused session (and only that)
    after = snapshot(run)
    log_before, log_after = before.pop("offline.log", None), after.pop("offline.log")
    assert after == before and log_after != log_before
    tail = (run / "offline.log").read_text().splitlines()[-2:]
    assert "trained on other data" in tail[0] and "session failed after" in tail[1]


def test_resume_with_other_settings_is_refused(runs, minari_root):
    offline, _ = runs
    args = (f"resume={offline}", "loss.mixture_coef=0.9")
    proc = run_recipe("offline.py", None, minari_root, *args, check=False)
    assert proc.returncode == 2
    assert "loss.mixture_coef=0.9 differs from the run's" in one_error_line(proc)


def test_resuming_a_finished_run_keeps_its_steps_config_and_rows(runs, minari_root, tmp_path):
    offline, _ = runs
    config_before = (offline / "config.yaml").read_bytes()
    rows_before = read_metrics(offline)
    proc = run_recipe("offline.py", tmp_path / "hydra", minari_root, f"resume={offline}")
    assert "steps=40 " in proc.stdout  # not the default 20,000
    assert (offline / "config.yaml").read_bytes() == config_before
    assert read_metrics(offline) == rows_before  # the final eval row once
    assert not (tmp_path / "hydra").exists()  # no stub run directory


def test_finetuning_a_checkpoint_on_another_dataset_is_refused(runs, minari_root, tmp_path):
    offline, _ = runs
    args = (f"checkpoint={offline}", "dataset=local/pointmaze/medium-v0")
    proc = run_recipe("finetune.py", tmp_path / "ft", minari_root, *args, check=False)
    assert proc.returncode == 2
    assert "was trained on local/pointmaze/umaze-v0" in one_error_line(proc)
    assert not (tmp_path / "ft").exists()


def test_checkpoint_seed_absent_from_the_checkpoint_is_refused(runs, minari_root, tmp_path):
    offline, _ = runs
    args = (f"checkpoint={offline}", "checkpoint_seed=3")
    proc = run_recipe("finetune.py", tmp_path / "ft", minari_root, *args, check=False)
    assert proc.returncode == 2
    assert "checkpoint_seed=3" in one_error_line(proc)


def test_garbage_checkpoint_on_checkpoint_is_one_line_naming_the_file(minari_root, tmp_path):
    garbage = tmp_path / "checkpoint.pt"
    garbage.write_bytes(b"not a checkpoint")
    proc = run_recipe(
        "finetune.py", tmp_path / "ft", minari_root, f"checkpoint={garbage}", check=False
    )
    assert proc.returncode == 2
    assert str(garbage) in one_error_line(proc)


def test_unwritable_run_dir_is_one_line(minari_root):
    proc = run_recipe("offline.py", Path("/proc/x"), minari_root, check=False)
    assert proc.returncode == 2
    assert "hydra.run.dir=/proc/x cannot be written" in one_error_line(proc)


# ---------------------------------------------------------------- checkpoints
def test_a_checkpoint_replaces_the_previous_one_which_is_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint_safely(path, {"step": 1, "w": torch.ones(2)})
    save_checkpoint_safely(path, {"step": 2, "w": torch.ones(2)})
    assert torch.load(path, weights_only=False)["step"] == 2
    assert torch.load(previous_path(path), weights_only=False)["step"] == 1


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint_safely(path, {"step": 1})
    save_checkpoint_safely(path, {"step": 2})
    path.write_bytes(path.read_bytes()[:50])
    warnings = []
    assert load_checkpoint_safely(path, warn=warnings.append)["step"] == 1
    assert len(warnings) == 1 and "previous checkpoint" in warnings[0]


def test_a_corrupt_checkpoint_without_a_previous_one_fails_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(RunRefused, match="checkpoint.pt is unreadable"):
        load_checkpoint_safely(path)


def test_disk_full_while_checkpointing_is_one_error_and_the_previous_one_loads(
    tmp_path, monkeypatch
):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint_safely(path, {"step": 1})

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*step 1"):
        save_checkpoint_safely(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint_safely(path)["step"] == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_state_with_a_non_finite_tensor_is_never_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint_safely(path, {"step": 1, "w": torch.ones(2)})
    with pytest.raises(TrainingDiverged, match="non-finite"):
        save_checkpoint_safely(path, {"step": 2, "w": torch.tensor([1.0, float("nan")])})
    assert torch.load(path, weights_only=False)["step"] == 1


def test_stale_temporaries_of_a_killed_write_are_cleaned(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half")
    save_checkpoint_safely(path, {"step": 1})
    assert not stale.exists()


# ---------------------------------------------------------------- divergence and signals
def test_a_non_finite_loss_stops_the_run_naming_step_and_term(tmp_path, minari_root):
    proc = run_recipe(
        "offline.py",
        tmp_path / "run",
        minari_root,
        "steps=100",
        "data.reward_shift=1e30",  # Q targets beyond float32: the critic loss is inf
        check=False,
    )
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert "diverged at step 1: loss_qvalue" in line and "last good checkpoint" in line


def test_q_out_of_bounds_stops_the_run_when_asked(tmp_path, minari_root):
    args = ("steps=100", "optim.lr=1e3", "logger.log_interval=20")
    proc = run_recipe(
        "offline.py",
        tmp_path / "a",
        minari_root,
        *args,
        "guard.stop_on_q_out_of_bounds=true",
        check=False,
    )
    assert proc.returncode == 3 and "lies outside" in one_error_line(proc)


def test_sigterm_saves_a_checkpoint_and_names_the_resume_command(tmp_path, minari_root):
    run_dir = tmp_path / "run"
    env = {
        **__import__("os").environ,
        "MINARI_DATASETS_PATH": minari_root,
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "offline.py"),
        *TINY,
        "steps=1000000",
        "logger.log_interval=10",
        "eval.interval=0",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until training has logged a row
        if (run_dir / "metrics.csv").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert f"Resume with: python recipes/offline.py resume={run_dir}" in stderr
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert step >= 10
    log = (run_dir / "offline.log").read_text().splitlines()  # the session's end, recorded
    assert f"[dmg] stopped by SIGTERM at step {step}; checkpoint saved." in log[-2]
    assert "[dmg] session stopped after " in log[-1]


def test_a_stop_signal_inside_a_compiled_call_with_guards_skipped_is_only_recorded():
    """SIGTERM handled inside a compiled call running without guard checks (the CPU
    default, ``skip_guard_eval_unsafe``) sets the flag; the handler is not compiled there,
    which would fail the call (a run once died so, with a traceback, at its stop)."""

    def step(x):
        y = x * 2
        signal.raise_signal(signal.SIGTERM)  # handled here, in the compiled frame
        return y + 1

    compiled = torch.compile(step, backend="eager")
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # warm-up: nothing handles it
    try:
        for _ in range(2):
            compiled(torch.ones(3))
        skip = torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
        with StopRequest("the resume command") as stop, skip:
            out = compiled(torch.ones(3))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.signum == signal.SIGTERM
    assert out.tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at step 7.*the resume command"):
        stop.check(7, lambda step: None)


def test_ctrl_c_once_asks_for_a_stop_and_twice_interrupts_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with StopRequest("the resume command") as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous  # given back


# ---------------------------------------------------------------- determinism and exact resume
def test_two_finetuning_runs_with_one_seed_are_bit_identical(runs, minari_root, tmp_path):
    offline, _ = runs
    states = []
    for name in ("a", "b"):
        run_recipe(
            "finetune.py",
            tmp_path / name,
            minari_root,
            f"checkpoint={offline}",
            "online_steps=60",
            "eval.interval=0",
            base=[o for o in TINY if not o.startswith("family")],
        )
        states.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=False))
    a, b = states
    assert torch.equal(a["online_data"]["observation"], b["online_data"]["observation"])
    for (name, x), (_, y) in zip(
        a["updater"]["loss"].items(), b["updater"]["loss"].items(), strict=True
    ):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("recipe", ["offline", "finetune"])
def test_killed_runs_resume_bit_identical_with_every_row_once(recipe, tmp_path, minari_root):
    """Killed between moving the old checkpoint aside and putting the new one in place. In
    eager mode: what is tested is the checkpoint's atomicity, the same in every mode (the
    default compiled mode's resume: test_offline_recipe)."""
    from fault_injection import run_trials

    trials = run_trials(
        [recipe],
        1,
        workdir=tmp_path,
        minari_root=minari_root,
        points=("ckpt-swap",),
        extra=("compile.mode=eager",),
        log=lambda s: None,
    )
    assert [t.kills for t in trials] == [1]
    assert all(t.identical and t.rows_once for t in trials), trials

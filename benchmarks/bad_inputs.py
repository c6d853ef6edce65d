"""Feed the recipes bad inputs and write the table of what they answer (docs/bad_inputs.md).

Every case runs a recipe as a user would (a subprocess, a scratch working directory, the
tests' tiny PointMaze dataset in a scratch Minari store), records the exit code and the
one line printed, and checks that nothing was lost: the existing runs and datasets are
byte-for-byte unchanged (or, where the case is meant to continue a run, that its previous
checkpoint still loads), and no stub run directory was left under ``outputs/``.

    python benchmarks/bad_inputs.py                      # writes docs/bad_inputs.md
    python benchmarks/bad_inputs.py --out /tmp/table.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import loss_misuse  # noqa: E402
from fault_injection import TINY_DMG, make_minari_root  # noqa: E402

#: the fault-injection benchmark's tiny settings, without its device (cases override it)
TINY = tuple(o for o in TINY_DMG if not o.startswith("device="))


@dataclass
class Case:
    """One bad input: ``recipe`` run with ``args`` (``{off}``, ``{ft}``, ``{scratch}``
    are replaced by the paths of an offline run, a fine-tuning run and a scratch copy of
    the offline run); ``prepare(scratch)`` damages the scratch copy first."""

    what: str
    recipe: str
    args: tuple[str, ...]
    tiny: bool = True
    prepare: Callable[[Path], None] | None = None
    limit_file_size: bool = False
    sigterm: bool = False
    continues: bool = False  # meant to go on with the scratch run: check its checkpoint loads
    extra: dict = field(default_factory=dict)


def truncate_checkpoint(run: Path) -> None:
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])


def garbage_checkpoint_no_previous(run: Path) -> None:
    (run / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)


def stale_tmp(run: Path) -> None:
    (run / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")


#: the processes that hold a run directory for a case (killed after it)
HOLDERS: list[subprocess.Popen] = []


def hold(run: Path) -> subprocess.Popen:
    """A process that owns ``run`` as a run in flight does (its lock) until it is killed."""
    code = (
        "import sys, time\n"
        "from torchrl_dmg.training.checkpoint import lock_run_dir\n"
        "lock_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    proc.stdout.readline()
    return proc


def held_by_a_running_process(run: Path) -> None:
    HOLDERS.append(hold(run))


def held_by_a_killed_process(run: Path) -> None:
    proc = hold(run)
    proc.kill()  # SIGKILL: its lock file stays behind, naming a dead process
    proc.wait()


CASES = [
    Case("steps=-1", "offline.py", ("steps=-1",)),
    Case("steps=0", "offline.py", ("steps=0",)),
    Case("steps=abc", "offline.py", ("steps=abc",)),
    Case("λ > 1", "offline.py", ("loss.mixture_coef=1.5",)),
    Case("λ < 0", "offline.py", ("loss.mixture_coef=-0.1",)),
    Case("ν < 0", "offline.py", ("loss.penalty_coef=-1",)),
    Case("α < 0", "offline.py", ("loss.temperature=-1",)),
    Case("τ = 1", "offline.py", ("loss.expectile=1.0",)),
    Case("γ = 1", "offline.py", ("loss.gamma=1.0",)),
    Case("negative checkpoint interval", "offline.py", ("checkpoint.interval=-5",)),
    Case("no evaluation episodes", "offline.py", ("eval.episodes=0",)),
    Case("negative learning rate", "offline.py", ("optim.lr=-1",)),
    Case("a device that is not one", "offline.py", ("device=banana",)),
    Case("a CUDA device this machine lacks", "offline.py", ("device=cuda:7",)),
    Case("zero seeds", "offline.py", ("seeds=0",)),
    Case("zero log interval", "offline.py", ("logger.log_interval=0",)),
    Case("unknown compile mode", "offline.py", ("compile.mode=turbo",)),
    Case("empty dataset id", "offline.py", ("dataset=''",)),
    Case("dataset id '///'", "offline.py", ("dataset=///",)),
    Case("a bare namespace as dataset", "offline.py", ("dataset=local/pointmaze",)),
    Case("dataset id with a space", "offline.py", ("dataset='hopper medium'",)),
    Case("dataset id with '..'", "offline.py", ("dataset=../../etc/passwd-v0",)),
    Case("unknown local dataset", "offline.py", ("dataset=local/pointmaze/nope-v0",)),
    Case("unwritable run dir", "offline.py", ("hydra.run.dir=/proc/x",)),
    Case("offline resume of a fine-tuning run", "offline.py", ("resume={ft}",)),
    Case("resume of a directory that does not exist", "offline.py", ("resume={off}_nope",)),
    Case("resume with changed settings", "offline.py", ("resume={off}", "loss.mixture_coef=0.9")),
    Case("resume below the run's step", "offline.py", ("resume={off}", "steps=10")),
    Case(
        "truncated checkpoint.pt, a previous one beside it",
        "offline.py",
        ("resume={scratch}", "steps=60"),
        prepare=truncate_checkpoint,
        continues=True,
    ),
    Case(
        "garbage checkpoint.pt, no previous one",
        "offline.py",
        ("resume={scratch}",),
        prepare=garbage_checkpoint_no_previous,
    ),
    Case(
        "stale .tmp of a killed checkpoint write",
        "offline.py",
        ("resume={scratch}", "steps=60"),
        prepare=stale_tmp,
        continues=True,
    ),
    Case(
        "disk full while checkpointing (file size limit)",
        "offline.py",
        ("resume={scratch}", "steps=60"),
        limit_file_size=True,
        continues=True,
    ),
    Case("NaN: rewards scaled to 1e30", "offline.py", ("steps=200", "data.reward_shift=1e30")),
    Case(
        "divergence with the Q-bound stop on",
        "offline.py",
        (
            "steps=200",
            "optim.lr=1e3",
            "logger.log_interval=20",
            "guard.stop_on_q_out_of_bounds=true",
        ),
    ),
    Case(
        "SIGTERM during training",
        "offline.py",
        ("steps=1000000", "logger.log_interval=10", "eval.interval=0", "hydra.run.dir={work}/sig"),
        sigterm=True,
    ),
    Case("finetune resume of an offline run", "finetune.py", ("resume={off}",)),
    Case(
        "checkpoint= of a run on another dataset",
        "finetune.py",
        ("checkpoint={off}", "dataset=local/pointmaze/medium-v0"),
    ),
    Case(
        "checkpoint_seed absent from the checkpoint",
        "finetune.py",
        ("checkpoint={off}", "checkpoint_seed=3"),
    ),
    Case("checkpoint= of a fine-tuning run", "finetune.py", ("checkpoint={ft}",)),
    Case(
        "checkpoint= of a garbage file",
        "finetune.py",
        ("checkpoint={scratch}/checkpoint.pt",),
        prepare=garbage_checkpoint_no_previous,
    ),
    Case("zero online steps", "finetune.py", ("checkpoint={off}", "online_steps=0")),
    Case("schedule decay 0", "finetune.py", ("schedule.decay=0",)),
    Case("negative exploration noise", "finetune.py", ("exploration.noise=-0.1",)),
    Case("offline_fraction > 1", "finetune.py", ("offline_fraction=1.5",)),
    Case(
        "unknown behaviour task", "train_behaviour.py", ("env=ant", "out_dir={work}/b"), tiny=False
    ),
    Case("behaviour steps=0", "train_behaviour.py", ("steps=0", "out_dir={work}/b"), tiny=False),
    Case(
        "behaviour steps not a multiple of the batch",
        "train_behaviour.py",
        ("steps=1500", "collector.frames_per_batch=1000", "out_dir={work}/b"),
        tiny=False,
    ),
    Case("make_dataset dataset_id=local", "make_dataset.py", ("dataset_id=local",), tiny=False),
    Case("make_dataset dataset_id=/", "make_dataset.py", ("dataset_id=/",), tiny=False),
    Case("make_dataset unknown quality", "make_dataset.py", ("quality=great",), tiny=False),
    Case(
        "make_dataset AntMaze-only key for a locomotion env",
        "make_dataset.py",
        ("env=hopper", "goal_rule=onegoal"),
        tiny=False,
    ),
    Case("value_init neither a number nor mc", "offline.py", ("network.value_init=median",)),
    Case(
        "a second run into a run directory in use",
        "offline.py",
        ("hydra.run.dir={scratch}",),
        prepare=held_by_a_running_process,
    ),
    Case(
        "resume after its run was killed -9 (its lock file left behind)",
        "offline.py",
        ("resume={scratch}", "steps=60"),
        prepare=held_by_a_killed_process,
        continues=True,
    ),
    Case("make_dataset unknown env", "make_dataset.py", ("env=pointmaze",), tiny=False),
]


def snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != ".lock":  # the lock names its last owner: no run data
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(cmd: list[str], env: dict, cwd: Path, case: Case, scratch: Path) -> tuple[int, str]:
    def limits() -> None:
        if case.limit_file_size:
            size = (scratch / "checkpoint.pt").stat().st_size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    if not case.sigterm:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, preexec_fn=limits
        )
        return proc.returncode, proc.stdout + proc.stderr
    sig_dir = cwd / "sig"
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for _ in range(900):
        if (sig_dir / "metrics.csv").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def last_line(output: str) -> str:
    """The line the user is meant to read: the error/warning/stop line, else the last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("error:", "stopped by", "WARNING:", "FINAL"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1]
    return lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bad_inputs.md")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bad_inputs_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    minari = Path(make_minari_root(work / "minari"))
    env = {
        **os.environ,
        "MINARI_DATASETS_PATH": str(minari),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "RL_WARNINGS": "False",
    }
    env.pop("TORCHRL_DMG_DEBUG", None)
    recipes = ROOT / "recipes"
    off, ft = work / "runs" / "off", work / "runs" / "ft"
    if not (off / "checkpoint.pt").exists():
        subprocess.run(
            [
                sys.executable,
                str(recipes / "offline.py"),
                *TINY,
                "steps=40",
                "eval.interval=0",
                "checkpoint.interval=20",
                f"hydra.run.dir={off}",
            ],
            env=env,
            cwd=work,
            check=True,
            capture_output=True,
        )
    if not (ft / "checkpoint.pt").exists():
        subprocess.run(
            [
                sys.executable,
                str(recipes / "finetune.py"),
                *[t for t in TINY if "family" not in t],
                f"checkpoint={off}",
                "online_steps=20",
                "eval.interval=0",
                f"hydra.run.dir={ft}",
            ],
            env=env,
            cwd=work,
            check=True,
            capture_output=True,
        )
    rows = []
    for i, case in enumerate(CASES, 1):
        scratch = work / "scratch" / f"case{i:02d}"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(off, scratch)
        if case.prepare is not None:
            case.prepare(scratch)
        shutil.rmtree(work / "outputs", ignore_errors=True)
        shutil.rmtree(work / "sig", ignore_errors=True)
        shutil.rmtree(work / "b", ignore_errors=True)
        before = snapshot(off, ft, minari)
        fill = {"off": str(off), "ft": str(ft), "scratch": str(scratch), "work": str(work)}
        case_args = [a.format(**fill) for a in case.args]
        given = {a.split("=")[0] for a in case_args}
        base = [t for t in TINY if t.split("=")[0] not in given] if case.tiny else []
        if case.recipe == "finetune.py":
            base = [t for t in base if not t.startswith("family")]
        cmd = [sys.executable, str(recipes / case.recipe), *base, *case_args]
        code, output = run(cmd, env, work, case, scratch)
        while HOLDERS:
            holder = HOLDERS.pop()
            holder.kill()
            holder.wait()
        after = snapshot(off, ft, minari)
        stubs = (
            sorted(str(p.relative_to(work)) for p in (work / "outputs").glob("*/*"))
            if (work / "outputs").exists()
            else []
        )
        lost = [] if before == after else ["existing runs or datasets changed"]
        lost += [f"stub {s}" for s in stubs]
        if case.continues:
            import torch

            from torchrl_dmg.training.checkpoint import load_checkpoint_safely

            state = load_checkpoint_safely(scratch / "checkpoint.pt", warn=lambda s: None)
            kept = f"checkpoint loads (step {state['step']})"
            if list(scratch.glob(".*.tmp")):
                lost.append(f"stale temporaries left: {sorted(scratch.glob('.*.tmp'))}")
            elif case.prepare is stale_tmp:
                kept += ", stale .tmp removed"
        else:
            kept = "runs, datasets unchanged"
        if case.sigterm:
            import torch

            step = torch.load(work / "sig" / "checkpoint.pt", weights_only=False)["step"]
            kept = f"checkpoint saved at step {step}"
        verdict = "yes: " + kept if not lost else "NO: " + "; ".join(lost)
        shown = " ".join(a.replace(str(work) + "/", "").replace(str(work), ".") for a in case_args)
        line = last_line(output).replace(str(work) + "/", "").replace(str(work), ".")
        rows.append((i, case.what, f"{case.recipe} {shown}", code, line, verdict))
        print(f"{i:>2} exit {code:>3} {case.what}: {line[:150]}  [{verdict}]", flush=True)
    write_table(args.out, rows, loss_misuse.table())
    refused = sum(1 for r in rows if r[3] != 0)
    print(
        f"{len(rows)} cases, {refused} refused or stopped with a non-zero exit; table: {args.out}"
    )


def write_table(path: Path, rows: list[tuple], loss_table: str) -> None:
    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Reliability: bad inputs and what the recipes answer",
        "",
        f"Generated by `python benchmarks/bad_inputs.py` on {date.today().isoformat()} (CPU, the "
        "tests' tiny PointMaze UMaze dataset in a scratch Minari store; `./runs/off` is a "
        "40-step offline run with checkpoints at 20 and 40, `./runs/ft` a fine-tuning run "
        "started from it, `./scratch/caseNN` a scratch copy of `./runs/off`). The common "
        "tiny overrides (`dataset=local/pointmaze/umaze-v0 network.num_cells=[32,32] "
        "batch_size=32 eval.episodes=2 ...`) are left out of the commands.",
        "",
        "Exit codes: 0 done, 2 refused input (nothing started, nothing written), 3 training "
        "diverged (stopped, last good checkpoint named, no non-finite checkpoint written), "
        "4 a checkpoint could not be written (the previous one is intact), 128+N stopped by "
        "signal N after saving a checkpoint. `TORCHRL_DMG_DEBUG=1` shows the traceback of a "
        "refusal.",
        "",
        "| # | bad input | command | exit | the line printed | nothing lost |",
        "|---|---|---|---|---|---|",
    ]
    for i, what, command, code, line, verdict in rows:
        lines.append(
            f"| {i} | {cell(what)} | `{cell(command)}` | {code} | {cell(line)} | {cell(verdict)} |"
        )
    lines += [
        "",
        "## DMGLoss wired wrongly in TorchRL code",
        "",
        "Generated by the same command (`benchmarks/loss_misuse.py`): each mistake a TorchRL "
        "user might make when building `DMGLoss` by hand, and the one line it raises, at "
        "construction or at the first call.",
        "",
        loss_table,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

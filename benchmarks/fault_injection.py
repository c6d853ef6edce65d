"""Kill -9 the recipes at random points and check that every resume is exact.

For each recipe (offline DMG, fine-tuning with its offline phase, SAC behaviour training; on
request ``finetune_iql``: IQL fine-tuning with its offline phase) a tiny run on CPU with a
fixed seed is made once without interruption (the reference). Then, per trial, the same
command is killed with SIGKILL at a random point:

* ``time``: after a random delay (during updates, evaluations, logging ...);
* ``eval``: inside the n-th evaluation;
* ``ckpt-write``: inside the n-th checkpoint write, after the new file is written and
  before it replaces anything;
* ``ckpt-swap``: inside the n-th checkpoint write, after the previous checkpoint was moved
  aside and before the new one is in place (only the previous one exists then);

and resumed as a user would (``resume=<run dir>``, or the same command again when the kill
came before anything resumable was written), sometimes killed a second time while resuming.
Each finished run's final parameters (and optimiser states) must be bit-identical to the
reference's, and its ``metrics.csv`` (``progress.csv``) must hold the reference's rows,
each exactly once (wall-clock columns aside). Prints a table.

    python benchmarks/fault_injection.py --kills 24      # ~10 min on 2 CPU cores
    python benchmarks/fault_injection.py --kills 2 --recipes offline finetune
    python benchmarks/fault_injection.py --kills 4 --recipes finetune_iql
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TIME_COLUMNS = {"updates_per_s", "wall_s", "env_steps_per_s", "eval_s"}
POINTS = ("time", "eval", "ckpt-write", "ckpt-swap")

TINY_DMG = (
    "dataset=local/pointmaze/umaze-v0",
    "family=pointmaze",
    "network.num_cells=[32,32]",
    "batch_size=32",
    "eval.episodes=2",
    "eval.max_steps=30",
    "progress=false",
    "device=cpu",
)
COMMANDS_FINETUNE_ARGS = (
    *TINY_DMG,
    "offline_steps=100",
    "online_steps=150",
    "checkpoint_interval=50",
    "eval.interval=75",
    "logger.log_interval=25",
    "schedule.interval=40",
)
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "offline": (
        "offline.py",
        (
            *TINY_DMG,
            "steps=300",
            "eval.interval=100",
            "checkpoint.interval=50",
            "logger.log_interval=25",
        ),
    ),
    "finetune": ("finetune.py", COMMANDS_FINETUNE_ARGS),
    "finetune_iql": (  # IQL fine-tuning (its offline phase too): stochastic exploration
        "finetune.py",
        ("algo=iql", *COMMANDS_FINETUNE_ARGS),
    ),
    "behaviour": (
        "train_behaviour.py",
        (
            "env=hopper",
            "steps=900",
            "checkpoint_interval=300",
            "collector.init_random_steps=200",
            "collector.frames_per_batch=100",
            "network.num_cells=[16,16]",
            "optim.batch_size=32",
            "eval.episodes=1",
            "eval.max_steps=10",
            "compile.mode=eager",
            "progress=false",
        ),
    ),
}


# ---------------------------------------------------------------- the child: a recipe with a trap
def child(point: str, nth: int, recipe: str, args: list[str]) -> None:
    """Run ``recipe`` as ``__main__`` with a SIGKILL set at the ``nth`` ``point``."""
    import runpy

    sys.path.insert(0, str(RECIPES))
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "eval":
        import torchrl_dmg.datagen.behaviour.trainer as behaviour
        import torchrl_dmg.envs as envs

        # the recipes' evaluations (evaluate_scores, evaluate_agents) and SAC's
        for module, name in ((envs, "_evaluate_both"), (behaviour, "evaluate_actor")):
            original = getattr(module, name)

            def trapped(*a, _original=original, **k):
                result = _original(*a, **k)
                if hit():
                    die()
                return result

            setattr(module, name, trapped)
    elif point in ("ckpt-write", "ckpt-swap"):
        import torchrl_dmg.recording as recording
        import torchrl_dmg.training.checkpoint as checkpointing

        real_replace = os.replace

        class TrappedOs:  # the checkpoint modules' ``os``, with a trapped ``replace``
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                src = Path(src)
                new_file = src.name.endswith(".tmp") and Path(dst).suffix == ".pt"
                # ckpt-write: before the new file replaces anything; ckpt-swap: after the old
                # one moved aside (the .prev move), before the new one is in place
                if point == "ckpt-write" and new_file and hit():
                    die()
                real_replace(src, dst)
                if point == "ckpt-swap" and Path(dst).name.endswith(".prev.pt") and hit():
                    die()

        checkpointing.os = TrappedOs()
        recording.os = TrappedOs()  # behaviour's state.pt / checkpoints (atomic_write)
        if point == "ckpt-swap":  # behaviour has no .prev move: kill after its replace
            import torchrl_dmg.datagen.behaviour.trainer as behaviour

            real = behaviour.atomic_torch_save

            def trapped_atomic(path, obj):
                real(path, obj)
                if Path(path).suffix == ".pt" and hit():
                    die()

            behaviour.atomic_torch_save = trapped_atomic
    sys.argv = [str(RECIPES / recipe), *args]
    runpy.run_path(str(RECIPES / recipe), run_name="__main__")


# ---------------------------------------------------------------- the parent
@dataclass
class Trial:
    recipe: str
    point: str
    detail: str
    kills: int = 0
    resumes: int = 0
    identical: bool = False
    rows_once: bool = False
    note: str = ""
    tensors: int = 0
    extra: list[str] = field(default_factory=list)


def environment(minari_root: str) -> dict[str, str]:
    return {
        **os.environ,
        "MINARI_DATASETS_PATH": minari_root,
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "RL_WARNINGS": "False",
    }


def command(recipe: str, run_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    script, args = COMMANDS[recipe]
    where = f"out_dir={run_dir}" if recipe == "behaviour" else f"hydra.run.dir={run_dir}"
    return [script, *args, *extra, where]


def resume_args(recipe: str, run_dir: Path) -> list[str]:
    """What a user runs after a crash: ``resume=<run dir>`` when the run left something
    to resume, else the same command again (train_behaviour resumes by itself)."""
    if recipe == "behaviour":
        return []
    if recipe == "offline":
        has = any((run_dir / n).exists() for n in ("checkpoint.pt", "checkpoint.prev.pt"))
    else:
        has = (run_dir / "config.yaml").exists()
    return [f"resume={run_dir}"] if has else []


def launch(argv: list[str], env: dict, point: str, nth: int, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", point, str(nth), "--", *argv]
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def run_to_end(argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, __file__, "--child", "none", "0", "--", *argv]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def final_state(recipe: str, run_dir: Path) -> dict:
    import torch

    name = "state.pt" if recipe == "behaviour" else "checkpoint.pt"
    return torch.load(run_dir / name, map_location="cpu", weights_only=False)["updater"]


def tensors(state, prefix: str = ""):
    """Every tensor of a (nested) state, by name."""
    import torch
    from tensordict import TensorDictBase

    if isinstance(state, TensorDictBase):
        state = state.to_dict()
    if torch.is_tensor(state):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from tensors(v, f"{prefix}/{k}")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from tensors(v, f"{prefix}[{i}]")


def same_state(a: dict, b: dict) -> tuple[bool, int]:
    import torch

    ta, tb = dict(tensors(a)), dict(tensors(b))
    if ta.keys() != tb.keys():
        return False, len(ta)
    return all(torch.equal(ta[k], tb[k]) for k in ta), len(ta)


def rows(recipe: str, run_dir: Path) -> list[tuple]:
    name = "progress.csv" if recipe == "behaviour" else "metrics.csv"
    with open(run_dir / name, newline="") as f:
        return [
            tuple(sorted((k, v) for k, v in r.items() if k not in TIME_COLUMNS and v != ""))
            for r in csv.DictReader(f)
        ]


def make_minari_root(root: Path) -> str:
    """A Minari root holding the tests' tiny PointMaze UMaze dataset."""
    from torchrl_dmg.data.local import minari_datasets_path
    from torchrl_dmg.datagen.pointmaze import generate_pointmaze_dataset

    if not (root / "local" / "pointmaze" / "umaze-v0").exists():
        with minari_datasets_path(root):
            generate_pointmaze_dataset(
                maze="umaze", num_steps=3_000, seed=0, progress=False, num_ref_episodes=3
            )
    return str(root)


def run_trials(
    recipes: Sequence[str],
    kills: int,
    *,
    workdir: Path,
    minari_root: str,
    seed: int = 0,
    points: Sequence[str] = POINTS,
    extra: Sequence[str] = (),
    log=print,
) -> list[Trial]:
    """``kills`` trials spread over ``recipes`` (round robin) and kill ``points``; returns
    their outcomes. ``extra``: overrides added to every command (reference, killed, resumed)."""
    rng = random.Random(seed)
    env = environment(minari_root)
    references: dict[str, tuple[dict, list, float]] = {}
    for recipe in recipes:
        ref_dir = workdir / f"ref_{recipe}"
        t0 = time.perf_counter()
        proc = run_to_end(command(recipe, ref_dir, extra), env, workdir)
        if proc.returncode != 0:
            raise RuntimeError(f"reference {recipe} run failed:\n{proc.stderr[-3000:]}")
        references[recipe] = (final_state(recipe, ref_dir), rows(recipe, ref_dir), 0.0)
        references[recipe] = (*references[recipe][:2], time.perf_counter() - t0)
        log(f"reference {recipe}: {time.perf_counter() - t0:.1f} s")
    trials = []
    for i in range(kills):
        recipe = recipes[i % len(recipes)]
        point = points[(i // len(recipes)) % len(points)]
        ref_state, ref_rows, ref_time = references[recipe]
        run_dir = workdir / f"trial{i:02d}_{recipe}"
        nth = rng.randint(1, 3)
        detail = f"#{nth}" if point != "time" else f"{rng.uniform(0.4, 0.95) * ref_time:.1f}s"
        trial = Trial(recipe, point, detail)
        argv = command(recipe, run_dir, extra)
        # the first attempt is killed; one trial in three is killed again while resuming
        attempts = [(point, nth, detail)]
        if i % 3 == 2:
            attempts.append(("time", 0, f"{rng.uniform(0.3, 0.9) * ref_time:.1f}s"))
        for how, n, when in attempts:
            proc = launch(argv, env, how, n, workdir)
            if how == "time":
                try:
                    proc.wait(timeout=float(when[:-1]))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
            else:
                proc.wait(timeout=900)
            if proc.returncode == -signal.SIGKILL:
                trial.kills += 1
            elif proc.returncode != 0:
                trial.note = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
            argv = command(recipe, run_dir, (*extra, *resume_args(recipe, run_dir)))
            if how != point:
                trial.extra.append(f"+kill@{when}")
        done = run_to_end(argv, env, workdir)
        trial.resumes = len(attempts)
        if done.returncode != 0:
            trial.note = f"resume exit {done.returncode}: {done.stderr.strip()[-300:]}"
        else:
            trial.identical, trial.tensors = same_state(final_state(recipe, run_dir), ref_state)
            trial.rows_once = rows(recipe, run_dir) == ref_rows
        trials.append(trial)
        log(format_row(i, trial))
    return trials


HEADER = (
    f"{'#':>3} {'recipe':<12} {'kill point':<11} {'when':<14} {'kills':>5} "
    f"{'identical params':<17} {'rows once':<9} note"
)


def format_row(i: int, t: Trial) -> str:
    when = t.detail + ("".join(" " + e for e in t.extra))
    ident = f"yes ({t.tensors} tensors)" if t.identical else "NO"
    return (
        f"{i:>3} {t.recipe:<12} {t.point:<11} {when:<14} {t.kills:>5} {ident:<17} "
        f"{'yes' if t.rows_once else 'NO':<9} {t.note}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        point, nth = sys.argv[2], int(sys.argv[3])
        recipe, args = sys.argv[5], sys.argv[6:]
        child(point, nth, recipe, args)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--recipes", nargs="+", default=["offline", "finetune", "behaviour"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault_injection_"))
    workdir.mkdir(parents=True, exist_ok=True)
    minari_root = make_minari_root(workdir / "minari")
    print(f"workdir {workdir}; torch threads 1; CPU; seed {args.seed}")
    print(HEADER)
    trials = run_trials(
        args.recipes, args.kills, workdir=workdir, minari_root=minari_root, seed=args.seed
    )
    kills = sum(t.kills for t in trials)
    good = sum(t.identical and t.rows_once for t in trials)
    print(
        f"SUMMARY: {len(trials)} trials, {kills} kill -9, {good}/{len(trials)} resumed runs "
        "bit-identical to the uninterrupted run with every metrics row exactly once"
    )
    sys.exit(0 if good == len(trials) else 1)


if __name__ == "__main__":
    main()

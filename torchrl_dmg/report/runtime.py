"""How long runs took: training and evaluation time from their ``metrics.csv``, their
sessions and wall time from their log (``offline.log`` / ``finetune.log``,
:func:`torchrl_dmg.recording.read_run_log`).

The training time adds up, over the train rows, the steps since the previous row divided by
the row's logged ``updates_per_s``: the recipe measures that rate over everything but
evaluation and checkpoints (sampling, the update, the guards, the diagnostic, logging), and
the first row's interval holds the compile warm-up. The evaluation time adds up the eval
rows' ``eval_s``. The wall time is what each session's process measured, from its start to
its end line; a run made before its log existed has none recorded.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from torchrl_dmg.recording import Session, read_run_log
from torchrl_dmg.report.runs import cell_float

__all__ = ["RunTime", "run_log_path", "run_time", "runtime_table"]


@dataclass(frozen=True)
class RunTime:
    """The time one run directory took (all its seeds at once).

    Attributes:
        run_dir: the run directory.
        steps: its last logged step.
        train_s: its training time (module docstring), warm-up included.
        rate: the median of its logged ``updates_per_s`` (after its first row, which holds
            the compile warm-up, when it has more than one).
        eval_s: the sum of its eval rows' ``eval_s``; ``None`` when its rows predate it.
        evals: its eval rows.
        sessions: its sessions, from its log (empty: no log, or an empty one).
    """

    run_dir: Path
    steps: int
    train_s: float
    rate: float
    eval_s: float | None
    evals: int
    sessions: tuple[Session, ...]

    @property
    def eval_share(self) -> float | None:
        """Evaluation's share of training + evaluation time."""
        if self.eval_s is None or self.train_s + self.eval_s <= 0:
            return None
        return self.eval_s / (self.train_s + self.eval_s)

    @property
    def wall_s(self) -> float | None:
        """The sessions' wall time added up; ``None`` unless every session recorded its own."""
        if not self.sessions or any(s.wall_s is None for s in self.sessions):
            return None
        return sum(s.wall_s for s in self.sessions)


def _config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def run_log_path(run_dir: str | os.PathLike, config: dict | None = None) -> Path:
    """The run's log: ``finetune.log`` for a fine-tuning run (its config, read from the run
    unless given, has ``online_steps``), else ``offline.log``."""
    run_dir = Path(run_dir)
    config = _config(run_dir) if config is None else config
    return run_dir / ("finetune.log" if "online_steps" in config else "offline.log")


def run_time(run_dir: str | os.PathLike) -> RunTime | None:
    """The :class:`RunTime` of ``run_dir``; ``None`` when no train row logged a rate."""
    run_dir = Path(run_dir)
    config = _config(run_dir)
    # a fine-tuning run's rows count online env steps, its rate gradient updates: utd each
    updates_per_step = float(config.get("utd", 1)) if "online_steps" in config else 1.0
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["step"]))
    timed = [r for r in rows if r.get("kind") != "eval" and cell_float(r, "updates_per_s") > 0]
    if not timed:
        return None
    train_s, previous = 0.0, 0.0
    for row in timed:
        step = float(row["step"])
        train_s += (step - previous) * updates_per_step / cell_float(row, "updates_per_s")
        previous = step
    rates = [cell_float(r, "updates_per_s") for r in timed]
    evals = [r for r in rows if r.get("kind") == "eval"]
    eval_times = [cell_float(r, "eval_s") for r in evals]
    logged = evals and all(math.isfinite(t) for t in eval_times)
    return RunTime(
        run_dir=run_dir,
        steps=int(float(rows[-1]["step"])),
        train_s=train_s,
        rate=statistics.median(rates[1:] if len(rates) > 1 else rates),
        eval_s=sum(eval_times) if logged else None,
        evals=len(evals),
        sessions=tuple(read_run_log(run_log_path(run_dir, config))),
    )


def _hours(seconds: float) -> str:
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _session(session: Session) -> str:
    machine = (session.machine or "machine not logged").split(" (")[0]
    start = session.start.strftime("%Y-%m-%d %H:%M")
    if session.wall_s is None:
        end = session.last.strftime("%H:%M")
        return f"{start} UTC → last line {end} (no end recorded), {machine}"
    return f"{start} UTC, {_hours(session.wall_s)}, {session.ending}, {machine}"


def runtime_table(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> str:
    """A Markdown table of the runs' :class:`RunTime` (one row per run directory, linked
    to its config; runs that logged no rate are left out)."""
    lines = [
        "| run | steps | updates/s (median) | training | evaluation (share) | sessions (start, wall time, end, machine) |",
        "|---|---|---|---|---|---|",
    ]
    for run_dir in sorted({Path(d) for d in run_dirs}):
        timing = run_time(run_dir)
        if timing is None:
            continue
        link = Path(os.path.relpath(run_dir / "config.yaml", out_dir)).as_posix()
        if timing.eval_s is None:
            evaluation = f"not logged ({timing.evals} evaluations)"
        else:
            evaluation = f"{_hours(timing.eval_s)} ({100 * timing.eval_share:.1f}%)"
        if timing.sessions:
            sessions = "<br>".join(_session(s) for s in timing.sessions)
            if len(timing.sessions) > 1 and timing.wall_s is not None:
                sessions += f"<br>**{_hours(timing.wall_s)}** in {len(timing.sessions)} sessions"
        else:
            sessions = "not recorded (no run log)"
        lines.append(
            f"| [{run_dir.name}]({link}) | {timing.steps:,} | {timing.rate:.1f} | "
            f"{_hours(timing.train_s)} | {evaluation} | {sessions} |"
        )
    return "\n".join(lines)

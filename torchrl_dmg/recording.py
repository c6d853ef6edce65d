"""Run directories: metrics CSV, optional TensorBoard / wandb mirror, the run's log of
messages, atomic file writes. (The recipes write the resolved Hydra config themselves: the
package reads no config.)"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any


class MetricsLogger:
    """Appends rows to ``<run_dir>/metrics.csv`` and mirrors scalars to TensorBoard or wandb.

    The CSV is the record: one row per logging event with ``step`` and ``kind``
    (``train``/``eval``/``online``...), columns added as new metrics appear (the file is
    rewritten then, atomically). ``backend`` ``"tensorboard"`` and ``"wandb"`` mirror the
    same scalars through TorchRL's loggers; wandb runs in offline mode when no account
    is configured (``WANDB_API_KEY`` unset and no ``wandb login``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        backend: str = "csv",
        project: str = "torchrl-dmg",
        experiment_name: str | None = None,
        config: dict | None = None,
    ) -> None:
        if backend not in ("csv", "tensorboard", "wandb"):
            raise ValueError(f"logger.backend must be csv, tensorboard or wandb, got {backend!r}.")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = []
        if self.path.exists():  # resuming: keep what was logged before
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = list(reader)
        self.mirror = None
        name = experiment_name or self.run_dir.name
        # optional heavy dependencies (tensorboard, wandb): imported only when asked for
        if backend == "tensorboard":
            from torchrl.record.loggers import TensorboardLogger

            self.mirror = TensorboardLogger(exp_name=name, log_dir=str(self.run_dir / "tb"))
        elif backend == "wandb":
            from torchrl.record.loggers import WandbLogger

            offline = not _wandb_has_account()
            self.mirror = WandbLogger(
                exp_name=name,
                save_dir=str(self.run_dir),
                project=project,
                offline=offline,
                config=config,
            )

    def log(self, step: int, kind: str, metrics: dict[str, float]) -> None:
        row = {"step": int(step), "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new:
            self.fields += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.mirror is not None:
            for k, v in metrics.items():
                self.mirror.log_scalar(f"{kind}/{k}", float(v), step=int(step))

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def has_row(self, step: int, kind: str) -> bool:
        """Whether a ``kind`` row was logged at ``step`` (resuming a finished run must not
        log its final row twice)."""
        return any(int(float(r["step"])) == step and r["kind"] == kind for r in self.rows)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (resuming from a checkpoint taken at ``step``)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        if self.path.exists():
            self._rewrite()


#: the logger of a run's messages (:func:`say`): a file handler on the run's log only
RUN_LOGGER = "torchrl_dmg.run"


class _RunLogHandler(logging.FileHandler):
    """Appends to the run's log; a failed write (a full disk) is said once on stderr and the
    run goes on: the log is a record for people, the checkpoint and metrics are the state."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            print(
                f"[dmg] warning: cannot write the run log {self.baseFilename} ({err}); "
                "the run goes on without it",
                file=sys.stderr,
                flush=True,
            )


def open_run_log(path: str | os.PathLike) -> None:
    """From now on, :func:`say` also appends its messages to ``path`` (one per line, stamped
    with the UTC time): the record of a run across its sessions, kept in its directory (a
    resumed run appends to the same file). Replaces a log opened before."""
    close_run_log()
    handler = _RunLogHandler(path, mode="a", encoding="utf-8")
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt=_STAMP)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger(RUN_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not on the console again through Hydra's root handler


def close_run_log() -> None:
    logger = logging.getLogger(RUN_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def say(message: str, *, echo: bool = True, file: IO[str] | None = None) -> None:
    """Print ``message`` (``echo``; on ``file``, stdout by default) and append it to the
    run's log when one is open (:func:`open_run_log`)."""
    if echo:
        print(message, file=file or sys.stdout, flush=True)
    logging.getLogger(RUN_LOGGER).info(message)


_STAMP = "%Y-%m-%dT%H:%M:%SZ"
#: how a session of a run ended: its last line in the run's log
SESSION_ENDINGS = ("finished", "stopped", "failed")
_SESSION_END = re.compile(
    r"^\[\w+\] session (?P<ending>\w+) after (?:(?P<h>\d+) h )?(?P<m>\d+) min (?P<s>\d+) s"
)
_MACHINE = re.compile(r"^\[\w+\] machine: (?P<machine>.+)$")


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1 h 02 min 05 s"``; ``65`` -> ``"1 min 05 s"``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def end_session(tag: str, ending: str, seconds: float) -> None:
    """The last line of a session in the run's log (how it ended, ``SESSION_ENDINGS``, and
    its wall time), then the log closed: :func:`read_run_log` adds the sessions up."""
    if ending not in SESSION_ENDINGS:
        raise ValueError(f"ending={ending!r}: one of {SESSION_ENDINGS}")
    say(f"{tag} session {ending} after {format_duration(seconds)} (wall time)", echo=False)
    close_run_log()


@dataclass(frozen=True)
class Session:
    """One process's part of a run, read from the run's log (:func:`read_run_log`).

    Attributes:
        start: the UTC time of its first line (the run's start line, after the data loaded).
        last: the UTC time of its last line.
        wall_s: its wall time as the process measured it (from its start to its end line);
            ``None`` when it has no end line (killed, or the machine went away).
        ending: ``"finished"``, ``"stopped"`` (SIGTERM / Ctrl-C, checkpoint saved),
            ``"failed"``, or ``"unrecorded"`` (no end line).
        machine: the machine line's text (CPU, threads, torch), if it wrote one.
    """

    start: datetime
    last: datetime
    wall_s: float | None
    ending: str
    machine: str | None


def read_run_log(path: str | os.PathLike) -> list[Session]:
    """The sessions of a run's log (:func:`open_run_log`, :func:`end_session`), in order;
    ``[]`` when there is no log or it is empty (runs made before the log existed). A line
    without a time stamp is refused: the file is not a run log."""
    path = Path(path)
    if not path.is_file():
        return []
    sessions: list[Session] = []
    lines: list[tuple[datetime, str]] = []

    def close(wall_s: float | None, ending: str) -> None:
        machines = [m["machine"] for _, text in lines if (m := _MACHINE.match(text))]
        sessions.append(
            Session(lines[0][0], lines[-1][0], wall_s, ending, machines[0] if machines else None)
        )
        lines.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        stamp, _, text = line.partition(" ")
        try:
            when = datetime.strptime(stamp, _STAMP).replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(
                f"{path}:{number} is not a run-log line (no UTC stamp): {line[:80]!r}"
            ) from None
        lines.append((when, text))
        end = _SESSION_END.match(text)
        if end:
            wall = 3600 * int(end["h"] or 0) + 60 * int(end["m"]) + int(end["s"])
            close(float(wall), end["ending"])
    if lines:
        close(None, "unrecorded")
    return sessions


def _wandb_has_account() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    if os.environ.get("WANDB_MODE") == "offline":
        return False
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()


@functools.cache
def _umask() -> int:
    """The process umask (read once, on the first atomic write: reading it sets it)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """``write(f)`` into a temporary file in ``path``'s directory, fsync, ``os.replace``: a
    crash or Ctrl-C never leaves a half-written ``path``, only the old one or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))


def machine_info() -> dict[str, Any]:
    """What a run's numbers depend on besides its config and data, for its ``summary.json``:
    the CPU model (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), its logical
    cores, torch's CPU threads, and the torch build. Speeds differ across CPUs, and so can
    the last bits of every float result (AVX-512 against AMX kernels, thread counts)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def describe_machine() -> str:
    """:func:`machine_info` in one line, for a run's log."""
    info = machine_info()
    gpu = f", {info['cuda']}" if info["cuda"] else ""
    return (
        f"{info['cpu']} ({info['cpu_count']} logical cores), {info['torch_threads']} torch "
        f"thread(s), torch {info['torch']}{gpu}"
    )

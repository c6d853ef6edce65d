"""What every recipe does around its body: one validation step, one-line failures, no stub
run directories, and a writable run directory checked before Hydra makes it.

    @hydra.main(config_path="config", config_name="offline", version_base="1.3")
    @guarded("offline")
    def main(cfg): ...

    if __name__ == "__main__":
        preflight()
        main()

A :class:`~torchrl_dmg.errors.RunFailure` (a refused input, a divergence, a failed checkpoint
write, SIGTERM) is printed as one line on stderr and the process exits with its code (2: a
refused input). ``TORCHRL_DMG_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from torchrl_dmg.errors import RunFailure, RunInterrupted, RunRefused
from torchrl_dmg.recording import end_session, say

DEBUG_ENV = "TORCHRL_DMG_DEBUG"
#: what a run directory holds before the recipe starts: Hydra's folder and the run's lock
#: (taken by :func:`preflight`)
HYDRA_FILES = (".hydra", ".lock")


def debug() -> bool:
    """Whether tracebacks were asked for (``TORCHRL_DMG_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


def tag(recipe: str) -> str:
    tags = {
        "train_behaviour": "[behaviour]",
        "make_dataset": "[make_dataset]",
        "report": "[report]",
    }
    return tags.get(recipe, "[dmg]")


def only_hydra_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but what Hydra wrote (``.hydra/``, ``*.log``) and
    this process's lock."""
    if not run_dir.is_dir():
        return False
    return all(p.name in HYDRA_FILES or p.suffix == ".log" for p in run_dir.iterdir())


def hydra_run_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - called outside Hydra (tests)
        return None


def guarded(recipe: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[DictConfig], Any]]:
    """Decorate a recipe's ``main(cfg)``: :func:`schema.validate` first, one-line failures,
    and Hydra's run directory removed when this command leaves nothing else in it (a
    refused or failed command; a resume, whose run lives in its own directory)."""
    from schema import validate

    def decorate(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(main)
        def run(cfg: DictConfig) -> Any:
            run_dir = hydra_run_dir()
            fresh = run_dir is not None and only_hydra_files(run_dir)
            failed, ending = True, "failed"
            started = time.monotonic()
            try:
                validate(cfg, recipe)
                result = main(cfg)
                failed, ending = False, "finished"
                return result
            except RunFailure as err:
                if debug():
                    raise
                prefix = "" if isinstance(err, RunInterrupted) else "error: "
                say(f"{tag(recipe)} {prefix}{err}", file=sys.stderr)
                ending = "stopped" if isinstance(err, RunInterrupted) else "failed"
                code = err.exit_code
            except _plain_errors() as err:
                if debug():
                    raise
                say(f"{tag(recipe)} error: {_one_line(err)}", file=sys.stderr)
                code = 2
            finally:
                # the run's log (opened by the recipe once it has a run directory): how this
                # session ended and its wall time, so the log adds up a run's sessions
                end_session(tag(recipe), ending, time.monotonic() - started)
                if fresh and run_dir is not None:
                    discard_stub(run_dir, failed=failed)
            sys.exit(code)

        return run

    return decorate


def _plain_errors() -> tuple[type[BaseException], ...]:
    """Errors from the package that already say what to do in their message."""
    from torchrl_dmg.data.local import InvalidDatasetIdError
    from torchrl_dmg.data.offline import DatasetUnavailableError

    return (InvalidDatasetIdError, DatasetUnavailableError, PermissionError)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def discard_stub(run_dir: Path, *, failed: bool) -> None:
    """Remove ``run_dir`` (made by Hydra for this command) when it holds nothing of a run:
    only Hydra's files, or after a failure no checkpoint and no metrics either."""
    if not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()}
    keep = {"checkpoint.pt", "checkpoint.prev.pt", "metrics.csv", "state.pt", "offline"}
    if only_hydra_files(run_dir) or (failed and not names & keep):
        shutil.rmtree(run_dir, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for parent in run_dir.resolve().parents:  # outputs/offline/ left empty by it
            if parent == cwd or cwd not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break


def preflight(argv: list[str] | None = None, *, lock: bool = False) -> None:
    """Before Hydra makes the run directory: refuse, in one line (exit 2), a
    ``hydra.run.dir=`` / ``out_dir=`` that cannot be written (Hydra's own error is a
    traceback); with ``lock``, take the run directory of ``hydra.run.dir=`` and
    ``resume=`` for this process (:func:`~torchrl_dmg.training.checkpoint.lock_run_dir`),
    refusing in one line one that another run writes now, before Hydra touches it; and put
    this folder on ``PYTHONPATH`` for the jobs of a sweep (:func:`export_recipes_path`)."""
    export_recipes_path()
    argv = sys.argv[1:] if argv is None else argv
    targets = [a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "out_dir="))]
    for target in targets or ["outputs"]:
        problem = unwritable(Path(target))
        if problem:
            key = "hydra.run.dir" if targets else "the run directory"
            print(
                f"[dmg] error: {key}={target} cannot be written ({problem}); choose a "
                "directory you can write, e.g. hydra.run.dir=outputs/my_run",
                file=sys.stderr,
            )
            sys.exit(2)
    if not lock:
        return
    from torchrl_dmg.training.checkpoint import lock_run_dir

    runs = [a for a in argv if a.startswith(("hydra.run.dir=", "resume="))]
    for arg in runs:
        key, value = arg.split("=", 1)
        if key == "resume" and not Path(value).is_dir():
            continue  # not a run directory: the recipe refuses it
        try:
            lock_run_dir(value)
        except RunRefused as err:
            print(f"[dmg] error: {key}={err}", file=sys.stderr)
            sys.exit(2)


def export_recipes_path() -> None:
    """Prepend this folder to ``PYTHONPATH`` (once). A launcher that runs each job in a
    fresh interpreter (Hydra's submitit: local processes or SLURM jobs, which inherit the
    environment) unpickles the recipe's task there, and the task refers to the recipes'
    sibling modules (``cli``, ``runs``, ``utils`` ...) by name: without this folder on that
    interpreter's path every job fails with ``No module named 'runs'``."""
    here = str(Path(__file__).resolve().parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be made or written (``None``: it can)."""
    path = path.expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file"
    if str(probe).startswith(("/proc", "/sys")) or not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def refuse(message: str) -> RunRefused:
    """A :class:`RunRefused` (for ``raise refuse(...)`` in the recipes' checks)."""
    return RunRefused(message)

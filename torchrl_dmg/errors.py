"""Errors a recipe reports to its user in one line (no traceback), with their exit codes.

The recipes print ``str(error)`` and exit with ``error.exit_code``; set
``TORCHRL_DMG_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations


class RunFailure(Exception):
    """A failure the user can act on; its message is one line saying what to do."""

    exit_code = 1


class RunRefused(RunFailure, ValueError):
    """A bad input (configuration, dataset id, run directory, checkpoint): nothing was
    started and nothing was written."""

    exit_code = 2


class TrainingDiverged(RunFailure, RuntimeError):
    """A non-finite loss, parameter or Q estimate (or, when asked, a Q estimate beyond the
    range of any return): the run stopped; its last good checkpoint is intact."""

    exit_code = 3


class CheckpointWriteError(RunFailure, OSError):
    """A checkpoint could not be written whole (disk full, quota, permissions); the
    previous checkpoint is intact."""

    exit_code = 4


class RunInterrupted(RunFailure):
    """SIGTERM or SIGINT: a checkpoint was saved at an iteration boundary."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)

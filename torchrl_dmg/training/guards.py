"""Run guards: a NaN/inf stop and a graceful stop on SIGTERM / SIGINT.

* :class:`FiniteGuard` checks every update's losses and Q/V estimates; the first NaN or
  infinity stops the run with the step, the term and the last good checkpoint named
  (:class:`~torchrl_dmg.errors.TrainingDiverged`), before another checkpoint is written.
* :class:`StopRequest` turns SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C) into a
  flag that the training loops read at each iteration boundary: they save a checkpoint
  there and stop with a one-line note of the resume command
  (:class:`~torchrl_dmg.errors.RunInterrupted`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

import torch

from torchrl_dmg.errors import RunInterrupted, TrainingDiverged
from torchrl_dmg.training.checkpoint import previous_path
from torchrl_dmg.training.steps import checked_metrics


class FiniteGuard:
    """Stops a run at the first non-finite loss, Q or V estimate.

    Args:
        checkpoint: the run's checkpoint file, named in the message as the last good one
            (its previous copy when it is missing).
        interval: check every ``interval`` updates (1: every update, "at once"; each check
            is one host sync of a few scalars).
    """

    def __init__(self, checkpoint: str | Path, *, interval: int = 1) -> None:
        if interval < 1:
            raise ValueError(f"guard interval must be >= 1, got {interval}.")
        self.checkpoint = Path(checkpoint)
        self.interval = int(interval)

    def __call__(
        self,
        step: int,
        metrics: Mapping[str, torch.Tensor],
        finite: torch.Tensor | None = None,
    ) -> None:
        """Raise :class:`TrainingDiverged` when a checked entry of ``metrics`` (the
        update's losses and diagnostics: :func:`~torchrl_dmg.training.steps.checked_metrics`)
        holds a NaN or an infinity. ``finite``: the update's own all-finite flag
        (:attr:`ActorCriticUpdater.last_finite`, computed inside the compiled step); when it
        is true the metrics are not looked at one by one (one host read instead of a
        reduction per metric)."""
        if step % self.interval:
            return
        if finite is not None and bool(finite.all()):
            return
        values = checked_metrics(metrics)
        if not values:
            return
        finite = torch.stack([torch.isfinite(v).all() for v in values.values()])
        if bool(finite.all()):
            return
        name = next(k for k, ok in zip(values, finite.tolist(), strict=True) if not ok)
        value = values[name].float()
        shown = value[~torch.isfinite(value)].flatten()[0].item()
        raise TrainingDiverged(
            f"training diverged at step {step}: {name} = {shown} (non-finite); the run "
            f"stopped without writing another checkpoint; the last good checkpoint is "
            f"{last_good_checkpoint(self.checkpoint)}. Try a smaller optim.lr or check the "
            "data's rewards."
        )

    def out_of_bounds(self, step: int, q_min: float, q_max: float, bounds: tuple) -> None:
        """Stop (``guard.stop_on_q_out_of_bounds=true``): a Q estimate beyond the range of
        any discounted return of the data."""
        raise TrainingDiverged(
            f"training diverged at step {step}: Q estimate {q_min:.4g}..{q_max:.4g} lies "
            f"outside [{bounds[0]:.4g}, {bounds[1]:.4g}], the range of any discounted return "
            "(guard.stop_on_q_out_of_bounds=true); the last good checkpoint is "
            f"{last_good_checkpoint(self.checkpoint)}."
        )


def last_good_checkpoint(path: str | Path) -> str:
    """``path`` or its previous copy, whichever exists, for a message."""
    path = Path(path)
    for candidate in (path, previous_path(path)):
        if candidate.is_file():
            return str(candidate)
    return "none (none was written yet)"


class StopRequest:
    """While active (``with StopRequest(...) as stop:``), SIGTERM and SIGINT set
    ``stop.signum`` instead of killing the process; a second SIGINT interrupts at once.

    The loop calls :meth:`check` at each iteration boundary with a function that saves a
    checkpoint at that step; it then raises :class:`RunInterrupted` with ``resume_hint``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, resume_hint: str) -> None:
        self.resume_hint = resume_hint
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        """Take over SIGTERM and SIGINT for the rest of the process (a script's main)."""
        return self.__enter__()

    def __enter__(self) -> StopRequest:
        # A signal handler runs inside whatever Python frame is executing, a compiled
        # update's included; kept out of Dynamo, it never triggers a compilation there,
        # which with the guards skipped (``skip_guard_eval_unsafe``) would be an error.
        handler = torch.compiler.disable(self._handle)
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, step: int, save: Callable[[int], None], unit: str = "step") -> None:
        """If a stop was requested: ``save(step)``, then raise :class:`RunInterrupted`."""
        if self.signum is None:
            return
        save(step)
        name = signal.Signals(self.signum).name
        raise RunInterrupted(
            f"stopped by {name} at {unit} {step}; checkpoint saved. Resume with: "
            f"{self.resume_hint}",
            self.signum,
        )

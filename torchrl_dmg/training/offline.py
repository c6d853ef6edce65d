"""The offline training loop of both recipes, and the divergence check it logs."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from torchrl_dmg.errors import RunRefused
from torchrl_dmg.training.updater import ActorCriticUpdater


def train_offline(
    updater: ActorCriticUpdater,
    buffer,
    *,
    start: int,
    steps: int,
    logger,
    log_interval: int,
    checkpoint: Callable[[int], None],
    checkpoint_interval: int,
    evaluate: Callable[[int], float] | None = None,
    eval_interval: int = 0,
    progress: bool = True,
    desc: str = "dmg",
    updates_per_call: int = 1,
    value_bounds: tuple[float, float] | None = None,
    diagnostic: Callable[[], dict[str, float]] | None = None,
    guard=None,
    stop=None,
    stop_on_q_out_of_bounds: bool = False,
) -> int:
    """The offline loop of both recipes: sample, update, log every ``log_interval`` steps,
    ``evaluate(step) -> score`` every ``eval_interval`` and ``checkpoint(step)`` every
    ``checkpoint_interval`` steps before the last (the caller evaluates and checkpoints the
    end). A tqdm bar shows steps, it/s, ETA and the last score. Returns the final step.

    ``updates_per_call=K > 1`` runs ``K`` iterations per :meth:`DMGUpdater.update_many`
    call on ``buffer.sample(K)`` (one CUDA graph replay per ``K`` under ``"cudagraphs"``);
    the step counts and intervals must then be multiples of ``K``.

    ``value_bounds`` (:func:`value_bounds`): the range any true value lies in. A logged Q
    estimate (any seed's batch mean) beyond it by more than a tenth of its width marks the
    row ``q_out_of_bounds = 1`` and prints a warning (once): the critic is diverging.
    Without a batch estimate (``state_action_value``) the diagnostic's ``q_data_mean`` is
    checked. With ``stop_on_q_out_of_bounds`` it stops the run (``guard.out_of_bounds``).

    ``guard(step, metrics, updater.last_finite)``
    (:class:`~torchrl_dmg.training.guards.FiniteGuard`) runs after every update call;
    ``stop`` (:class:`~torchrl_dmg.training.guards.StopRequest`) is checked at every
    iteration boundary (SIGTERM / SIGINT: checkpoint, then stop).

    ``diagnostic() -> dict`` (:class:`~torchrl_dmg.training.diagnostics.OverestimationDiagnostic`):
    entries added to every logged row."""
    per_call = updates_per_call
    named = {"steps": steps, "the start step": start, "log_interval": log_interval}
    named.update(eval_interval=eval_interval, checkpoint_interval=checkpoint_interval)
    _check_updates_per_call(per_call, updater.policy_freq, named)
    step, train_time, warned = start, 0.0, False
    bar = tqdm(
        total=steps, initial=step, disable=not progress, desc=desc, unit="step", mininterval=1.0
    )
    while step < steps:
        # the logged updates/s count everything but evaluation and checkpoints: sampling,
        # the update, the NaN guard, the diagnostic, logging and the progress bar
        t0 = time.perf_counter()
        metrics = _update(updater, buffer, per_call)
        step += per_call
        bar.update(per_call)
        if guard is not None:
            guard(step, metrics, updater.last_finite)
        if step % log_interval == 0:
            train_time += time.perf_counter() - t0
            row = _train_row(metrics, updater.actor_lr, log_interval / max(train_time, 1e-9))
            train_time = 0.0
            t0 = time.perf_counter()
            if diagnostic is not None:
                row.update(diagnostic())
            stopper = guard if stop_on_q_out_of_bounds else None
            warned = _check_bounds(row, metrics, step, value_bounds, stopper, bar, warned)
            logger.log(step, "train", row)
        train_time += time.perf_counter() - t0
        if step < steps:
            if evaluate is not None and eval_interval and step % eval_interval == 0:
                bar.set_postfix(score=f"{evaluate(step):.1f}")
            if checkpoint_interval and step % checkpoint_interval == 0:
                checkpoint(step)
            if stop is not None:
                stop.check(step, checkpoint)
    bar.close()
    return step


def _check_bounds(row: dict, metrics: dict, step: int, bounds, stopper, bar, warned: bool) -> bool:
    """Mark ``row["q_out_of_bounds"]`` when the Q estimate leaves ``bounds``: a warning the
    first time (returns whether one was given), a stop with ``stopper.out_of_bounds``."""
    q = _q_estimate(metrics, row)
    if bounds is None or q is None:
        return warned
    row["q_out_of_bounds"] = float(_out_of_bounds(q, bounds))
    if not row["q_out_of_bounds"]:
        return warned
    if stopper is not None:
        stopper.out_of_bounds(step, q.min().item(), q.max().item(), bounds)
    if not warned:
        bar.write(_divergence_warning(step, q, bounds))
    return True


def _update(updater: ActorCriticUpdater, buffer, per_call: int) -> dict:
    """One update call's metrics: ``per_call`` iterations (one CUDA graph replay when
    ``K > 1``), their metrics averaged over them."""
    if per_call == 1:
        return updater.update(buffer.sample())
    many = updater.update_many(buffer.sample(per_call))
    return {**many["critic"].to_dict(), **many["actor"].to_dict()}


def _check_updates_per_call(per_call: int, policy_freq: int, named: dict[str, int]) -> None:
    if per_call < 1:
        raise RunRefused(f"updates_per_call must be >= 1, got {per_call}.")
    if per_call > 1:
        bad = {k: v for k, v in named.items() if v % per_call}
        if per_call % policy_freq or bad:
            raise RunRefused(
                f"updates_per_call={per_call} (iterations per call) must be a multiple of "
                f"policy_freq ({policy_freq}) and divide the step counts; not "
                f"multiples of it: {bad}. Choose another updates_per_call, or 1."
            )


def _train_row(metrics: dict, actor_lr: float, updates_per_s: float) -> dict[str, float]:
    """A logged row: every metric's mean over seeds (and over the call's iterations)."""
    row = {k: v.float().mean().item() for k, v in metrics.items()}
    row["actor_lr"] = actor_lr
    row["updates_per_s"] = updates_per_s
    return row


def _q_estimate(metrics: dict, row: dict[str, float]) -> torch.Tensor | None:
    """The batch's Q estimate (every seed's), else the diagnostic's, else ``None``."""
    if "state_action_value" in metrics:
        return metrics["state_action_value"].float()
    per_seed = [v for k, v in row.items() if k.startswith("q_data_mean")]
    return torch.tensor(per_seed) if per_seed else None


def _out_of_bounds(q: torch.Tensor, bounds: tuple[float, float]) -> bool:
    """Whether a Q estimate lies beyond ``bounds`` by more than a tenth of their width."""
    low, high = bounds
    margin = 0.1 * (high - low)
    return bool(q.max() > high + margin or q.min() < low - margin)


def _divergence_warning(step: int, q: torch.Tensor, bounds: tuple[float, float]) -> str:
    low, high = bounds
    return (
        f"[dmg] WARNING step {step}: Q estimate {q.min().item():.4g}.."
        f"{q.max().item():.4g} lies outside [{low:.4g}, {high:.4g}], the range "
        "of any discounted return of this data: the critic is diverging "
        "(the scores that follow are not to be trusted; see the spec on λ, ν)."
    )


def value_bounds(rewards: torch.Tensor, gamma: float) -> tuple[float, float]:
    """The range of every discounted return ``sum_t gamma^t r_t`` (any horizon, episodes
    ending anywhere) with per-step rewards in ``[rewards.min(), rewards.max()]``:
    ``[min(r_min, 0), max(r_max, 0)] / (1 - gamma)``."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}.")
    r_min, r_max = float(rewards.min()), float(rewards.max())
    return min(r_min, 0.0) / (1.0 - gamma), max(r_max, 0.0) / (1.0 - gamma)

"""Figures of a report: learning curves with CI bands, the overestimation diagnostic, and
the ablations of the paper's Figures 1–2 (final score and final Q against λ or ν)."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from torchrl_dmg.report.runs import SeedRun, _canonical
from torchrl_dmg.report.stats import bootstrap_ci, wilson_interval
from torchrl_dmg.report.tables import (
    ABLATION_KEYS,
    Cell,
    settings_label,
    short_key,
    sweep_lines,
)

__all__ = [
    "ABLATION_KEYS",
    "line_labels",
    "Ablation",
    "ablations",
    "curve_band",
    "plot_ablation",
    "plot_curves",
    "plot_overestimation",
    "shared_mc_return",
    "slug",
]

# ν is drawn on a log axis
LOG_X_KEYS = ("loss.penalty_coef",)
CURVE_BOOTSTRAP_REPS = 2_000  # per eval step: a band, not a headline number


def slug(text: str) -> str:
    """A file-name-safe version of a dataset id or label."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_band(
    steps_list: Sequence[np.ndarray], values_list: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Union of steps; at each, the mean over the seeds that have it and the 95% bootstrap
    CI of that mean (NaN where a single seed has it)."""
    steps = np.unique(np.concatenate([np.asarray(s) for s in steps_list]))
    mean = np.full(steps.shape, np.nan)
    low, high = mean.copy(), mean.copy()
    for i, step in enumerate(steps):
        vals = np.array(
            [v[s == step][0] for s, v in zip(steps_list, values_list, strict=True) if step in s]
        )
        vals = vals[np.isfinite(vals)]
        if vals.size:
            mean[i] = vals.mean()
            low[i], high[i] = bootstrap_ci(vals, reps=CURVE_BOOTSTRAP_REPS, seed=i)
    return steps, mean, low, high


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def curve_band(runs: Sequence[SeedRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, low, high)`` of one column's learning curve: over several seeds the
    mean and its 95% bootstrap CI; a single seed scored by success rate gets the 95%
    Wilson interval over its evaluation episodes instead (one seed has no spread to
    resample)."""
    steps, mean, low, high = _mean_band(
        [r.curve_steps for r in runs], [r.curve_scores for r in runs]
    )
    if len(runs) == 1 and runs[0].success_episodes is not None:
        n = runs[0].success_episodes
        low, high = wilson_interval(np.round(mean * n / 100.0), n)
    return steps, mean, low, high


def plot_curves(cells: Sequence[Cell], dataset: str, out: str | os.PathLike) -> Path:
    """Learning curves of one dataset: per column, the mean normalised score over seeds
    with its 95% bootstrap CI band (:func:`curve_band`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    wilson = False
    for i, cell in enumerate(c for c in cells if c.dataset == dataset):
        steps, mean, low, high = curve_band(cell.runs)
        one_rate = len(cell.runs) == 1 and cell.runs[0].success_episodes is not None
        wilson |= one_rate
        color = f"C{i % 10}"
        ax.plot(
            steps,
            mean,
            color=color,
            lw=2,
            marker="o",
            ms=3,
            label=f"{cell.column} (n={len(cell.runs)}{', Wilson CI' if one_rate else ''})",
        )
        ax.fill_between(steps, low, high, color=color, alpha=0.18, lw=0)
    title = f"{dataset}: mean over seeds, 95% bootstrap CI"
    if wilson:
        title += " (one seed: Wilson CI over episodes)"
    return _finish_curve_plot(fig, ax, "normalised score", title, out)


def has_overestimation(runs: Sequence[SeedRun]) -> bool:
    """Whether any run logged the diagnostic (``q_data_mean`` and ``mc_return_mean``)."""
    return any(r.has_diagnostic and np.isfinite(r.mc_return).any() for r in runs)


def plot_overestimation(cells: Sequence[Cell], dataset: str, out: str | os.PathLike) -> Path:
    """Mean Q over the diagnostic sample (solid) against the mean Monte-Carlo return of the
    same transitions (dashed) over training, per column of one dataset."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    drawn = [
        (cell, [r for r in cell.runs if r.has_diagnostic])
        for cell in cells
        if cell.dataset == dataset
    ]
    drawn = [(cell, runs) for cell, runs in drawn if runs]
    shared = shared_mc_return([r for _, runs in drawn for r in runs])
    for i, (cell, runs) in enumerate(drawn):
        color = f"C{i % 10}"
        steps, q, q_low, q_high = _mean_band([r.diag_steps for r in runs], [r.q_data for r in runs])
        ax.plot(steps, q, color=color, lw=2, label=f"{cell.column}: Q(s, a)")
        ax.fill_between(steps, q_low, q_high, color=color, alpha=0.15, lw=0)
        if shared is None:
            mc_steps, mc, _, _ = _mean_band(
                [r.diag_steps for r in runs], [r.mc_return for r in runs]
            )
            ax.plot(mc_steps, mc, color=color, lw=1.5, ls="--", label=f"{cell.column}: MC return")
    if shared is not None:  # one sample, one γ: one line for every column
        ax.axhline(shared, color="black", lw=1.5, ls="--", label="MC return of the data")
    title = f"{dataset}: Q vs Monte-Carlo return (overestimation)"
    return _finish_curve_plot(fig, ax, "mean over the fixed sample", title, out, outside=True)


def shared_mc_return(runs: Sequence[SeedRun]) -> float | None:
    """The Monte-Carlo return every one of ``runs`` logged (the same fixed sample and γ
    give the same number throughout), else ``None`` (each column draws its own; none
    logged it)."""
    if not runs:
        return None
    values = np.concatenate([np.asarray(r.mc_return, dtype=np.float64) for r in runs])
    values = values[np.isfinite(values)]
    if not values.size or not np.allclose(values, values[0], rtol=1e-6, atol=1e-9):
        return None
    return float(values[0])


def _finish_curve_plot(
    fig, ax, ylabel: str, title: str, out: str | os.PathLike, *, outside: bool = False
) -> Path:
    """Labels, grid and legend of a plot against gradient steps (``outside``: the legend
    right of the axes, for many lines), then the file."""
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, Path(out))


class Ablation:
    """Runs of one dataset and algorithm in which ``key`` (λ or ν) takes several values;
    ``lines`` maps the other varied keys' values to ``{key value: [seeds]}``."""

    def __init__(self, dataset: str, algo: str, key: str) -> None:
        self.dataset, self.algo, self.key = dataset, algo, key
        self.lines: dict[tuple, dict[float, list[SeedRun]]] = {}

    @property
    def name(self) -> str:
        return f"{self.dataset} · {self.algo} · {short_key(self.key)}"


def ablations(cells: Sequence[Cell]) -> list[Ablation]:
    """One :class:`Ablation` per dataset, algorithm and :data:`ABLATION_KEYS` key that
    varies there; each line (fixed other keys) needs at least two values of the key."""
    out = []
    groups: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.dataset, cell.algo)].append(cell)
    for (dataset, algo), group in groups.items():
        for key in ABLATION_KEYS:
            ablation = Ablation(dataset, algo, key)
            for rest, line in sweep_lines(group, key).items():
                values: dict[float, list[SeedRun]] = defaultdict(list)
                for cell in line:
                    values[float(dict(cell.variant)[key])].extend(cell.runs)
                ablation.lines[rest] = dict(values)
            if ablation.lines:
                out.append(ablation)
    return out


def line_labels(ablation: Ablation) -> dict[tuple, str]:
    """Each line's label: the other of λ and ν, and the settings whose values differ between
    the lines (``λ=0.25, steps=30000``); settings all lines share are left out (each seed
    links its full config). ``""`` for a line with no other setting."""
    rests = list(ablation.lines)
    keys = dict.fromkeys(k for rest in rests for k, _ in rest)
    shown = [
        k
        for k in keys
        if k in ABLATION_KEYS or len({_canonical(dict(r).get(k)) for r in rests}) > 1
    ]
    return {
        rest: settings_label([(k, v) for k, v in rest if k in shown], dict(rest)) for rest in rests
    }


def plot_ablation(ablation: Ablation, out: str | os.PathLike) -> Path:
    """Final score (left) and final Q (right) against the swept λ or ν: one dot per seed,
    the mean of the non-diverged seeds as a line, diverged seeds as red crosses (a
    non-finite Q drawn at the top edge, marked ∞); on the Q panel the data's Monte-Carlo
    return as a dashed line where every run logged the same one."""
    plt = _pyplot()
    fig, (ax_s, ax_q) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    symbol = short_key(ablation.key)
    finite_q = [
        r.final_q
        for vals in ablation.lines.values()
        for runs in vals.values()
        for r in runs
        if math.isfinite(r.final_q)
    ]
    q_top = max(finite_q) if finite_q else 1.0
    labels = line_labels(ablation)
    for i, (rest, vals) in enumerate(sorted(ablation.lines.items(), key=lambda kv: repr(kv[0]))):
        color = f"C{i % 10}"
        label = labels[rest] or ablation.algo
        xs = sorted(vals)
        for ax, attr in ((ax_s, "score"), (ax_q, "final_q")):
            means = []
            for x in xs:
                ok = [getattr(r, attr) for r in vals[x] if not r.diverged]
                ok = [v for v in ok if math.isfinite(v)]
                means.append(np.mean(ok) if ok else np.nan)
                for r in vals[x]:
                    y = getattr(r, attr)
                    if r.diverged:
                        shown = y if math.isfinite(y) else q_top
                        ax.scatter([x], [shown], marker="x", color="red", s=45, zorder=3)
                        if not math.isfinite(y):
                            ax.annotate(
                                "∞",
                                (x, shown),
                                color="red",
                                fontsize=9,
                                xytext=(4, 2),
                                textcoords="offset points",
                            )
                    elif math.isfinite(y):
                        ax.scatter([x], [y], color=color, s=18, alpha=0.6, zorder=2)
            ax.plot(xs, means, color=color, lw=1.8, marker="o", label=label)
    for ax, ylabel in ((ax_s, "final normalised score"), (ax_q, "final Q (mean over data)")):
        ax.set_xlabel(f"{symbol} ({ablation.key})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ablation.key in LOG_X_KEYS:
            ax.set_xscale("log")
    every = [r for vals in ablation.lines.values() for runs in vals.values() for r in runs]
    mc = shared_mc_return([r for r in every if r.has_diagnostic])
    if mc is not None:  # where the critics leave the data's returns
        ax_q.axhline(mc, color="black", lw=1.2, ls="--", label="MC return of the data")
        ax_q.legend(fontsize=8, loc="best")
    ax_s.scatter([], [], marker="x", color="red", label="diverged seed")
    ax_s.legend(fontsize=8, loc="best")
    fig.suptitle(f"{ablation.dataset}, {ablation.algo}: sweep of {symbol}", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out))

"""Learning curves of recipe runs: normalised score against steps, one PNG.

Reads each run's ``metrics.csv`` (the ``eval`` rows). A run of several stacked seeds
(``recipes/offline.py seeds=N``) is drawn as one thin line per seed plus their mean, with
the band between the lowest and highest seed; a single-seed run as its score with a band
over its evaluation episodes: the 95% Wilson interval of a success rate (AntMaze, where
every episode scores 0 or 100, :func:`~torchrl_dmg.report.stats.wilson_interval`), else ±
the std. The recipes call :func:`plot_scores` at the end of every run (``scores.png`` in
the run directory). Several runs on one plot, with reference lines::

    python -c "from torchrl_dmg.report.plotting import plot_scores; plot_scores(
        ['outputs/offline/<run a>', 'outputs/offline/<run b>'], 'scores.png',
        hlines={'behaviour': 28.6})"

``recipes/report.py`` draws the curves of whole sweeps (mean over seeds, bootstrap CIs).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from torchrl_dmg.report.runs import cell_float, success_episodes
from torchrl_dmg.report.stats import wilson_interval

__all__ = ["episode_band", "plot_scores", "read_eval_rows"]

_SEED_COLUMN = re.compile(r"^normalized_score/s(\d+)$")


def read_eval_rows(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The ``eval`` rows of ``run_dir/metrics.csv``, in step order."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a recipe run directory?")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("kind") == "eval"]
    return sorted(rows, key=lambda r: int(float(r["step"])))


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [cell_float(r, key) for r in rows]


def episode_band(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, low, high)`` at each eval row of a single-seed run: its normalised score
    and the band over its evaluation episodes, the 95% Wilson interval for a success rate
    (``score · n / 100`` successes of ``n`` episodes, :func:`success_episodes`), else
    score ± std."""
    rows = read_eval_rows(run_dir)
    mean = np.array(_floats(rows, "normalized_score"))
    episodes = success_episodes(run_dir)
    if episodes is not None:
        low, high = wilson_interval(np.round(mean * episodes / 100.0), episodes)
        return mean, low, high
    std = np.array(_floats(rows, "normalized_score_std"))
    return mean, mean - std, mean + std


def plot_scores(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    hlines: Mapping[str, float] | None = None,
    title: str | None = None,
    xlabel: str = "step",
) -> Path:
    """Write a PNG of the normalised score of each run against its step.

    Args:
        run_dirs: recipe run directories (each with a ``metrics.csv``).
        out: the PNG to write (its directory is created).
        labels: legend label per run (default: the directory names).
        hlines: horizontal reference lines, label -> score (e.g. a behaviour policy's).
        title: the plot title (default: the first run's directory name).
        xlabel: the x-axis label (``gradient steps``, ``online env steps``).
    """
    # matplotlib: an optional heavy dependency of the package (only plots need it), its
    # file-only backend chosen here rather than at import, where it would change a
    # caller's own plotting
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels is not None else [Path(d).name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
    for i, (run_dir, label) in enumerate(zip(run_dirs, labels, strict=True)):
        rows = read_eval_rows(run_dir)
        if not rows:
            continue
        color = f"C{i}"
        steps = np.array([int(float(r["step"])) for r in rows])
        seed_cols = sorted(
            (int(m.group(1)), key) for key in rows[0] if (m := _SEED_COLUMN.match(key))
        )
        mean = np.array(_floats(rows, "normalized_score"))
        if seed_cols:
            for _, key in seed_cols:
                ax.plot(steps, _floats(rows, key), color=color, alpha=0.35, lw=1)
            per_seed = np.array([_floats(rows, key) for _, key in seed_cols])
            label = f"{label} (mean of {len(seed_cols)} seeds; thin: each seed)"
            ax.fill_between(steps, per_seed.min(0), per_seed.max(0), color=color, alpha=0.12, lw=0)
        else:
            _, low, high = episode_band(run_dir)
            episodes = success_episodes(run_dir)
            band = f"95% Wilson CI, {episodes} episodes" if episodes else "± std over episodes"
            label = f"{label} (band: {band})"
            ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
        ax.plot(steps, mean, color=color, lw=2, marker="o", ms=3, label=label)
    for j, (label, value) in enumerate((hlines or {}).items()):
        ax.axhline(
            float(value),
            color=f"C{len(run_dirs) + j}",
            ls="--",
            lw=1.2,
            label=f"{label} ({value:g})",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised score")
    ax.set_title(title or Path(run_dirs[0]).name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

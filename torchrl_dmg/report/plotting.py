"""Learning curves of recipe runs: normalised score against steps, one PNG.

    python -m torchrl_dmg.report.plotting outputs/offline/<run> [more runs ...] --out scores.png \
        --hline "behaviour policy=28.6"

Reads each run's ``metrics.csv`` (the ``eval`` rows). A run of several stacked seeds
(``recipes/offline.py seeds=N``) is drawn as one thin line per seed plus their mean; a
single-seed run as its score with a band of ± the std over evaluation episodes. The
recipes call :func:`plot_scores` at the end of every run (``scores.png`` in the run
directory).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_scores", "read_eval_rows"]

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
    return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]


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
            std = np.array(_floats(rows, "normalized_score_std"))
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, lw=0)
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


def _parse_hline(text: str) -> tuple[str, float]:
    label, sep, value = text.rpartition("=")
    if not sep:
        raise ValueError(f"--hline expects LABEL=VALUE, got {text!r}")
    return label, float(value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Plot recipe runs' normalised scores.")
    parser.add_argument("runs", nargs="+", help="recipe run directories")
    parser.add_argument("--out", default="scores.png")
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--hline", action="append", default=[], help="LABEL=VALUE")
    parser.add_argument("--title", default=None)
    parser.add_argument("--xlabel", default="step")
    args = parser.parse_args()
    path = plot_scores(
        args.runs,
        args.out,
        labels=args.labels,
        hlines=dict(_parse_hline(h) for h in args.hline),
        title=args.title,
        xlabel=args.xlabel,
    )
    print(f"wrote {path}")

"""``results.md`` + ``results.csv`` + figures from run directories (``recipes/report.py``)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torchrl_dmg.report.figures import (
    ablations,
    has_overestimation,
    plot_ablation,
    plot_curves,
    plot_overestimation,
    slug,
)
from torchrl_dmg.report.runs import SeedRun, load_runs
from torchrl_dmg.report.stats import BOOTSTRAP_REPS
from torchrl_dmg.report.tables import (
    ABLATION_KEYS,
    Cell,
    _link,
    _num,
    build_cells,
    column_iqms,
    markdown_seed_table,
    markdown_table,
    short_key,
    table_cells,
    write_csv,
)

__all__ = ["Report", "print_summary", "read_intro", "write_report"]


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    markdown: Path
    csv: Path
    figures: list[Path]
    cells: list[Cell]
    runs: list[SeedRun]


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


# a Markdown link or image target: ](target) or ](target "title")
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?P<rest>[^)]*)\)")


def read_intro(path: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """The Markdown of ``path`` with its relative links rewritten to resolve from
    ``out_dir`` (where the report will be), so one notes file reads right in both places."""
    path, out_dir = Path(path), Path(out_dir)

    def rebase(match: re.Match) -> str:
        target = match["target"]
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target):  # URL, anchor, absolute
            return match[0]
        return f"]({_rel(path.parent / target, out_dir)}{match['rest']})"

    return _LINK.sub(rebase, path.read_text())


def _ablation_table(ablation, out_dir: Path) -> str:
    lines = [
        f"| {short_key(ablation.key)} | other settings | seeds | final score (mean ± std) "
        "| final Q (mean) | diverged | seeds (score / Q) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rest, vals in sorted(ablation.lines.items(), key=lambda kv: repr(kv[0])):
        other = ", ".join(f"{short_key(k)}={v}" for k, v in rest) or "—"
        for x in sorted(vals):
            runs = vals[x]
            scores = [r.score for r in runs if math.isfinite(r.score)]
            qs = [r.final_q for r in runs if math.isfinite(r.final_q)]
            mean_s = sum(scores) / len(scores) if scores else math.nan
            std_s = (
                (sum((s - mean_s) ** 2 for s in scores) / len(scores)) ** 0.5
                if scores
                else math.nan
            )
            mean_q = sum(qs) / len(qs) if qs else math.nan
            div = sum(r.diverged for r in runs)
            per_seed = " ".join(
                _link(f"{_num(r.score)} / {r.final_q:.3g}{'†' if r.diverged else ''}", r, out_dir)
                for r in runs
            )
            lines.append(
                f"| {x:g} | {other} | {len(runs)} | {_num(mean_s)} ± {_num(std_s)} | "
                f"{mean_q:.4g} | {div}/{len(runs)} | {per_seed} |"
            )
    return "\n".join(lines)


def write_report(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    title: str = "Results",
    seed: int = 0,
    intro: str | None = None,
) -> Report:
    """Read every run at or below ``paths`` and write ``out_dir/results.md``,
    ``out_dir/results.csv`` and the figures (``out_dir/figures/*.png``).

    Args:
        paths: run directories or sweep directories (searched recursively).
        out_dir: where the report goes (links in it are relative to it).
        title: the Markdown title.
        seed: seed of the bootstrap generators (the same runs give the same report).
        intro: Markdown placed under the title, before any table (hand-written notes on
            the runs; every number below it stays generated).
    """
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    runs = load_runs(paths)
    if not runs:
        raise FileNotFoundError(
            f"no run with an eval row under {', '.join(map(str, paths))} (a run directory "
            "holds config.yaml and metrics.csv)"
        )
    cells = build_cells(runs, seed=seed)  # refuses a seed counted twice: nothing written
    out_dir.mkdir(parents=True, exist_ok=True)
    iqms = column_iqms(cells, seed=seed)
    csv_path = write_csv(cells, iqms, out_dir / "results.csv")
    figures: list[Path] = []
    md = _score_section(title, paths, runs, cells, out_dir, csv_path, intro, seed)
    md += _curves_section(cells, out_dir, figures)
    md += _overestimation_section(cells, runs, out_dir, figures)
    md += _ablation_section(cells, out_dir, figures)
    md += ["## Every seed", "", markdown_seed_table(cells, out_dir), ""]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(md))
    return Report(md_path, csv_path, figures, cells, runs)


def _score_section(
    title, paths, runs, cells, out_dir: Path, csv_path: Path, intro: str | None, seed: int
) -> list[str]:
    """The title, where the runs came from, the notes, and the Table 2 layout with its legend."""
    n_runs = len({r.run_dir for r in runs})
    unfinished = sum(not r.finished for r in runs)
    md = [f"# {title}", ""]
    md.append(
        f"Generated by `recipes/report.py` from {n_runs} run directories ({len(runs)} seeds) "
        f"under {', '.join(f'`{p}`' for p in paths)}."
        + (
            f" {unfinished} seeds belong to unfinished runs (last eval row used)."
            if unfinished
            else ""
        )
    )
    if intro and intro.strip():
        md += ["", intro.strip()]
    md += ["", "## Final normalised score (the paper's Table 2 layout)", ""]
    table, folded, stand_ins = table_cells(cells)
    md.append(markdown_table(table, column_iqms(table, seed=seed), out_dir))
    md += [
        "",
        "Each cell: mean ± std over seeds (std with ddof=0, as the recipes' summaries), the "
        f"95% percentile-bootstrap CI of the mean ({BOOTSTRAP_REPS:,} resamples of the seeds; "
        "none for one seed), then every seed's final score linked to its run's resolved "
        "`config.yaml` (†: diverged: its final Q is not finite or its critic left the range "
        "of any return of the data, `q_out_of_bounds`). **IQM**: interquartile mean of the "
        "column's final scores pooled over its datasets, with a stratified bootstrap 95% CI "
        "(seeds resampled within each dataset), as rliable computes it. The final score is "
        "the last evaluation of a run; the last column names the reference returns the "
        "scores are normalised with. Algorithm `dmg` includes runs that predate the `algo` "
        "key.",
        "",
        f"Also as CSV, with a column for every setting: [{csv_path.name}]({csv_path.name}).",
        "",
    ]
    if folded:
        md[-2:-2] = [_folded_note(folded, stand_ins), ""]
    return md


def _folded_note(folded: list[Cell], stand_ins: list[tuple[Cell, Cell]]) -> str:
    """Which setting of each λ/ν sweep stands for it in the table."""
    standing = [
        f"`{cell.column}` on {cell.dataset} at "
        + ", ".join(
            f"{short_key(k)}={setting.runs[0].value(k)}"
            for k in ABLATION_KEYS
            if setting.runs[0].value(k) is not None
        )
        for cell, setting in stand_ins
    ]
    return (
        f"λ/ν sweeps: {len(folded)} more settings are in the ablation section below; in the "
        "table one setting stands for each sweep (the one where a λ and a ν sweep cross, "
        "else the one with the most seeds): " + "; ".join(standing) + "."
    )


def _curves_section(cells, out_dir: Path, figures: list[Path]) -> list[str]:
    md = ["## Learning curves", ""]
    for dataset in sorted({c.dataset for c in cells}):
        path = plot_curves(cells, dataset, out_dir / "figures" / f"curves_{slug(dataset)}.png")
        figures.append(path)
        md += [f"![learning curves, {dataset}]({_rel(path, out_dir)})", ""]
    return md


def _overestimation_section(cells, runs, out_dir: Path, figures: list[Path]) -> list[str]:
    md = ["## Overestimation: Q against the Monte-Carlo return", ""]
    datasets = sorted({c.dataset for c in cells})
    logged = [d for d in datasets if has_overestimation([r for r in runs if r.dataset == d])]
    for dataset in logged:
        path = plot_overestimation(
            cells, dataset, out_dir / "figures" / f"overestimation_{slug(dataset)}.png"
        )
        figures.append(path)
        md += [f"![overestimation, {dataset}]({_rel(path, out_dir)})", ""]
    missing = [d for d in datasets if d not in logged]
    if missing:
        md += [
            f"No run of {', '.join(missing)} logged the diagnostic (`q_data_mean` beside "
            "`mc_return_mean` in its train rows), so there is no overestimation plot for it.",
            "",
        ]
    return md


def _ablation_section(cells, out_dir: Path, figures: list[Path]) -> list[str]:
    md = ["## Ablations (the paper's Figures 1–2)", ""]
    found = ablations(cells)
    for ablation in found:
        name = f"ablation_{slug(ablation.dataset)}_{ablation.algo}_{slug(ablation.key)}.png"
        path = plot_ablation(ablation, out_dir / "figures" / name)
        figures.append(path)
        refs = "; ".join(
            sorted(
                {
                    r.score_reference
                    for v in ablation.lines.values()
                    for rs in v.values()
                    for r in rs
                }
            )
        )
        md += [
            f"### {ablation.name}",
            "",
            f"![{ablation.name}]({_rel(path, out_dir)})",
            "",
            _ablation_table(ablation, out_dir),
            "",
            f"Score reference: {refs}. Final Q: the last logged `q_data_mean` where the run "
            "logged the diagnostic, else the critic's mean Q on training batches "
            "(`state_action_value`, the mean over stacked seeds); † diverged.",
            "",
        ]
    if not found:
        md += [
            "No sweep of λ (`loss.mixture_coef`) or ν (`loss.penalty_coef`) with two or more "
            "values on one dataset and algorithm among these runs.",
            "",
        ]
    return md


def print_summary(report: Report, stream=None) -> None:
    """The table's numbers in plain text, one line per cell (what the recipe prints)."""
    for cell in report.cells:
        s = cell.stats
        ci = f" CI95 [{_num(s.ci_low)}, {_num(s.ci_high)}]" if s.n >= 2 else ""
        print(
            f"[report] {cell.dataset:32s} {cell.column:28s} {_num(s.mean)} ± {_num(s.std)}"
            f"{ci} (n={s.n}, diverged {cell.diverged})",
            file=stream,
        )

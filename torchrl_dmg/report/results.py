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
    line_labels,
    plot_ablation,
    plot_curves,
    plot_overestimation,
    slug,
)
from torchrl_dmg.report.published import (
    Published,
    load_published,
    published_columns,
    published_csv_rows,
    published_note,
)
from torchrl_dmg.report.runs import ONLINE_SUFFIX, SeedRun, load_runs
from torchrl_dmg.report.runtime import runtime_table
from torchrl_dmg.report.stats import BOOTSTRAP_REPS
from torchrl_dmg.report.tables import (
    ABLATION_KEYS,
    Cell,
    _link,
    _num,
    algos,
    build_cells,
    column_iqms,
    csv_rows,
    markdown_seed_table,
    markdown_table,
    short_key,
    table_cells,
    write_csv,
)

__all__ = ["Report", "print_summary", "read_intro", "study_groups", "write_report"]


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
        "| final Q (mean) | MC return | Q above it from step | diverged | seeds (score / Q) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = line_labels(ablation)
    for rest, vals in sorted(ablation.lines.items(), key=lambda kv: repr(kv[0])):
        other = labels[rest] or "—"
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
            mc = [float(r.mc_return[-1]) for r in runs if r.has_diagnostic]
            mc = [v for v in mc if math.isfinite(v)]
            mean_mc = f"{sum(mc) / len(mc):.4g}" if mc else "—"
            div = sum(r.diverged for r in runs)
            per_seed = " ".join(
                _link(f"{_num(r.score)} / {r.final_q:.3g}{'†' if r.diverged else ''}", r, out_dir)
                for r in runs
            )
            lines.append(
                f"| {x:g} | {other} | {len(runs)} | {_num(mean_s)} ± {_num(std_s)} | "
                f"{mean_q:.4g} | {mean_mc} | {_passes(runs)} | {div}/{len(runs)} | {per_seed} |"
            )
    return "\n".join(lines)


def _passes(runs: list[SeedRun]) -> str:
    """Each seed's first step with its mean Q above the data's Monte-Carlo return
    (:meth:`SeedRun.q_passes_mc_at`): ``12k 15k never``; ``—`` without the diagnostic."""
    logged = [r for r in runs if r.has_diagnostic]
    if not logged:
        return "—"
    steps = [r.q_passes_mc_at() for r in logged]
    return " ".join("never" if s is None else f"{s / 1000:g}k" for s in steps)


def study_groups(
    paths: Iterable[str | os.PathLike], runs: Iterable[SeedRun]
) -> list[tuple[str, list[SeedRun]]]:
    """Runs grouped by study, in name order: a study is a folder directly under one of
    ``paths`` (``results/<date>_<name>/...``); a run directory given itself as a path is a
    study of its own name."""
    roots = [Path(p).resolve() for p in paths]
    groups: dict[str, list[SeedRun]] = {}
    for run in runs:
        for root in roots:
            if run.run_dir == root or root in run.run_dir.parents:
                rel = run.run_dir.relative_to(root).parts
                groups.setdefault(rel[0] if rel else root.name, []).append(run)
                break
    return sorted(groups.items())


def write_report(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    title: str = "Results",
    seed: int = 0,
    intro: str | None = None,
    studies: bool = False,
    published: bool = False,
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
        studies: one section per study (:func:`study_groups`: each folder directly under
            ``paths``), each with its own table, curves and overestimation plot, so that
            only runs of one study are compared (figures in ``figures/<study>/``); the
            λ/ν ablations stay over every run, as a sweep's crossing point may come from
            another study. Otherwise one table of every run.
        published: beside each table, the paper's published scores for its datasets and
            algorithms (:mod:`torchrl_dmg.report.published`: columns of their own, marked
            ``kind=published`` in the CSV, in no CI or IQM), with a footnote saying they
            were measured on D4RL's data, not these runs'.
    """
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    runs = load_runs(paths)
    if not runs:
        raise FileNotFoundError(
            f"no run with an eval row under {', '.join(map(str, paths))} (a run directory "
            "holds config.yaml and metrics.csv)"
        )
    # a seed counted twice in one table is refused here, before anything is written; with
    # studies, within each study (a rerun in another study is that study's own run)
    if studies:
        sections = [(n, build_cells(g, seed=seed)) for n, g in study_groups(paths, runs)]
        cells = build_cells(runs, seed=seed, refuse_repeats=False)  # ablations span studies
    else:
        cells = build_cells(runs, seed=seed)
        sections = [("", cells)]
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    figures: list[Path] = []
    md = _header(title, paths, runs, intro, len(sections) if studies else 0)
    rows = []
    paper = load_published() if published else None
    for name, study_cells in sections:
        level = "###" if studies else "##"
        fig_dir = out_dir / "figures" / slug(name) if studies else out_dir / "figures"
        if studies:
            md += [f"## {name}", ""]
        table_md, table_rows = _score_table(name, study_cells, out_dir, level, seed, paper)
        md += table_md
        rows += table_rows
        if not studies:
            md += _legend(csv_path.name)
        md += _curves_section(study_cells, out_dir, fig_dir, figures, level)
        md += _overestimation_section(study_cells, out_dir, fig_dir, figures, level)
        md += _runtime_section(study_cells, out_dir, level)
        if not studies:
            md += _ablation_section(study_cells, out_dir, fig_dir, figures, level)
    if studies:  # a sweep may span studies (its crossing point run in another one)
        md += _ablation_section(cells, out_dir, out_dir / "figures", figures, "##")
    write_csv(rows, csv_path)
    every = [c for _, study_cells in sections for c in study_cells]
    md += ["## Every seed", "", markdown_seed_table(every, out_dir), ""]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(md))
    return Report(md_path, csv_path, figures, every, runs)


def _score_table(
    name: str, cells: list[Cell], out_dir: Path, level: str, seed: int, paper: Published | None
) -> tuple[list[str], list[dict]]:
    """One study's Table 2 layout (the paper's published columns beside it when ``paper``
    is given) and its ``results.csv`` rows."""
    table, folded, stand_ins = table_cells(cells)
    rows = csv_rows(cells, column_iqms(cells, seed=seed), out_dir, study=name)
    paper_cols = []
    if paper is not None:
        paper_cols = published_columns(algos(table), sorted({c.dataset for c in table}), paper)
        rows += published_csv_rows(paper_cols, paper, study=name)
    online = bool(table) and all(c.algo.endswith(ONLINE_SUFFIX) for c in table)
    layout = "Table 4 layout: before → after the online steps" if online else "Table 2 layout"
    md = [f"{level} Final normalised score (the paper's {layout})", ""]
    md += [markdown_table(table, column_iqms(table, seed=seed), out_dir, paper_cols), ""]
    if folded:
        md += [_folded_note(folded, stand_ins), ""]
    note = published_note(algos(table), paper_cols, paper) if paper is not None else None
    if note:
        md += [note, ""]
    return md, rows


def _header(title, paths, runs, intro: str | None, n_studies: int) -> list[str]:
    """The title, where the runs came from, the notes; with studies, how to read the tables."""
    n_runs = len({r.run_dir for r in runs})
    unfinished = sum(not r.finished for r in runs)
    md = [f"# {title}", ""]
    md.append(
        f"Generated by `recipes/report.py` from {n_runs} run directories ({len(runs)} seeds) "
        f"under {', '.join(f'`{p}`' for p in paths)}"
        + (
            f", one section per study (a folder under it): algorithms and settings are "
            f"compared only within a study ({n_studies} studies)."
            if n_studies
            else "."
        )
        + (
            f" {unfinished} seeds belong to unfinished runs (last eval row used)."
            if unfinished
            else ""
        )
    )
    if intro and intro.strip():
        md += ["", intro.strip()]
    md.append("")
    if n_studies:
        md += ["## How to read the tables", "", *_legend("results.csv")]
    return md


def _legend(csv_name: str) -> list[str]:
    """What a table cell holds, and where the CSV is."""
    return [
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
        "**Run time**, one row per run directory: training is its logged steps over its "
        "logged rates (`updates_per_s`, measured over everything but evaluation and "
        "checkpoints; the compile warm-up included), evaluation the sum of its eval rows' "
        "`eval_s`; its sessions (start, wall time, how each ended, the machine) come from its "
        "log (`offline.log` / `finetune.log`), each process's own wall time.",
        "",
        f"Also as CSV, with a column for every setting: [{csv_name}]({csv_name}).",
        "",
    ]


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


def _curves_section(cells, out_dir: Path, fig_dir: Path, figures: list[Path], level: str):
    md = [f"{level} Learning curves", ""]
    for dataset in sorted({c.dataset for c in cells}):
        path = plot_curves(cells, dataset, fig_dir / f"curves_{slug(dataset)}.png")
        figures.append(path)
        md += [f"![learning curves, {dataset}]({_rel(path, out_dir)})", ""]
    return md


def _overestimation_section(cells, out_dir: Path, fig_dir: Path, figures: list[Path], level: str):
    md = [f"{level} Overestimation: Q against the Monte-Carlo return", ""]
    runs = [r for c in cells for r in c.runs]
    datasets = sorted({c.dataset for c in cells})
    logged = [d for d in datasets if has_overestimation([r for r in runs if r.dataset == d])]
    for dataset in logged:
        path = plot_overestimation(cells, dataset, fig_dir / f"overestimation_{slug(dataset)}.png")
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


def _runtime_section(cells, out_dir: Path, level: str) -> list[str]:
    """How long each run took: training and evaluation from its metrics, its sessions from
    its log (:mod:`torchrl_dmg.report.runtime`)."""
    run_dirs = {r.run_dir for c in cells for r in c.runs}
    table = runtime_table(run_dirs, out_dir)
    if table.count("\n") < 2:  # no run logged a rate
        return []
    return [f"{level} Run time", "", table, ""]


def _ablation_section(cells, out_dir: Path, fig_dir: Path, figures: list[Path], level: str):
    """The λ/ν ablation plots and tables."""
    found = ablations(cells)
    md = [f"{level} Ablations (the paper's Figures 1–2)", ""]
    for ablation in found:
        name = f"ablation_{slug(ablation.dataset)}_{ablation.algo}_{slug(ablation.key)}.png"
        path = plot_ablation(ablation, fig_dir / name)
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
            f"{level}# {ablation.name}",
            "",
            f"![{ablation.name}]({_rel(path, out_dir)})",
            "",
            _ablation_table(ablation, out_dir),
            "",
            f"Score reference: {refs}. Final Q: the last logged `q_data_mean` where the run "
            "logged the diagnostic, else the critic's mean Q on training batches "
            "(`state_action_value`, the mean over stacked seeds); † diverged. MC return: the "
            "discounted Monte-Carlo return of the diagnostic's fixed sample of transitions; "
            "*Q above it from step*: each seed's first logged step at which its mean Q over "
            "that sample is above it (where the critic leaves the data's returns), *never* "
            "if it stays below (the dashed line on the Q panel).",
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

"""The paper's Table 2 layout from per-seed runs: datasets × algorithms, mean ± std over
seeds with a 95% bootstrap CI, and an IQM across datasets per algorithm.

A column is an algorithm plus, where runs of one dataset and algorithm differ in other
config keys (a hyperparameter sweep), those keys' values: ``dmg (λ=0.5)``. A sweep of λ or
ν (:data:`ABLATION_KEYS`) has a section of its own; in the table one of its settings
stands for it (:func:`table_cells`).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from torchrl_dmg.errors import RunRefused
from torchrl_dmg.report.published import PublishedColumn
from torchrl_dmg.report.runs import ONLINE_SUFFIX, SeedRun, varying_keys
from torchrl_dmg.report.stats import SeedStats, iqm, stratified_bootstrap_ci, summarize

__all__ = [
    "ABLATION_KEYS",
    "ALGO_ORDER",
    "UNFINISHED",
    "Cell",
    "ColumnIQM",
    "algos",
    "build_cells",
    "column_iqms",
    "markdown_table",
    "markdown_seed_table",
    "settings_label",
    "short_key",
    "sweep_lines",
    "table_cells",
    "csv_rows",
    "write_csv",
]

ALGO_ORDER = ("dmg", "iql", "td3bc", "bc")

# the swept hyperparameters of the paper's Figures 1 (λ) and 2 (ν)
ABLATION_KEYS = ("loss.mixture_coef", "loss.penalty_coef")

# the spec's symbols (or short names) for the hyperparameters a sweep usually varies
SHORT_KEYS = {
    "loss.mixture_coef": "λ",
    "loss.penalty_coef": "ν",
    "loss.expectile": "τ",
    "loss.temperature": "α",
    "loss.max_weight": "w_max",
    "loss.gamma": "γ",
    "optim.actor_cosine": "actor cosine",
    "optim.actor_cosine_horizon": "cosine horizon",
    "data.goal_terminal": "goal terminal",
    "network.value_init": "value init",
    "compile.matmul_precision": "matmuls",
    "iql.actor": "actor",
}


def short_key(key: str) -> str:
    """The spec's symbol for a config key (``loss.mixture_coef`` -> ``λ``), else the key."""
    return SHORT_KEYS.get(key, key)


#: settings that have no effect while another setting has the given value: labels leave
#: them out (a constant actor lr has no cosine horizon)
INERT_SETTINGS: dict[str, tuple[str, Any]] = {
    "optim.actor_cosine_horizon": ("optim.actor_cosine", False),
}

#: words for setting values whose printed form says little
VALUE_WORDS: dict[str, dict[Any, str]] = {
    "optim.actor_cosine_horizon": {None: "run length"},
    "network.value_init": {None: "default", "mc": "data's MC return"},
    # high / medium: bf16 on a CPU with bf16 units, TF32 on a GPU (training/compile.py)
    "compile.matmul_precision": {"highest": "fp32", "high": "bf16/TF32", "medium": "bf16/TF32"},
    "iql.actor": {"gaussian": "Gaussian", "tanh_normal": "TanhNormal"},
}


#: the variant entry that keeps an unfinished run (no ``summary.json`` yet) out of its
#: configuration's finished seeds: its value is the step of its last evaluation, so a run
#: in flight is never averaged with runs of the full length
UNFINISHED = "unfinished"


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_label(
    pairs: Sequence[tuple[str, Any]], others: Mapping[str, Any] | None = None
) -> str:
    """``λ=0.25, actor cosine=False``: each setting by its symbol (:func:`short_key`),
    leaving out those that have no effect given the others (:data:`INERT_SETTINGS`, read
    from ``pairs`` and then ``others``, e.g. the run's whole config)."""
    settings = {**(others or {}), **dict(pairs)}
    shown = []
    for key, value in pairs:
        if key == UNFINISHED:
            shown.append(f"unfinished, at {value / 1000:g}k steps")
            continue
        inert = INERT_SETTINGS.get(key)
        if inert is not None and inert[0] in settings and settings[inert[0]] == inert[1]:
            continue
        try:
            word = VALUE_WORDS.get(key, {}).get(value)
        except TypeError:  # an unhashable value (a list) has no word
            word = None
        shown.append(f"{short_key(key)}={word if word is not None else _fmt_value(value)}")
    return ", ".join(shown)


@dataclass
class Cell:
    """The seeds of one dataset and one column (algorithm + variant)."""

    dataset: str
    algo: str
    variant: tuple[tuple[str, Any], ...]
    runs: list[SeedRun]
    stats: SeedStats

    @property
    def column(self) -> str:
        if not self.variant:
            return self.algo
        inner = settings_label(self.variant, self.runs[0].config if self.runs else None)
        return f"{self.algo} ({inner})"

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.runs)

    @property
    def scores(self) -> np.ndarray:
        return np.array([r.score for r in self.runs], dtype=np.float64)


@dataclass
class ColumnIQM:
    """The IQM of a column's final scores pooled over its datasets (runs × datasets), with
    its stratified-bootstrap 95% CI."""

    column: str
    value: float
    ci_low: float
    ci_high: float
    datasets: int
    seeds: int


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, repr(value))


def _refuse_repeated_seeds(members: Sequence[SeedRun]) -> None:
    """One seed of one experiment counted twice (a copied or rerun run directory) would
    narrow its CI and tilt its mean: refuse, naming both directories."""
    for a, b in itertools.pairwise(members):  # sorted by seed
        if a.seed == b.seed:
            raise RunRefused(
                f"seed {a.seed} of {a.algo} on {a.dataset} is in two runs with the same "
                f"settings, {a.run_dir} and {b.run_dir} (a copy or a rerun?): pass runs= "
                "without one of them, or studies=true if they are in separate studies "
                "(folders under runs=)"
            )


def _same_run(a: SeedRun, b: SeedRun) -> bool:
    """The same seed with the same learning curve and final Q: one run's files in two places
    (a study that shows another's run beside its own), or a bit-identical rerun."""
    return (
        a.seed == b.seed
        and np.array_equal(a.curve_steps, b.curve_steps)
        and np.array_equal(a.curve_scores, b.curve_scores, equal_nan=True)
        and (a.final_q == b.final_q or (math.isnan(a.final_q) and math.isnan(b.final_q)))
    )


def _drop_copies(members: list[SeedRun]) -> list[SeedRun]:
    """``members`` (sorted by seed) without the copies of a run already in it."""
    kept: list[SeedRun] = []
    for run in members:
        if not any(_same_run(k, run) for k in kept):
            kept.append(run)
    return kept


def build_cells(
    runs: Iterable[SeedRun], *, seed: int = 0, refuse_repeats: bool = True
) -> list[Cell]:
    """Group seeds by dataset, algorithm and the config keys that vary among that
    dataset's runs of that algorithm; one :class:`Cell` each, sorted by dataset, then
    algorithm (:data:`ALGO_ORDER` first), then variant values. An unfinished run is a
    variant of its own, by the step of its last evaluation (:data:`UNFINISHED`): a seed
    in flight is shown beside its configuration's finished seeds, never pooled with them.

    Raises:
        RunRefused: one seed of one cell comes from two run directories (unless
            ``refuse_repeats`` is false: reruns in separate studies, pooled for ablations;
            then a run copied into two studies counts once).
    """
    by_group: dict[tuple[str, str], list[SeedRun]] = defaultdict(list)
    for run in runs:
        by_group[(run.dataset, run.algo)].append(run)
    cells = []
    for (dataset, algo), group in by_group.items():
        keys = varying_keys(group)
        by_variant: dict[tuple, list[SeedRun]] = defaultdict(list)
        for run in group:
            variant = tuple((k, run.value(k)) for k in keys)
            if not run.finished:
                variant += ((UNFINISHED, run.steps),)
            by_variant[variant].append(run)
        for variant, members in by_variant.items():
            members.sort(key=lambda r: (r.seed, str(r.run_dir)))
            if refuse_repeats:
                _refuse_repeated_seeds(members)
            else:  # pooled over studies: a run shown in two studies counts once
                members = _drop_copies(members)
            scores = [r.score for r in members]
            cells.append(Cell(dataset, algo, variant, members, summarize(scores, seed=seed)))

    def order(cell: Cell) -> tuple:
        rank = ALGO_ORDER.index(cell.algo) if cell.algo in ALGO_ORDER else len(ALGO_ORDER)
        return (cell.dataset, rank, cell.algo, [_sort_key(v) for _, v in cell.variant])

    return sorted(cells, key=order)


def _algo_rank(algo: str) -> tuple[int, str]:
    return (ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER), algo)


def columns(cells: Sequence[Cell]) -> list[str]:
    """The columns in the order of :func:`build_cells`."""
    seen: dict[str, None] = {}
    ordered = sorted(
        cells, key=lambda c: (*_algo_rank(c.algo), [_sort_key(v) for _, v in c.variant])
    )
    for cell in ordered:
        seen.setdefault(cell.column)
    return list(seen)


def algos(cells: Sequence[Cell]) -> list[str]:
    """The algorithms of ``cells`` in the order of their columns."""
    return sorted({c.algo for c in cells}, key=_algo_rank)


def sweep_lines(group: Sequence[Cell], key: str) -> dict[tuple, list[Cell]]:
    """The lines of a sweep of ``key`` among ``group`` (cells of one dataset and
    algorithm): cells that share every other variant value, keyed by those values; only
    lines on which ``key`` takes two or more values."""
    lines: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in group:
        if key in dict(cell.variant):
            lines[tuple((k, v) for k, v in cell.variant if k != key)].append(cell)
    return {
        rest: line for rest, line in lines.items() if len({dict(c.variant)[key] for c in line}) >= 2
    }


def table_cells(cells: Sequence[Cell]) -> tuple[list[Cell], list[Cell], list[tuple[Cell, Cell]]]:
    """The cells of the Table 2 layout, those it leaves to the ablation section, and the
    stand-ins: ``(table cell, the setting it stands for)``.

    Where runs of one dataset and algorithm sweep λ or ν (:data:`ABLATION_KEYS`,
    :func:`sweep_lines`), one setting of the sweep stands for it: the one on the most sweep
    lines (where a λ sweep and a ν sweep cross), then the one with the most seeds. Its
    column drops the swept keys (``dmg``, not ``dmg (λ=0.25, ν=0.1)``), so it lines up
    with the algorithm's runs on other datasets. Where no single setting stands out (a tie),
    every setting keeps its own column. Settings that differ in other keys are kept apart.
    """
    groups: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.dataset, cell.algo)].append(cell)
    index = {id(c): i for i, c in enumerate(cells)}  # keep build_cells' order
    kept: list[tuple[int, Cell]] = []
    folded: list[Cell] = []
    stand_ins: list[tuple[Cell, Cell]] = []
    for group in groups.values():
        swept = [k for k in ABLATION_KEYS if sweep_lines(group, k)]
        parts: dict[tuple, list[Cell]] = defaultdict(list)
        for cell in group:
            parts[tuple((k, v) for k, v in cell.variant if k not in swept)].append(cell)
        for rest, part in parts.items():
            # within a part the other keys agree: a line of the part is a line of the sweep
            on_lines = [
                {id(c) for line in sweep_lines(part, k).values() for c in line} for k in swept
            ]
            ranks = {id(c): (sum(id(c) in on for on in on_lines), c.stats.n) for c in part}
            ranked = sorted(part, key=lambda c: ranks[id(c)], reverse=True)
            if len(part) < 2 or ranks[id(ranked[0])] == ranks[id(ranked[1])]:
                kept += [(index[id(c)], c) for c in part]
                continue
            stand_in = replace(ranked[0], variant=rest)
            kept.append((index[id(ranked[0])], stand_in))
            stand_ins.append((stand_in, ranked[0]))
            folded += ranked[1:]
    return [c for _, c in sorted(kept, key=lambda pair: pair[0])], folded, stand_ins


def column_iqms(cells: Sequence[Cell], *, seed: int = 0) -> list[ColumnIQM]:
    """Per column: IQM of the finite final scores of all its seeds on all its datasets,
    with a stratified bootstrap (seeds resampled within each dataset)."""
    out = []
    for column in columns(cells):
        groups = [c.scores[np.isfinite(c.scores)] for c in cells if c.column == column]
        groups = [g for g in groups if g.size]
        if not groups:
            continue
        low, high = stratified_bootstrap_ci(groups, iqm, seed=seed)
        value = iqm(np.concatenate(groups))
        out.append(
            ColumnIQM(column, float(value), low, high, len(groups), sum(g.size for g in groups))
        )
    return out


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _link(text: str, run: SeedRun, out_dir: Path) -> str:
    return f"[{text}]({Path(os.path.relpath(run.config_path, out_dir)).as_posix()})"


def _start_score(run: SeedRun) -> float | None:
    """A fine-tuning run's score before its online steps (its evaluation at step 0), else
    ``None``."""
    if not run.algo.endswith(ONLINE_SUFFIX) or not len(run.curve_steps):
        return None
    return float(run.curve_scores[0]) if run.curve_steps[0] == 0 else None


def _cell_markdown(cell: Cell, out_dir: Path) -> str:
    s = cell.stats
    # one seed has no spread: "± 0.0" would read as a measured one
    text = f"{_num(s.mean)} ± {_num(s.std)}" if s.n >= 2 else f"{_num(s.mean)} (1 seed)"
    starts = [_start_score(r) for r in cell.runs]
    if cell.runs and all(x is not None for x in starts):  # fine-tuning: before → after
        text = f"{_num(float(np.mean(starts)))} → {text}"
    if s.n >= 2:
        text += f"<br>[{_num(s.ci_low)}, {_num(s.ci_high)}]"
    seeds = " ".join(
        _link(
            (f"{_num(x)} → " if x is not None else "")
            + f"{_num(r.score)}{'†' if r.diverged else ''}",
            r,
            out_dir,
        )
        for r, x in zip(cell.runs, starts, strict=True)
    )
    text += f"<br><sub>{seeds}</sub>"
    if cell.diverged:
        text += f"<br><sub>{cell.diverged}/{len(cell.runs)} diverged</sub>"
    return text


def _references(cells: Iterable[Cell]) -> str:
    refs = sorted({r.score_reference for c in cells for r in c.runs})
    return "; ".join(refs)


def markdown_table(
    cells: Sequence[Cell],
    iqms: Sequence[ColumnIQM],
    out_dir: Path,
    published: Sequence[PublishedColumn] = (),
) -> str:
    """Table 2: one row per dataset, one column per algorithm (+ variant), then the
    ``published`` columns (the paper's numbers in italics, blank where it has none), the
    score reference of each row in the last column, then the IQM row (measured columns
    only)."""
    cols = columns(cells)
    by_key = {(c.dataset, c.column): c for c in cells}
    datasets = sorted({c.dataset for c in cells})
    header = cols + [p.column for p in published]
    lines = [
        "| dataset | " + " | ".join(header) + " | score reference |",
        "|---|" + "---|" * len(header) + "---|",
    ]
    for dataset in datasets:
        row = [
            _cell_markdown(by_key[(dataset, col)], out_dir) if (dataset, col) in by_key else "—"
            for col in cols
        ]
        row += [f"*{p.scores[dataset].text()}*" if dataset in p.scores else "" for p in published]
        refs = _references(c for c in cells if c.dataset == dataset)
        lines.append(f"| {dataset} | " + " | ".join(row) + f" | {refs} |")
    by_col = {q.column: q for q in iqms}
    iqm_row = []
    for col in cols:
        q = by_col.get(col)
        if q is None:
            iqm_row.append("—")
            continue
        text = f"**{_num(q.value)}**"
        if math.isfinite(q.ci_low):
            text += f"<br>[{_num(q.ci_low)}, {_num(q.ci_high)}]"
        iqm_row.append(
            text + f"<br><sub>{_count(q.seeds, 'seed')}, {_count(q.datasets, 'dataset')}</sub>"
        )
    iqm_row += [""] * len(published)  # the paper's numbers are in no aggregate of ours
    lines.append("| **IQM** (all datasets) | " + " | ".join(iqm_row) + " | |")
    return "\n".join(lines)


def markdown_seed_table(cells: Sequence[Cell], out_dir: Path) -> str:
    """Every seed: its final score and final Q, each linked to the run's config."""
    lines = [
        "| dataset | column | seed | steps | final score | final Q | diverged | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for r in cell.runs:
            q = "n/a" if r.final_q_key is None else _link(f"{r.final_q:.4g}", r, out_dir)
            lines.append(
                f"| {cell.dataset} | {cell.column} | {r.seed} | {r.steps} | "
                f"{_link(_num(r.score), r, out_dir)} | {q} | {'yes' if r.diverged else 'no'} | "
                f"{_link(r.run_dir.name, r, out_dir)} |"
            )
    return "\n".join(lines)


CSV_FIELDS = (
    "study",
    "kind",  # measured (our runs) or published (the paper's, :mod:`.published`)
    "dataset",
    "column",
    "algo",
    "variant",
    "n_seeds",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "diverged",
    "seeds",
    "scores",
    "steps",
    "score_reference",
    "configs",
)


def csv_rows(
    cells: Sequence[Cell], iqms: Sequence[ColumnIQM], out_dir: Path, *, study: str = ""
) -> list[dict[str, Any]]:
    """The ``results.csv`` rows of one table: one per cell, then one ``IQM`` row per column
    (``study``: the study the table belongs to, empty for a report of one table). Config
    paths are relative to ``out_dir``; lists are ``;``-separated."""
    rows = []
    for c in cells:
        rows.append(
            {
                "study": study,
                "kind": "measured",
                "dataset": c.dataset,
                "column": c.column,
                "algo": c.algo,
                "variant": ";".join(f"{k}={_fmt_value(v)}" for k, v in c.variant),
                "n_seeds": c.stats.n,
                "mean": c.stats.mean,
                "std": c.stats.std,
                "ci95_low": c.stats.ci_low,
                "ci95_high": c.stats.ci_high,
                "diverged": c.diverged,
                "seeds": ";".join(str(r.seed) for r in c.runs),
                "scores": ";".join(repr(r.score) for r in c.runs),
                "steps": ";".join(str(r.steps) for r in c.runs),
                "score_reference": _references([c]),
                "configs": ";".join(
                    Path(os.path.relpath(r.config_path, out_dir)).as_posix() for r in c.runs
                ),
            }
        )
    for q in iqms:
        rows.append(
            {
                "study": study,
                "kind": "measured",
                "dataset": "IQM",
                "column": q.column,
                "n_seeds": q.seeds,
                "mean": q.value,
                "ci95_low": q.ci_low,
                "ci95_high": q.ci_high,
                "variant": f"datasets={q.datasets}",
            }
        )
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Rows of :func:`csv_rows` (of one table or several) as ``results.csv``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path

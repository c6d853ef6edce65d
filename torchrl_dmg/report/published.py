"""The paper's published scores beside a study's table, as context.

``published.yaml`` (beside this module, shipped with the package) holds the means over 5
seeds of Mao et al., NeurIPS 2024 (arXiv 2411.07934): Table 2 (offline; IQL, TD3+BC and DMG
on 15 D4RL -v2 datasets) and Table 4 (AntMaze fine-tuning, before → after 1M online steps;
DMG per dataset, IQL and DMG totals). The paper measured them on D4RL's own datasets; the
runs this project reports were trained on the datasets their ids name (``local/*``: data
this project made itself), so a published number beside a measured one is context, not a
comparison of equals. Published numbers are never resampled, pooled into an IQM or ranked:
they are separate columns (:class:`PublishedColumn`) that only :mod:`.tables` prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torchrl_dmg.report.runs import ONLINE_SUFFIX

__all__ = [
    "PAPER_LABEL",
    "PUBLISHED_PATH",
    "Published",
    "PublishedColumn",
    "PublishedScore",
    "load_published",
    "paper_dataset",
    "published_columns",
    "published_csv_rows",
    "published_note",
]

PUBLISHED_PATH = Path(__file__).with_name("published.yaml")

#: what a published column's name adds to the algorithm: whose numbers, on whose data
PAPER_LABEL = "paper, D4RL data"

# A dataset id -> the D4RL dataset the paper reports for the same task. Locomotion: local or
# Minari ``mujoco/<env>/<quality>-v*``. AntMaze: the six D4RL mazes, local (either goal rule:
# ``-onegoal`` is the same maze and task, with D4RL's goal rule) or Minari's ``D4RL/antmaze``.
_PAPER_DATASETS = (
    (
        re.compile(r"^(?:local/)?mujoco/(?P<env>[^/]+)/(?P<quality>[a-z-]+)-v\d+$"),
        "{env}-{quality}",
    ),
    (
        re.compile(
            r"^(?:local|D4RL)/antmaze/(?P<maze>umaze|umaze-diverse|medium-play|medium-diverse|"
            r"large-play|large-diverse)(?:-onegoal)?-v\d+$"
        ),
        "antmaze-{maze}",
    ),
)


def paper_dataset(dataset_id: str) -> str | None:
    """The D4RL name (``antmaze-medium-play``, ``hopper-medium``) of the task of
    ``dataset_id`` (``local/antmaze/medium-play-v2``, ``mujoco/hopper/medium-v0``), or
    ``None`` for a dataset of no D4RL task (PointMaze, the random-walk AntMaze data)."""
    for pattern, name in _PAPER_DATASETS:
        match = pattern.match(dataset_id)
        if match:
            return name.format(**match.groupdict())
    return None


@dataclass(frozen=True)
class PublishedScore:
    """One published number.

    Attributes:
        dataset: the paper's D4RL dataset (``antmaze-medium-play``).
        algo: the algorithm as runs name it (``dmg``; ``dmg+online`` for fine-tuning).
        score: the mean normalised score over the paper's 5 seeds (Table 4: after the
            online steps).
        before: Table 4 only: the score before the online steps.
        table: where it was published (``Table 2``).
    """

    dataset: str
    algo: str
    score: float
    before: float | None = None
    table: str = ""

    def text(self) -> str:
        """``80.2``, or ``80.2 → 96.8`` for a fine-tuning score."""
        if self.before is None:
            return f"{self.score:.1f}"
        return f"{self.before:.1f} → {self.score:.1f}"


@dataclass(frozen=True)
class Published:
    """The published numbers of ``published.yaml``.

    Attributes:
        source: the paper, in words (authors, title, venue, arXiv id).
        data: what the numbers were measured on and how they were summarised.
        scores: ``(paper dataset, algo) -> PublishedScore``.
        totals: fine-tuning algo (``iql+online``) -> its Table 4 total over the paper's
            six AntMaze datasets, before and after the online steps.
    """

    source: str
    data: str
    scores: dict[tuple[str, str], PublishedScore]
    totals: dict[str, tuple[float, float]]

    def score(self, dataset_id: str, algo: str) -> PublishedScore | None:
        """The published score of ``algo`` on the task of ``dataset_id``, if there is one."""
        name = paper_dataset(dataset_id)
        return None if name is None else self.scores.get((name, algo))


def load_published(path: str | os.PathLike = PUBLISHED_PATH) -> Published:
    """The paper's published scores (``published.yaml``: Table 2 and Table 4 of Mao et
    al., NeurIPS 2024, arXiv 2411.07934), with the source they came from.

    >>> paper = load_published()
    >>> paper.score("local/antmaze/medium-play-v2", "dmg").score
    80.2
    >>> paper.score("local/antmaze/medium-play-v2", "dmg+online").text()
    '80.2 → 96.8'
    >>> paper.score("local/pointmaze/medium-v0", "dmg") is None
    True
    """
    raw: dict[str, Any] = yaml.safe_load(Path(path).read_text())
    offline, finetune = raw["offline"], raw["finetune"]
    scores: dict[tuple[str, str], PublishedScore] = {}
    for dataset, by_algo in offline["scores"].items():
        for algo, value in by_algo.items():
            scores[(dataset, algo)] = PublishedScore(
                dataset, algo, float(value), table=offline["table"]
            )
    for dataset, by_algo in finetune["scores"].items():
        for algo, (before, after) in by_algo.items():
            online = algo + ONLINE_SUFFIX
            scores[(dataset, online)] = PublishedScore(
                dataset, online, float(after), float(before), table=finetune["table"]
            )
    totals = {
        algo + ONLINE_SUFFIX: (float(before), float(after))
        for algo, (before, after) in finetune["totals"].items()
    }
    return Published(" ".join(raw["source"].split()), raw["data"], scores, totals)


@dataclass(frozen=True)
class PublishedColumn:
    """The published scores of one algorithm beside a table: ``column`` (``dmg (paper,
    D4RL data)``), the ``algo`` it stands beside, and ``scores`` by the table's dataset ids
    (a dataset the paper has no number for is absent)."""

    column: str
    algo: str
    scores: dict[str, PublishedScore]


def published_columns(
    algos: Sequence[str], datasets: Sequence[str], published: Published
) -> list[PublishedColumn]:
    """One column per algorithm of ``algos`` (in their order) that has a published score on
    at least one of ``datasets``: the table's measured algorithms and dataset ids."""
    out = []
    for algo in dict.fromkeys(algos):
        found = {d: s for d in datasets if (s := published.score(d, algo)) is not None}
        if found:
            out.append(PublishedColumn(f"{algo} ({PAPER_LABEL})", algo, found))
    return out


def published_csv_rows(
    columns: Sequence[PublishedColumn], published: Published, *, study: str = ""
) -> list[dict[str, Any]]:
    """The ``results.csv`` rows of published columns: ``kind`` ``published``, the mean in
    ``mean``, the paper's table, dataset and data in ``score_reference``; no std, CI or
    seeds of ours."""
    rows = []
    for col in columns:
        for dataset, s in col.scores.items():
            before = "" if s.before is None else f" (before the online steps: {s.before:g})"
            rows.append(
                {
                    "study": study,
                    "kind": "published",
                    "dataset": dataset,
                    "column": col.column,
                    "algo": col.algo,
                    "n_seeds": 5,
                    "mean": s.score,
                    "score_reference": (
                        f"published: {published.source}, {s.table}, D4RL {s.dataset}{before}; "
                        f"{published.data}"
                    ),
                }
            )
    return rows


def published_note(
    algos: Sequence[str], columns: Sequence[PublishedColumn], published: Published
) -> str | None:
    """The footnote under a table with published columns (or fine-tuning runs of an
    algorithm with a published total): whose numbers, on which data, and that they are
    context, never part of the statistics. ``None`` when there is nothing published to show
    for the table's ``algos``."""
    totals = [
        f"{algo} {published.totals[algo][0]:g} → {published.totals[algo][1]:g}"
        for algo in dict.fromkeys(algos)
        if algo in published.totals
    ]
    if not columns and not totals:
        return None
    tables = sorted({s.table for c in columns for s in c.scores.values()})
    note = (
        f"*({PAPER_LABEL})*: scores published by {published.source}"
        + (f", {' and '.join(tables)}" if tables else "")
        + f" ({published.data}). They were measured on D4RL's datasets, not on these runs' "
        "(`local/*`: data this project made itself), so they are context, not a comparison "
        "of equals, and enter no CI, IQM or ranking. Blank: the paper has no number for "
        "that dataset."
    )
    if any(c.algo.endswith(ONLINE_SUFFIX) for c in columns) or totals:
        note += " Fine-tuning: before → after the paper's 1M online steps"
        note += (
            f"; Table 4's totals over its six AntMaze datasets: {', '.join(totals)}."
            if totals
            else "."
        )
    return note

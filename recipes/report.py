"""The paper's tables and figures from recipe runs or a Hydra multirun sweep.

    python recipes/report.py runs=outputs/multirun/<date>/<time> out=docs/results
    python recipes/report.py 'runs=[outputs/offline/<run a>,outputs/offline/<run b>]' out=report
    python recipes/report.py runs=results out=docs intro=results/README.md studies=true  # docs/results.md

Finds every run directory (``config.yaml`` + ``metrics.csv``) under ``runs`` and writes
``results.md`` (Table 2 layout: datasets × algorithms, mean ± std over seeds, 95% bootstrap
CIs, IQM across datasets; every number linked to its run's config), ``results.csv``, and
``figures/``: learning curves per dataset, the overestimation diagnostic where the runs
logged it, and the λ / ν ablations of the paper's Figures 1–2 where the runs sweep them.
``studies=true`` writes one such section per folder under ``runs`` (a study), so that runs
are compared only within their study. ``published=true`` (the default) puts the paper's
published scores (Table 2; Table 4 beside fine-tuning runs) in columns of their own beside
each table, as context: they were measured on D4RL's data, not the runs', and enter no CI
or IQM. The machinery is :mod:`torchrl_dmg.report`.
"""

from __future__ import annotations

import hydra
from cli import guarded
from omegaconf import DictConfig, ListConfig

from torchrl_dmg.errors import RunRefused
from torchrl_dmg.report.results import print_summary, read_intro, write_report


@hydra.main(config_path="config", config_name="report", version_base="1.3")
@guarded("report")  # the schema check first (an intro that is not a file); one-line failures
def main(cfg: DictConfig) -> None:
    runs = list(cfg.runs) if isinstance(cfg.runs, ListConfig) else [cfg.runs]
    intro = read_intro(cfg.intro, cfg.out) if cfg.intro else None
    try:
        report = write_report(
            runs,
            cfg.out,
            title=cfg.title,
            seed=cfg.bootstrap_seed,
            intro=intro,
            studies=cfg.studies,
            published=cfg.published,
        )
    except FileNotFoundError as err:  # no run under runs=
        raise RunRefused(str(err)) from err
    print_summary(report)
    print(
        f"[report] {len(report.runs)} seeds -> {report.markdown}, {report.csv}, "
        f"{len(report.figures)} figures"
    )


if __name__ == "__main__":
    main()

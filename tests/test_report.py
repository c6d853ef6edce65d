"""recipes/report.py and torchrl_dmg.report on fabricated run directories (no training)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from torchrl_dmg.errors import RunRefused
from torchrl_dmg.report.figures import ablations, curve_band, line_labels, shared_mc_return
from torchrl_dmg.report.published import PUBLISHED_PATH, load_published, paper_dataset
from torchrl_dmg.report.results import read_intro, study_groups, write_report
from torchrl_dmg.report.runs import find_run_dirs, load_runs
from torchrl_dmg.report.stats import bootstrap_ci, iqm, stratified_bootstrap_ci, wilson_interval
from torchrl_dmg.report.tables import build_cells

REPO = Path(__file__).resolve().parents[1]
D4RL_TEXT = "d4rl: D4RL hopper (0 = -20.2723, 100 = 3234.3)"


def make_run(
    root: Path,
    name: str,
    *,
    dataset: str = "mujoco/hopper/medium-v0",
    algo: str | None = "dmg",
    seed: int = 0,
    seeds: int = 1,
    scores: list[float] | float = 50.0,
    final_q: float = 10.0,
    out_of_bounds: bool = False,
    mixture_coef: float = 0.25,
    penalty_coef: float = 0.1,
    diagnostic: tuple[float, float] | None = None,
    finished: bool = True,
    extra: dict | None = None,
    start_score: float | None = None,
) -> Path:
    """A run directory as recipes/offline.py writes it: eval rows at steps 100 and 200
    (the final score at 200, half of it at 100), train rows with the critic's Q;
    ``start_score``: an eval row at step 0 too (a fine-tuning run's score before its online
    steps)."""
    run = root / name
    run.mkdir(parents=True)
    scores = [scores] if isinstance(scores, int | float) else scores
    config = {
        "dataset": dataset,
        "seed": seed,
        "seeds": seeds,
        "steps": 200,
        "device": "cpu",
        "loss": {"mixture_coef": mixture_coef, "penalty_coef": penalty_coef},
        "data": {"score_reference": "auto"},
        **(extra or {}),
    }
    if algo is not None:
        config["algo"] = algo
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    seed_ids = [seed + i for i in range(seeds)]
    rows = []
    if start_score is not None:
        rows.append({"step": 0, "kind": "eval", "normalized_score": start_score})
        rows[-1].update({f"normalized_score/s{s}": start_score for s in seed_ids})
    for step, frac in ((100, 0.5), (200, 1.0)):
        train = {"step": step, "kind": "train", "state_action_value": final_q * frac}
        train["q_out_of_bounds"] = float(out_of_bounds and step == 200)
        if diagnostic is not None:
            train["q_data_mean"], train["mc_return_mean"] = diagnostic[0] * frac, diagnostic[1]
        rows.append(train)
        evals = {"step": step, "kind": "eval", "normalized_score": float(np.mean(scores)) * frac}
        evals.update(
            {f"normalized_score/s{s}": v * frac for s, v in zip(seed_ids, scores, strict=True)}
        )
        rows.append(evals)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if finished:
        summary = {"score_reference": "d4rl", "score_reference_text": D4RL_TEXT}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    """hopper: dmg seeds 10/20/30 (one without an algo key), iql 40/60; walker2d: dmg
    50/70 as one run of two stacked seeds."""
    root = tmp_path / "sweep"
    make_run(root, "0", seed=0, scores=10.0)
    make_run(root, "1", seed=1, scores=20.0, algo=None)
    make_run(root / "nested", "2", seed=2, scores=30.0)
    make_run(root, "3", algo="iql", seed=0, scores=40.0)
    make_run(root, "4", algo="iql", seed=1, scores=60.0)
    make_run(root, "5", dataset="mujoco/walker2d/medium-v0", seed=0, seeds=2, scores=[50.0, 70.0])
    (root / "0" / ".hydra").mkdir()  # Hydra's folder is never a run
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell(rows, dataset: str, column: str) -> dict[str, str]:
    (row,) = [r for r in rows if r["dataset"] == dataset and r["column"] == column]
    return row


# ---------------------------------------------------------------- statistics


def test_iqm_cuts_a_quarter_of_the_scores_from_each_end():
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 5.0, 6.0]) == pytest.approx(3.5)


def test_iqm_of_fewer_than_four_scores_is_their_mean():
    assert iqm([1.0, 2.0, 6.0]) == pytest.approx(3.0)


def test_bootstrap_ci_of_three_seeds_spans_their_extremes():
    # each extreme mean (all three resamples the same seed) has probability 1/27 > 2.5%
    assert bootstrap_ci([10.0, 20.0, 30.0]) == (10.0, 30.0)


def test_bootstrap_ci_of_many_seeds_matches_the_normal_approximation():
    scores = np.random.default_rng(0).normal(50, 10, 400)
    half_width = 1.96 * scores.std() / np.sqrt(scores.size)
    low, high = bootstrap_ci(scores)
    assert low == pytest.approx(scores.mean() - half_width, abs=0.1)
    assert high == pytest.approx(scores.mean() + half_width, abs=0.1)


def test_one_seed_has_no_bootstrap_ci():
    assert all(math.isnan(x) for x in bootstrap_ci([42.0]))


def test_the_stratified_bootstrap_resamples_within_each_dataset():
    # a dataset of identical scores contributes no spread: only the other one varies
    low, high = stratified_bootstrap_ci([[0.0, 0.0], [10.0, 10.0]], np.mean)
    assert (low, high) == (5.0, 5.0)


# ---------------------------------------------------------------- run directories


def test_runs_are_found_recursively_and_hydra_folders_are_skipped(sweep):
    names = [p.name for p in find_run_dirs([sweep])]
    assert sorted(names) == ["0", "1", "2", "3", "4", "5"]


def test_a_run_without_an_algo_key_is_dmg(sweep):
    (run,) = [r for r in load_runs([sweep / "1"])]
    assert run.algo == "dmg"


def test_a_run_of_stacked_seeds_gives_one_record_per_seed(sweep):
    runs = load_runs([sweep / "5"])
    assert [(r.seed, r.score) for r in runs] == [(0, 50.0), (1, 70.0)]


def test_the_final_score_is_the_last_eval_row(sweep):
    (run,) = load_runs([sweep / "3"])
    assert (run.steps, run.score) == (200, 40.0)


def test_a_flagged_q_out_of_bounds_marks_the_seed_diverged(tmp_path):
    make_run(tmp_path, "r", out_of_bounds=True)
    assert load_runs([tmp_path])[0].diverged


def test_a_non_finite_final_q_marks_the_seed_diverged(tmp_path):
    make_run(tmp_path, "r", final_q=float("nan"))
    assert load_runs([tmp_path])[0].diverged


def test_a_finite_in_bounds_q_is_not_diverged(tmp_path):
    make_run(tmp_path, "r", final_q=5.0)
    assert not load_runs([tmp_path])[0].diverged


# ---------------------------------------------------------------- the table


def test_the_table_has_one_row_per_dataset_and_one_column_per_algorithm(sweep, tmp_path):
    report = write_report([sweep], tmp_path / "out")
    text = report.markdown.read_text()
    assert "| dataset | dmg | iql | score reference |" in text
    table = text.split("## Final normalised score")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| mujoco/")]
    assert rows == ["| mujoco/hopper/medium-v0", "| mujoco/walker2d/medium-v0"]


def test_cells_hold_the_mean_and_std_over_seeds(sweep, tmp_path):
    rows = read_csv(write_report([sweep], tmp_path / "out").csv)
    hopper_dmg = cell(rows, "mujoco/hopper/medium-v0", "dmg")
    assert float(hopper_dmg["mean"]) == pytest.approx(20.0)
    assert float(hopper_dmg["std"]) == pytest.approx(np.std([10.0, 20.0, 30.0]))
    assert hopper_dmg["n_seeds"] == "3"
    assert float(cell(rows, "mujoco/walker2d/medium-v0", "dmg")["mean"]) == pytest.approx(60.0)


def test_cells_hold_the_95_percent_bootstrap_ci_of_the_mean(sweep, tmp_path):
    rows = read_csv(write_report([sweep], tmp_path / "out").csv)
    hopper_dmg = cell(rows, "mujoco/hopper/medium-v0", "dmg")
    assert (float(hopper_dmg["ci95_low"]), float(hopper_dmg["ci95_high"])) == (10.0, 30.0)


def test_the_markdown_cell_shows_mean_std_ci_and_linked_seed_scores(sweep, tmp_path):
    text = write_report([sweep], tmp_path / "out").markdown.read_text()
    assert "20.0 ± 8.2<br>[10.0, 30.0]<br><sub>[10.0](" in text


def test_the_iqm_row_pools_every_seed_of_a_column_across_datasets(sweep, tmp_path):
    rows = read_csv(write_report([sweep], tmp_path / "out").csv)
    dmg = cell(rows, "IQM", "dmg")
    # dmg's five seeds 10, 20, 30, 50, 70: one cut from each end -> mean(20, 30, 50)
    assert float(dmg["mean"]) == pytest.approx(iqm([10, 20, 30, 50, 70]))
    assert float(dmg["mean"]) == pytest.approx(100.0 / 3.0)
    assert dmg["variant"] == "datasets=2"
    assert cell(rows, "IQM", "iql")["variant"] == "datasets=1"


def test_every_linked_number_points_to_an_existing_resolved_config(sweep, tmp_path):
    out = tmp_path / "out"
    text = write_report([sweep], out).markdown.read_text()
    links = re.findall(r"\[[^\]]*\]\(([^)#]+\.yaml)\)", text)
    assert len(links) >= 7  # every seed at least once
    assert all((out / link).resolve().is_file() for link in links)
    assert all(Path(link).name == "config.yaml" for link in links)


def test_the_table_names_the_score_reference_of_each_dataset(sweep, tmp_path):
    text = write_report([sweep], tmp_path / "out").markdown.read_text()
    hopper_row = next(line for line in text.splitlines() if line.startswith("| mujoco/hopper"))
    assert hopper_row.endswith(f"| {D4RL_TEXT} |")


def test_an_unfinished_run_says_its_reference_was_not_resolved(tmp_path):
    make_run(tmp_path / "runs", "r", finished=False)
    (run,) = load_runs([tmp_path / "runs"])
    assert run.score_reference == "data.score_reference=auto (run unfinished)"


def test_a_run_in_flight_is_shown_beside_its_finished_seeds_never_pooled_with_them(tmp_path):
    """A seed at 100k of a 1M run averaged with a finished seed would read as a 1M score."""
    make_run(tmp_path / "runs", "done", seed=0, scores=80.0)
    make_run(tmp_path / "runs", "flight", seed=1, scores=20.0, finished=False)
    cells = build_cells(load_runs([tmp_path / "runs"]))
    assert [(c.column, c.stats.n, c.stats.mean) for c in cells] == [
        ("dmg", 1, 80.0),
        ("dmg (unfinished, at 0.2k steps)", 1, 20.0),
    ]
    rows = read_csv(write_report([tmp_path / "runs"], tmp_path / "out").csv)
    assert {r["column"]: r["mean"] for r in rows if r["dataset"] != "IQM"} == {
        "dmg": "80.0",
        "dmg (unfinished, at 0.2k steps)": "20.0",
    }


def test_a_swept_hyperparameter_makes_a_column_per_value(tmp_path):
    for i, lam in enumerate((0.0, 0.5)):
        make_run(tmp_path / "runs", f"r{i}", mixture_coef=lam)
    rows = read_csv(write_report([tmp_path / "runs"], tmp_path / "out").csv)
    assert [r["column"] for r in rows if r["dataset"] != "IQM"] == ["dmg (λ=0)", "dmg (λ=0.5)"]


def table_header(markdown: str) -> list[str]:
    """The column names of the Table 2 layout in a results.md."""
    line = next(line for line in markdown.splitlines() if line.startswith("| dataset |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_lambda_and_nu_sweep_are_stood_for_by_their_crossing_in_the_table(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "default", seed=0, seeds=3, scores=[70.0, 80.0, 90.0])  # λ 0.25, ν 0.1
    for lam in (0.0, 0.5):
        make_run(runs, f"l{lam}", seed=3, seeds=2, mixture_coef=lam, scores=[5.0, 5.0])
    for nu in (0.01, 1.0):
        make_run(runs, f"n{nu}", seed=3, seeds=2, penalty_coef=nu, scores=[5.0, 5.0])
    make_run(runs, "iql", algo="iql", seeds=3, scores=[60.0, 60.0, 60.0])
    make_run(runs, "other", dataset="mujoco/walker2d/medium-v0", seeds=2, scores=[10.0, 30.0])
    report = write_report([runs], tmp_path / "out")
    text = report.markdown.read_text()
    assert table_header(text) == ["dataset", "dmg", "iql", "score reference"]
    hopper = next(line for line in text.splitlines() if line.startswith("| mujoco/hopper"))
    assert hopper.split(" | ")[1].startswith("80.0 ± 8.2")  # the crossing's 3 seeds only
    iqm_row = next(line for line in text.splitlines() if line.startswith("| **IQM**"))
    assert "5 seeds, 2 datasets" in iqm_row.split(" | ")[1]
    assert "4 more settings are in the ablation section" in text
    assert "`dmg` on mujoco/hopper/medium-v0 at λ=0.25, ν=0.1" in text
    columns = {r["column"] for r in read_csv(report.csv) if r["dataset"] != "IQM"}
    assert {"dmg (λ=0, ν=0.1)", "dmg (λ=0.25, ν=0.01)", "dmg (λ=0.25, ν=0.1)"} <= columns


def test_studies_are_the_folders_directly_under_the_runs_path(tmp_path):
    make_run(tmp_path / "results" / "b_study" / "runs", "r0", seed=0)
    make_run(tmp_path / "results" / "a_study" / "deep" / "sweep", "r1", seed=1)
    lone = make_run(tmp_path / "elsewhere", "lone", seed=2)
    paths = [tmp_path / "results", lone]
    groups = study_groups(paths, load_runs(paths))
    assert [(name, [r.seed for r in runs]) for name, runs in groups] == [
        ("a_study", [1]),
        ("b_study", [0]),
        ("lone", [2]),
    ]


def test_with_studies_each_study_has_its_own_table_and_a_sweep_spans_studies(tmp_path):
    results = tmp_path / "results"
    # study "budget": dmg and iql at 200 steps; study "long": dmg at 400 steps
    make_run(results / "budget", "dmg", seeds=3, scores=[70.0, 80.0, 90.0])
    make_run(results / "budget", "iql", algo="iql", seeds=3, scores=[60.0, 60.0, 60.0])
    make_run(results / "long", "dmg", seeds=2, scores=[95.0, 97.0], extra={"steps": 400})
    # study "sweep": λ = 0, 0.5 at 200 steps; its crossing point (λ 0.25) is budget's dmg
    for lam in (0.0, 0.5):
        make_run(results / "sweep", f"l{lam}", seed=3, seeds=2, mixture_coef=lam, scores=[5.0, 5.0])
    # a rerun of budget's dmg (same settings, seed 0) in a study of its own
    make_run(results / "rerun", "dmg", seeds=1, scores=[75.0])
    with pytest.raises(RunRefused, match="seed 0 of dmg"):  # in one table: counted twice
        write_report([results], tmp_path / "one_table")
    report = write_report([results], tmp_path / "out", studies=True)
    text = report.markdown.read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    by_name = {s.splitlines()[0]: s for s in sections[1:]}
    assert list(by_name) == [
        "How to read the tables",
        "budget",
        "long",
        "rerun",
        "sweep",
        "Ablations (the paper's Figures 1–2)",
        "Every seed",
    ]
    # within a study, no column for a setting of another study (no "steps=" split)
    assert table_header(by_name["budget"]) == ["dataset", "dmg", "iql", "score reference"]
    assert table_header(by_name["long"]) == ["dataset", "dmg", "score reference"]
    assert "96.0 ± 1.0" in by_name["long"] and "80.0 ± 8.2" in by_name["budget"]
    assert table_header(by_name["sweep"])[1:3] == ["dmg (λ=0)", "dmg (λ=0.5)"]
    # the λ ablation has all three values: the crossing from "budget" included
    ablation = by_name["Ablations (the paper's Figures 1–2)"]
    assert all(f"| {x} |" in ablation for x in ("0", "0.25", "0.5"))
    assert (tmp_path / "out" / "figures" / "long" / "curves_mujoco-hopper-medium-v0.png").is_file()
    rows = read_csv(report.csv)
    assert {r["study"] for r in rows} == {"budget", "long", "rerun", "sweep"}
    (long_dmg,) = [r for r in rows if r["study"] == "long" and r["dataset"] != "IQM"]
    assert (long_dmg["column"], long_dmg["variant"]) == ("dmg", "")  # no steps= split


def test_a_sweep_with_no_single_stand_in_keeps_a_column_per_setting(tmp_path):
    for i, lam in enumerate((0.0, 0.5)):
        make_run(tmp_path / "runs", f"r{i}", mixture_coef=lam)
    text = write_report([tmp_path / "runs"], tmp_path / "out").markdown.read_text()
    assert table_header(text) == ["dataset", "dmg (λ=0)", "dmg (λ=0.5)", "score reference"]
    assert "more settings are in the ablation section" not in text


def test_a_sweep_stand_in_is_chosen_apart_for_each_setting_of_other_keys(tmp_path):
    runs = tmp_path / "runs"
    for ln in (False, True):
        make_run(runs, f"d{ln}", seeds=3, scores=[50.0] * 3, extra={"network": {"ln": ln}})
        make_run(runs, f"l{ln}", seed=5, mixture_coef=1.0, extra={"network": {"ln": ln}})
    text = write_report([runs], tmp_path / "out").markdown.read_text()
    assert table_header(text) == [
        "dataset",
        "dmg (network.ln=False)",
        "dmg (network.ln=True)",
        "score reference",
    ]


def test_seeds_and_devices_do_not_make_columns(tmp_path):
    make_run(tmp_path / "runs", "a", seed=0, extra={"device": "cpu"})
    make_run(tmp_path / "runs", "b", seed=1, extra={"device": "cuda"})
    rows = read_csv(write_report([tmp_path / "runs"], tmp_path / "out").csv)
    assert [r["column"] for r in rows if r["dataset"] != "IQM"] == ["dmg"]


def test_bf16_matmuls_make_a_column_and_other_compile_settings_do_not(tmp_path):
    """compile.* only changes speed, except matmul_precision, which changes the numbers; a
    run older than the key ran in float32."""
    runs = tmp_path / "runs"
    make_run(runs, "old", seed=0)
    make_run(
        runs, "fp32", seed=1, extra={"compile": {"mode": "eager", "matmul_precision": "highest"}}
    )
    make_run(
        runs, "bf16", seed=0, extra={"compile": {"mode": "auto", "matmul_precision": "medium"}}
    )
    columns = sorted({c.column: len(c.runs) for c in build_cells(load_runs([runs]))}.items())
    assert columns == [("dmg (matmuls=bf16/TF32)", 1), ("dmg (matmuls=fp32)", 2)]


def test_a_run_older_than_a_config_key_counts_as_the_behaviour_it_ran_with(tmp_path):
    """A run whose config lacks ``data.goal_terminal`` ran without goal terminals: the same
    column as a run with ``goal_terminal: false``, another one than ``true``."""
    runs = tmp_path / "runs"
    make_run(runs, "old", seed=0)
    make_run(
        runs, "off", seed=1, extra={"data": {"score_reference": "auto", "goal_terminal": False}}
    )
    make_run(runs, "on", seed=0, extra={"data": {"score_reference": "auto", "goal_terminal": True}})
    columns = sorted({c.column: len(c.runs) for c in build_cells(load_runs([runs]))}.items())
    assert columns == [("dmg (goal terminal=False)", 2), ("dmg (goal terminal=True)", 1)]


def test_a_run_older_than_value_init_counts_as_the_default_initialisation(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "old", seed=0)
    make_run(runs, "null", seed=1, extra={"network": {"value_init": None}})
    make_run(runs, "mc", seed=0, extra={"network": {"value_init": "mc"}})
    columns = sorted({c.column: len(c.runs) for c in build_cells(load_runs([runs]))}.items())
    assert columns == [("dmg (value init=data's MC return)", 1), ("dmg (value init=default)", 2)]


def test_diverged_seeds_are_marked_and_counted_in_their_cell(tmp_path):
    make_run(tmp_path / "runs", "a", seed=0, scores=10.0)
    make_run(tmp_path / "runs", "b", seed=1, scores=90.0, out_of_bounds=True)
    report = write_report([tmp_path / "runs"], tmp_path / "out")
    assert "[90.0†](" in report.markdown.read_text()
    assert "1/2 diverged" in report.markdown.read_text()
    assert read_csv(report.csv)[0]["diverged"] == "1"


# ---------------------------------------------------------------- figures


def test_a_learning_curve_is_drawn_per_dataset(sweep, tmp_path):
    report = write_report([sweep], tmp_path / "out")
    names = sorted(p.name for p in report.figures if p.name.startswith("curves_"))
    assert names == ["curves_mujoco-hopper-medium-v0.png", "curves_mujoco-walker2d-medium-v0.png"]
    assert all(p.stat().st_size > 0 for p in report.figures)


def test_a_single_seed_success_rate_curve_gets_a_wilson_band(tmp_path):
    antmaze = {"dataset": "local/antmaze/umaze-v2", "extra": {"eval": {"episodes": 100}}}
    run = make_run(tmp_path / "runs", "a", scores=100.0, finished=False, **antmaze)
    (seed,) = load_runs([run])
    assert seed.success_episodes == 100
    steps, mean, low, high = curve_band([seed])
    assert steps.tolist() == [100, 200] and mean.tolist() == [50.0, 100.0]
    wilson_low, wilson_high = wilson_interval([50, 100], 100)
    assert np.allclose(low, wilson_low) and np.allclose(high, wilson_high) and high[-1] == 100.0
    hopper = make_run(tmp_path / "runs", "b", scores=100.0, extra={"eval": {"episodes": 10}})
    assert np.isnan(curve_band(load_runs([hopper]))[2]).all()  # one hopper seed: no band


def test_the_overestimation_plot_appears_only_when_the_runs_logged_the_diagnostic(tmp_path):
    make_run(tmp_path / "runs", "a", dataset="mujoco/hopper/medium-v0", diagnostic=(120.0, 80.0))
    make_run(tmp_path / "runs", "b", dataset="mujoco/walker2d/medium-v0")
    report = write_report([tmp_path / "runs"], tmp_path / "out")
    names = [p.name for p in report.figures if p.name.startswith("overestimation_")]
    assert names == ["overestimation_mujoco-hopper-medium-v0.png"]
    assert "No run of mujoco/walker2d/medium-v0 logged the diagnostic" in (
        report.markdown.read_text()
    )


def test_columns_that_share_the_data_s_mc_return_get_one_line_for_it(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a", diagnostic=(120.0, 80.0))
    make_run(runs, "b", algo="iql", diagnostic=(90.0, 80.0))
    assert shared_mc_return(load_runs([runs])) == 80.0
    make_run(runs, "c", algo="td3bc", diagnostic=(90.0, 70.0))  # another γ or sample
    assert shared_mc_return(load_runs([runs])) is None


def test_a_lambda_sweep_gets_an_ablation_plot_and_table_with_diverged_seeds(tmp_path):
    runs = tmp_path / "runs"
    for lam in (0.0, 0.5, 1.0):
        for seed in (0, 1):
            diverged = lam == 1.0 and seed == 1
            make_run(
                runs,
                f"l{lam}_s{seed}",
                seed=seed,
                mixture_coef=lam,
                final_q=float("inf") if diverged else 10 + 20 * lam,
            )
    report = write_report([runs], tmp_path / "out")
    (plot,) = [p for p in report.figures if p.name.startswith("ablation_")]
    assert plot.name == "ablation_mujoco-hopper-medium-v0_dmg_loss.mixture_coef.png"
    text = report.markdown.read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| (0|0\.5|1) \| — \|", line)]
    assert len(rows) == 3
    assert rows[-1].split(" | ")[7] == "1/2"  # λ = 1: one of two seeds diverged
    assert rows[0].split(" | ")[4] == "10"  # λ = 0: mean final Q
    assert rows[0].split(" | ")[5:7] == ["—", "—"]  # no diagnostic logged: no MC return


def test_a_run_copied_into_a_second_study_counts_once_in_the_ablation(tmp_path):
    """A study may show another study's run beside its own (a copy of its files); the λ/ν
    ablation pools every study, so the copy must not count twice there. A rerun with other
    numbers is a run of its own and stays."""
    results = tmp_path / "results"
    for lam in (0.0, 0.5):
        make_run(results / "sweep", f"l{lam}", seeds=2, mixture_coef=lam, scores=[10.0, 30.0])
    shutil.copytree(results / "sweep" / "l0.0", results / "other" / "copy_of_l0")
    make_run(results / "other", "rerun_l0.5", seed=1, mixture_coef=0.5, scores=[50.0])
    text = write_report([results], tmp_path / "out", studies=True).markdown.read_text()
    ablation = text.split("## Ablations")[1].split("## Every seed")[0]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in ablation.splitlines()}
    assert rows["| 0"][2:4] == ["2", "20.0 ± 10.0"]  # the copy once: seeds 0, 1
    assert rows["| 0.5"][2] == "3"  # seeds 0, 1 and the rerun of seed 1


def test_the_ablation_says_from_which_step_each_seed_s_q_is_above_the_mc_return(tmp_path):
    """The fabricated diagnostic logs Q/2 at step 100 and Q at step 200 against a constant
    Monte-Carlo return of 80: Q = 60 stays below; Q = 120 passes at 200; Q = 200 at 100."""
    runs = tmp_path / "runs"
    for lam, seed, q in ((0.0, 0, 60.0), (0.0, 1, 120.0), (1.0, 0, 200.0), (1.0, 1, 170.0)):
        make_run(runs, f"l{lam}_s{seed}", seed=seed, mixture_coef=lam, diagnostic=(q, 80.0))
    passes = {
        r.seed + 10 * r.value("loss.mixture_coef"): r.q_passes_mc_at() for r in load_runs([runs])
    }
    assert passes == {0: None, 1: 200, 10: 100, 11: 100}
    report = write_report([runs], tmp_path / "out")
    text = report.markdown.read_text()
    rows = {
        line.split(" | ")[0]: line.split(" | ")
        for line in text.splitlines()
        if re.match(r"\| (0|1) \| — \|", line)
    }
    assert rows["| 0"][4:7] == ["90", "80", "never 0.2k"]  # mean Q, MC return, per seed
    assert rows["| 1"][4:7] == ["185", "80", "0.1k 0.1k"]


def test_q_above_a_negative_mc_return_from_the_start_is_not_a_crossing(tmp_path):
    """AntMaze's r - 1 returns are negative and the critics start near 0: Q above the MC
    return before it has come down is not the critic leaving the data's returns; coming
    down and rising again is."""
    runs = tmp_path / "runs"
    make_run(runs, "antmaze", diagnostic=(-20.0, -80.0))  # Q -10, -20 against MC -80
    make_run(runs, "rises_again", seed=1, diagnostic=(-20.0, -80.0))
    (above, again) = sorted(load_runs([runs]), key=lambda r: r.seed)
    assert above.q_passes_mc_at() is None
    again.q_data = np.array([-90.0, -70.0])  # down past the MC return, then above it
    assert again.q_passes_mc_at() == int(again.diag_steps[1])


def test_ablation_lines_are_labelled_by_what_differs_between_them(tmp_path):
    """Two ν sweeps at different budgets that share a setting another run does not have
    (policy_freq 2 against 1): each line names its steps, not the setting both share."""
    runs = tmp_path / "runs"
    shared = {"optim": {"policy_freq": 2}}
    for steps in (100, 300):
        for i, nu in enumerate((0.01, 1.0)):
            make_run(runs, f"s{steps}_n{i}", penalty_coef=nu, extra={"steps": steps, **shared})
    make_run(runs, "other_pf", penalty_coef=0.5, extra={"optim": {"policy_freq": 1}})
    (ablation,) = [
        a for a in ablations(build_cells(load_runs([runs]))) if a.key == "loss.penalty_coef"
    ]
    assert sorted(line_labels(ablation).values()) == ["steps=100", "steps=300"]
    text = write_report([runs], tmp_path / "out").markdown.read_text()
    assert "| 0.01 | steps=300 | 1 |" in text


def test_a_column_leaves_out_a_setting_that_has_no_effect_and_words_a_null_one(tmp_path):
    """The cosine study's arms: a constant actor lr has no cosine horizon to show, and a
    null horizon (the run's length) is said in words, not ``None``."""
    runs = tmp_path / "runs"
    arms = {"const": (False, 500000), "paper": (True, 500000), "run": (True, None)}
    for name, (cosine, horizon) in arms.items():
        optim = {"actor_cosine": cosine, "actor_cosine_horizon": horizon}
        make_run(runs, name, extra={"optim": optim})
    columns = sorted(c.column for c in build_cells(load_runs([runs])))
    assert columns == [
        "dmg (actor cosine=False)",
        "dmg (actor cosine=True, cosine horizon=500000)",
        "dmg (actor cosine=True, cosine horizon=run length)",
    ]


def test_a_nu_sweep_is_drawn_separately_from_a_lambda_sweep(tmp_path):
    runs = tmp_path / "runs"
    for i, lam in enumerate((0.0, 0.5)):
        make_run(runs, f"l{i}", mixture_coef=lam, penalty_coef=0.1)
    for i, nu in enumerate((0.01, 1.0)):
        make_run(runs, f"n{i}", mixture_coef=0.25, penalty_coef=nu)
    report = write_report([runs], tmp_path / "out")
    names = sorted(p.name for p in report.figures if p.name.startswith("ablation_"))
    assert names == [
        "ablation_mujoco-hopper-medium-v0_dmg_loss.mixture_coef.png",
        "ablation_mujoco-hopper-medium-v0_dmg_loss.penalty_coef.png",
    ]


# ---------------------------------------------------------------- the recipe


def run_report(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "recipes/report.py", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_recipe_writes_results_md_csv_and_figures_for_a_sweep_directory(sweep, tmp_path):
    out = tmp_path / "report"
    proc = run_report(f"runs={sweep}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert "mujoco/hopper/medium-v0" in proc.stdout and "20.0 ± 8.2" in proc.stdout
    assert not (out / ".hydra").exists()


def test_an_intro_file_goes_under_the_title_before_the_tables(sweep, tmp_path):
    report = write_report([sweep], tmp_path / "out", title="T", intro="Notes on *these* runs.\n")
    lines = report.markdown.read_text().splitlines()
    assert lines[0] == "# T"
    notes = lines.index("Notes on *these* runs.")
    assert notes < lines.index("## Final normalised score (the paper's Table 2 layout)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["intro=nope.md"], "[report] error: config: intro=nope.md is not a file"),
        (["published=maybe"], "[report] error: config: published=maybe is not true/false"),
        ([], "[report] error: no run with an eval row under"),
    ],
)
def test_a_missing_intro_or_no_runs_is_one_line_and_exit_2(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "report"
    proc = run_report(f"runs={empty}", f"out={out}", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written; Hydra's empty folder removed


def test_a_seed_in_two_run_directories_is_refused_naming_both(tmp_path):
    make_run(tmp_path, "a", seed=0, seeds=2, scores=[10.0, 20.0])
    make_run(tmp_path, "copy", seed=1, scores=20.0)  # seed 1 again, same settings
    make_run(tmp_path, "other", seed=1, scores=30.0, penalty_coef=1.0)  # another variant
    with pytest.raises(RunRefused, match=r"seed 1 of dmg on mujoco/hopper/medium-v0.*a\b.*copy"):
        build_cells(load_runs([tmp_path]))
    shutil.rmtree(tmp_path / "copy")
    assert [c.stats.n for c in build_cells(load_runs([tmp_path]))] == [2, 1]


def test_the_recipe_refuses_a_copied_run_in_one_line_and_writes_nothing(sweep, tmp_path):
    shutil.copytree(sweep / "3", sweep / "3_copy")
    out = tmp_path / "report"
    proc = run_report(f"runs={sweep}", f"out={out}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("[report] error: seed 0 of iql") and len(err.splitlines()) == 1
    assert "3_copy" in err and not out.exists()


def test_the_intro_links_are_rewritten_to_resolve_from_the_report(tmp_path):
    notes = tmp_path / "results" / "README.md"
    notes.parent.mkdir()
    notes.write_text(
        'See [a study](study/README.md), ![fig](study/f.png "t"), '
        "[web](https://x.org/a), [here](#table) and [root](/abs.md).\n"
    )
    text = read_intro(notes, tmp_path / "docs")
    assert text == (
        'See [a study](../results/study/README.md), ![fig](../results/study/f.png "t"), '
        "[web](https://x.org/a), [here](#table) and [root](/abs.md).\n"
    )


def test_a_fine_tuning_run_is_a_column_of_its_own_not_a_variant(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "offline", scores=[40.0, 50.0], seeds=2)
    make_run(runs, "online", scores=70.0, extra={"online_steps": 200, "checkpoint_seed": 0})
    report = write_report([runs], tmp_path / "out")
    assert {c.algo for c in report.cells} == {"dmg", "dmg+online"}
    online = next(c for c in report.cells if c.algo == "dmg+online")
    assert online.variant == () and online.stats.mean == 70.0


# ---------------------------------------------------------------- the paper's published scores


def test_the_loader_names_its_source_and_holds_table_2_and_table_4():
    paper = load_published()
    assert "Mao" in paper.source and "NeurIPS 2024" in paper.source
    assert "2411.07934" in paper.source and "D4RL -v2" in paper.data
    assert "Table 2" in PUBLISHED_PATH.read_text() and "Table 4" in PUBLISHED_PATH.read_text()
    offline = [s for s in paper.scores.values() if s.table == "Table 2"]
    assert len(offline) == 15 * 3  # IQL, TD3+BC, DMG on 15 datasets
    assert paper.scores[("hopper-medium", "dmg")].score == 100.6
    assert paper.scores[("antmaze-large-diverse", "dmg+online")].text() == "58.8 → 89.0"
    assert paper.totals == {"iql+online": (392.4, 490.4), "dmg+online": (439.4, 556.4)}
    assert ("antmaze-umaze", "iql+online") not in paper.scores  # not published per dataset


def test_the_published_scores_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["torchrl_dmg.report"]
    assert any(PUBLISHED_PATH.match(p) for p in patterns)


@pytest.mark.parametrize(
    "dataset_id, name",
    [
        ("local/antmaze/medium-play-v2", "antmaze-medium-play"),
        ("local/antmaze/umaze-diverse-onegoal-v2", "antmaze-umaze-diverse"),
        ("D4RL/antmaze/large-play-v1", "antmaze-large-play"),
        ("local/mujoco/hopper/medium-replay-v0", "hopper-medium-replay"),
        ("mujoco/walker2d/medium-v0", "walker2d-medium"),
        ("local/antmaze/medium-random-v1", None),
        ("local/pointmaze/medium-v0", None),
        ("D4RL/pointmaze/umaze-v2", None),
    ],
)
def test_dataset_ids_map_to_the_paper_s_d4rl_dataset(dataset_id, name):
    assert paper_dataset(dataset_id) == name


MEDIUM_PLAY = "local/antmaze/medium-play-v2"


@pytest.fixture
def antmaze_study(tmp_path) -> Path:
    """medium-play: dmg 20/30/40, iql 10/15; pointmaze medium (no published score): dmg
    60/70."""
    root = tmp_path / "runs"
    make_run(root, "dmg", dataset=MEDIUM_PLAY, seeds=3, scores=[20.0, 30.0, 40.0])
    make_run(root, "iql", dataset=MEDIUM_PLAY, algo="iql", seeds=2, scores=[10.0, 15.0])
    make_run(root, "pm", dataset="local/pointmaze/medium-v0", seeds=2, scores=[60.0, 70.0])
    return root


def table_row(markdown: str, dataset: str) -> dict[str, str]:
    """The cells of ``dataset``'s row of the Table 2 layout, by column name."""
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {dataset} |"))
    cells = [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")]
    return dict(zip(table_header(markdown), cells, strict=True))


def test_the_published_columns_show_the_paper_s_numbers_beside_local_runs(antmaze_study, tmp_path):
    text = write_report([antmaze_study], tmp_path / "out", published=True).markdown.read_text()
    assert table_header(text) == [
        "dataset",
        "dmg",
        "iql",
        "dmg (paper, D4RL data)",
        "iql (paper, D4RL data)",
        "score reference",
    ]
    row = table_row(text, MEDIUM_PLAY)
    assert row["dmg (paper, D4RL data)"] == "*80.2*" and row["iql (paper, D4RL data)"] == "*76.4*"
    assert row["dmg"].startswith("30.0 ± 8.2")


def test_a_dataset_without_a_published_score_has_a_blank_published_cell(antmaze_study, tmp_path):
    report = write_report([antmaze_study], tmp_path / "out", published=True)
    row = table_row(report.markdown.read_text(), "local/pointmaze/medium-v0")
    assert row["dmg (paper, D4RL data)"] == "" and row["iql (paper, D4RL data)"] == ""
    published = [r for r in read_csv(report.csv) if r["kind"] == "published"]
    assert {r["dataset"] for r in published} == {MEDIUM_PLAY}


def test_published_scores_leave_the_measured_cells_cis_and_iqms_unchanged(antmaze_study, tmp_path):
    without = write_report([antmaze_study], tmp_path / "without")
    with_paper = write_report([antmaze_study], tmp_path / "with", published=True)
    measured = [r for r in read_csv(with_paper.csv) if r["kind"] == "measured"]
    plain = read_csv(without.csv)
    for rows in (measured, plain):  # config links differ only by the output folder
        for r in rows:
            r.pop("configs")
    assert measured == plain
    iqm_row = next(
        line for line in with_paper.markdown.read_text().splitlines() if "**IQM**" in line
    )
    assert iqm_row.endswith("<sub>2 seeds, 1 dataset</sub> |  |  | |")  # none for the paper's
    assert [c.stats for c in with_paper.cells] == [c.stats for c in without.cells]


def test_the_csv_marks_published_values_as_published(antmaze_study, tmp_path):
    rows = read_csv(write_report([antmaze_study], tmp_path / "out", published=True).csv)
    dmg = cell(rows, MEDIUM_PLAY, "dmg (paper, D4RL data)")
    assert dmg["kind"] == "published" and float(dmg["mean"]) == 80.2
    assert dmg["std"] == dmg["ci95_low"] == dmg["scores"] == dmg["configs"] == ""
    assert dmg["score_reference"].startswith("published: Mao")
    assert "Table 2, D4RL antmaze-medium-play" in dmg["score_reference"]
    assert cell(rows, MEDIUM_PLAY, "dmg")["kind"] == "measured"


def test_the_footnote_says_the_published_scores_are_on_d4rl_data_not_these_runs(
    antmaze_study, tmp_path
):
    text = write_report([antmaze_study], tmp_path / "out", published=True).markdown.read_text()
    (note,) = [line for line in text.splitlines() if line.startswith("*(paper, D4RL data)*")]
    assert "arXiv 2411.07934, Table 2 (" in note
    assert "measured on D4RL's datasets, not on these runs'" in note
    assert "no CI, IQM or ranking" in note and "Table 4" not in note


def test_a_fine_tuning_run_gets_table_4_before_and_after_beside_it(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "offline", dataset=MEDIUM_PLAY, seeds=2, scores=[40.0, 50.0])
    online = {"online_steps": 200, "checkpoint_seed": 0}
    make_run(runs, "online", dataset=MEDIUM_PLAY, scores=70.0, extra=online)
    make_run(runs, "iql", dataset=MEDIUM_PLAY, algo="iql", scores=60.0, extra=online)
    text = write_report([runs], tmp_path / "out", published=True).markdown.read_text()
    row = table_row(text, MEDIUM_PLAY)
    assert row["dmg+online (paper, D4RL data)"] == "*80.2 → 96.8*"
    assert "iql+online (paper, D4RL data)" not in row  # Table 4 gives IQL's totals only
    assert "totals over its six AntMaze datasets: dmg+online 439.4 → 556.4, " in text
    assert "iql+online 392.4 → 490.4." in text


def test_a_fine_tuning_study_shows_each_run_before_and_after_its_online_steps(tmp_path):
    """Table 4's shape: a fine-tuning cell reads "before → after" (its evaluation at online
    step 0, then its last); one seed says so instead of a spread of ± 0.0."""
    results = tmp_path / "results"
    online = {"online_steps": 200, "checkpoint_seed": 0}
    make_run(
        results / "ft", "dmg", dataset=MEDIUM_PLAY, scores=70.0, start_score=30.0, extra=online
    )
    make_run(
        results / "ft", "iql", dataset=MEDIUM_PLAY, algo="iql", seeds=2, scores=[20.0, 40.0],
        start_score=10.0, extra=online,
    )  # fmt: skip
    make_run(results / "off", "dmg", dataset=MEDIUM_PLAY, scores=45.0)
    text = write_report([results], tmp_path / "out", studies=True).markdown.read_text()
    finetune, offline = (part for part in text.split("\n## ")[2:4])
    assert "(the paper's Table 4 layout: before → after the online steps)" in finetune
    row = table_row(finetune, MEDIUM_PLAY)
    assert row["dmg+online"].startswith("30.0 → 70.0 (1 seed)<br>")
    assert "30.0 → 70.0](" in row["dmg+online"]  # the seed's own link
    assert row["iql+online"].startswith("10.0 → 30.0 ± 10.0<br>[")
    assert "(the paper's Table 2 layout)" in offline
    assert table_row(offline, MEDIUM_PLAY)["dmg"].startswith("45.0 (1 seed)<br>")
    assert "±" not in table_row(offline, MEDIUM_PLAY)["dmg"]


def test_a_study_s_table_gets_the_published_scores_of_its_own_algorithms(tmp_path):
    results = tmp_path / "results"
    make_run(results / "antmaze", "dmg", dataset=MEDIUM_PLAY, scores=30.0)
    make_run(results / "pointmaze", "dmg", dataset="local/pointmaze/medium-v0", scores=60.0)
    make_run(results / "pointmaze", "td3bc", dataset="local/pointmaze/medium-v0", algo="td3bc")
    text = write_report([results], tmp_path / "out", studies=True, published=True)
    headers = [table_header(part) for part in text.markdown.read_text().split("\n## ")[2:4]]
    assert headers == [
        ["dataset", "dmg", "dmg (paper, D4RL data)", "score reference"],
        ["dataset", "dmg", "td3bc", "score reference"],  # no published pointmaze score
    ]


def test_the_recipe_shows_the_published_scores_unless_told_not_to(antmaze_study, tmp_path):
    for flag, shown in (("published=true", True), ("published=false", False)):
        out = tmp_path / flag.replace("=", "_")
        proc = run_report(f"runs={antmaze_study}", f"out={out}", flag)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("| *80.2* |" in (out / "results.md").read_text()) == shown


def test_run_time_adds_up_training_evaluation_and_the_logged_sessions(tmp_path):
    from torchrl_dmg.report.runtime import run_time, runtime_table

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": "d", "steps": 3000}))
    rows = [  # 1000 steps at 50/s (the warm-up), 1000 at 200/s, 1000 at 100/s; evals 5 + 7 s
        {"step": 1000, "kind": "train", "updates_per_s": 50.0, "eval_s": ""},
        {"step": 2000, "kind": "train", "updates_per_s": 200.0, "eval_s": ""},
        {"step": 2000, "kind": "eval", "updates_per_s": "", "eval_s": 5.0},
        {"step": 3000, "kind": "train", "updates_per_s": 100.0, "eval_s": ""},
        {"step": 3000, "kind": "eval", "updates_per_s": "", "eval_s": 7.0},
    ]
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "offline.log").write_text(
        "2026-12-07T17:13:05Z [dmg] algo=dmg dataset=d (sha256:00) seeds=[0]\n"
        "2026-12-07T17:13:05Z [dmg] machine: AMD EPYC (2 logical cores), 1 torch thread(s)\n"
        "2026-12-07T18:49:00Z [dmg] stopped by SIGTERM at step 2000; checkpoint saved.\n"
        "2026-12-07T18:49:00Z [dmg] session stopped after 1 h 36 min 10 s (wall time)\n"
        "2026-12-08T09:00:00Z [dmg] resumed run at step 2000\n"
        "2026-12-08T09:00:00Z [dmg] machine: Intel(R) Xeon(R) (2 logical cores)\n"
        "2026-12-08T09:30:00Z [dmg] session finished after 30 min 02 s (wall time)\n"
    )
    timing = run_time(run)
    assert timing.steps == 3000 and timing.evals == 2
    assert timing.train_s == pytest.approx(1000 / 50 + 1000 / 200 + 1000 / 100)
    assert timing.rate == pytest.approx(150.0)  # the median after the warm-up row
    assert timing.eval_s == pytest.approx(12.0)
    assert timing.eval_share == pytest.approx(12.0 / 47.0)
    first, second = timing.sessions
    assert (first.ending, first.wall_s, first.machine.startswith("AMD EPYC")) == (
        "stopped",
        5770.0,
        True,
    )
    assert (second.ending, second.wall_s) == ("finished", 1802.0)
    assert second.start.isoformat() == "2026-12-08T09:00:00+00:00"
    assert timing.wall_s == 5770.0 + 1802.0
    table = runtime_table([run], tmp_path)
    assert "| [run](run/config.yaml) | 3,000 | 150.0 | 35 s | 12 s (25.5%) |" in table
    assert "2026-12-07 17:13 UTC, 1 h 36 min, stopped, AMD EPYC<br>" in table
    assert (
        "2026-12-08 09:00 UTC, 30 min, finished, Intel(R) Xeon(R)<br>**2 h 06 min** in 2 sessions"
        in table
    )

    # a session killed without its end line: its last line, no wall time, no total
    with open(run / "offline.log", "a") as f:
        f.write("2026-12-09T10:00:00Z [dmg] resumed run at step 3000\n")
    timing = run_time(run)
    assert timing.sessions[-1].ending == "unrecorded" and timing.wall_s is None
    assert "2026-12-09 10:00 UTC → last line 10:00 (no end recorded)" in runtime_table(
        [run], tmp_path
    )
    # a run made before its log: said so; a file that is not a run log: refused
    (run / "offline.log").unlink()
    assert "not recorded (no run log)" in runtime_table([run], tmp_path)
    (run / "offline.log").write_text("[2026-12-07 17:13:05,123][__main__][INFO] - hydra's format\n")
    with pytest.raises(ValueError, match="not a run-log line"):
        run_time(run)

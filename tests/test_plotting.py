"""Learning-curve plots from recipe run directories."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from torchrl_dmg.report.plotting import episode_band, plot_scores, read_eval_rows
from torchrl_dmg.report.runs import success_episodes
from torchrl_dmg.report.stats import wilson_interval

HEADER = "step,kind,loss_value,normalized_score,normalized_score_std"


def _run(tmp_path, name, lines, header=HEADER):
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.csv").write_text("\n".join([header, *lines]) + "\n")
    return run


def test_eval_rows_are_read_in_step_order(tmp_path):
    run = _run(tmp_path, "a", ["20,eval,,50,2", "10,train,0.1,,", "10,eval,,40,1"])
    rows = read_eval_rows(run)
    assert [(r["step"], r["normalized_score"]) for r in rows] == [("10", "40"), ("20", "50")]
    with pytest.raises(FileNotFoundError, match="recipe run directory"):
        read_eval_rows(tmp_path / "missing")


def test_single_and_stacked_runs_plot_to_png(tmp_path):
    import matplotlib.image

    single = _run(tmp_path, "single", ["10,eval,,40,1", "20,eval,,50,2"])
    header = HEADER + ",normalized_score/s0,normalized_score/s1"
    stacked = _run(tmp_path, "stacked", ["10,eval,,30,5,25,35", "20,eval,,45,5,40,50"], header)
    out = plot_scores(
        [single, stacked], tmp_path / "plots" / "scores.png", hlines={"behaviour": 28.6}
    )
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="labels"):
        plot_scores([single], tmp_path / "x.png", labels=["a", "b"])


def _success_run(
    tmp_path, name, scores, *, episodes=100, summary=True, dataset="local/antmaze/umaze-v2"
):
    """A fine-tuning run on AntMaze: success rates (percent) of ``episodes`` episodes."""
    run = _run(
        tmp_path,
        name,
        [f"{i * 10},eval,,{s},{math.sqrt(s * (100 - s))}" for i, s in enumerate(scores)],
    )
    (run / "config.yaml").write_text(
        f"dataset: {dataset}\ndata:\n  score_reference: auto\neval:\n  episodes: {episodes}\n"
    )
    if summary:
        (run / "summary.json").write_text(json.dumps({"score_reference": "success"}))
    return run


def test_the_wilson_interval_matches_the_formula_by_hand():
    # 20 successes of 100 episodes, z = 1.96
    n, p, z = 100, 0.2, 1.959963984540054
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = wilson_interval(20, 100)
    assert (low, high) == pytest.approx((100 * (centre - half), 100 * (centre + half)))
    assert (round(float(low), 2), round(float(high), 2)) == (13.34, 28.88)
    # its definition: the rates q whose normal test does not reject p, (p - q)² = z² q(1 - q) / n
    for q in (low / 100, high / 100):
        assert (p - q) ** 2 == pytest.approx(z**2 * q * (1 - q) / n)


@pytest.mark.parametrize("successes", [0, 100])
def test_the_wilson_band_of_none_or_all_successes_stays_inside_0_to_100(successes):
    low, high = wilson_interval(successes, 100)
    assert 0.0 <= low < high <= 100.0
    assert high - low == pytest.approx(3.699, abs=1e-3)  # not empty: 100 episodes say "within 3.7"
    assert (low == pytest.approx(0.0)) if successes == 0 else (high == 100.0)


def test_a_success_rate_run_is_drawn_with_wilson_bands_not_the_std(tmp_path):
    # 1/100 successes: mean ± std is 1 ± 9.9, below zero; Wilson's stays in [0, 100]
    run = _success_run(tmp_path, "antmaze", [0.0, 1.0, 52.0, 100.0])
    score, low, high = episode_band(run)
    wilson_low, wilson_high = wilson_interval(np.array([0, 1, 52, 100]), 100)
    assert np.allclose(low, wilson_low) and np.allclose(high, wilson_high)
    assert (
        (low >= 0).all() and (high <= 100).all() and (low <= score).all() and (score <= high).all()
    )
    assert plot_scores([run], tmp_path / "antmaze.png").read_bytes().startswith(b"\x89PNG")


def test_an_unfinished_antmaze_run_is_read_as_a_success_rate_from_its_config(tmp_path):
    run = _success_run(tmp_path, "unfinished", [0.0, 30.0], episodes=10, summary=False)
    assert success_episodes(run) == 10
    _, low, high = episode_band(run)
    assert (low[1], high[1]) == pytest.approx(wilson_interval(3, 10))  # 3 of 10 episodes


def test_a_return_scored_run_keeps_its_std_band(tmp_path):
    run = _run(tmp_path, "hopper", ["10,eval,,40,5", "20,eval,,50,2"])
    (run / "config.yaml").write_text("dataset: mujoco/hopper/medium-v0\neval:\n  episodes: 10\n")
    (run / "summary.json").write_text(json.dumps({"score_reference": "d4rl"}))
    assert success_episodes(run) is None
    score, low, high = episode_band(run)
    assert low.tolist() == [35.0, 48.0] and high.tolist() == [45.0, 52.0]


def test_several_runs_on_one_plot_need_no_command_line(tmp_path):
    """The module's docstring command (its argparse entry point is gone)."""
    import torchrl_dmg.report.plotting as plotting

    (command,) = re.findall(r'python -c "(.*?)"', plotting.__doc__, flags=re.S)
    a, b = _run(tmp_path, "a", ["10,eval,,40,1"]), _run(tmp_path, "b", ["10,eval,,30,1"])
    command = command.replace("outputs/offline/<run a>", str(a)).replace(
        "outputs/offline/<run b>", str(b)
    )
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True)
    assert (tmp_path / "scores.png").read_bytes().startswith(b"\x89PNG")

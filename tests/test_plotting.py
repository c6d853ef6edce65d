"""Learning-curve plots from recipe run directories."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchrl_dmg.report.plotting import plot_scores, read_eval_rows

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


def test_command_line(tmp_path):
    run = _run(tmp_path, "a", ["10,eval,,40,1"])
    out = tmp_path / "cli.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchrl_dmg.report.plotting",
            str(run),
            "--out",
            str(out),
            "--hline",
            "behaviour medium=28.6",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"wrote {out}" in proc.stdout and out.read_bytes().startswith(b"\x89PNG")

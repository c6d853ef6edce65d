"""What a newcomer's first run shows: a learning curve with several points, and no
dependency notice that is not about this project."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from recipe_runner import ROOT

FAMILIES = ("antmaze", "pointmaze", "locomotion", "locomotion_expert")


def _compose(*overrides: str):
    with initialize_config_dir(str(ROOT / "recipes" / "config"), version_base="1.3"):
        return compose("finetune", overrides=list(overrides))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_demo_budget_draws_a_curve_for_every_family(family):
    cfg = _compose(f"family={family}")
    assert cfg.budget == "demo"
    points = cfg.online_steps // cfg.eval.interval + 1  # with the evaluation at step 0
    assert points >= 8, f"{family}: {points} evaluations in {cfg.online_steps} online steps"


def test_the_paper_budget_keeps_the_family_s_evaluation_interval():
    assert _compose("budget=paper").eval.interval == 50_000  # AntMaze, spec
    assert _compose("budget=paper", "family=locomotion").eval.interval == 20_000

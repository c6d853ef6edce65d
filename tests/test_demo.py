"""What a newcomer's first run shows: a learning curve with several points, and no
dependency notice that is not about this project."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from recipe_runner import ROOT

from torchrl_dmg._compat import ADROIT_REWARD_NOTICE

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


def _run(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (gymnasium-robotics prints once per process, and the
    filter changes this process's notice table for good)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )


def test_gymnasium_robotics_prints_the_adroit_notice_without_the_filter():
    """The control: the notice this project drops is still there to drop."""
    proc = _run(
        "from farama_notifications import notifications\n"
        "from torchrl_dmg._compat import ADROIT_REWARD_NOTICE\n"
        "texts = notifications.get('gymnasium_robotics', {}).values()\n"
        "print(any(ADROIT_REWARD_NOTICE.search(t) for t in texts))\n"
        "import gymnasium_robotics\n"
    )
    if proc.stdout.strip() != "True":
        pytest.skip("this gymnasium-robotics has no Adroit notice any more")
    assert ADROIT_REWARD_NOTICE.search(proc.stderr)


def test_the_filter_drops_only_the_adroit_notice():
    code = (
        "from farama_notifications import notifications as n\n"
        "n.setdefault('gymnasium_robotics', {})['0.0.0'] = 'another notice'\n"
        "from torchrl_dmg._compat import drop_adroit_reward_notice\n"
        "drop_adroit_reward_notice()\n"
        "print(list(n['gymnasium_robotics'].values()))\n"
    )
    assert _run(code).stdout.strip() == "['another notice']"


def test_making_the_evaluation_and_online_envs_prints_no_adroit_notice(tiny_dataset_env):
    code = (
        "from torchrl_dmg.data.offline import load_offline_dataset\n"
        "from torchrl_dmg.envs import make_env, make_online_env, max_episode_steps\n"
        f"d = load_offline_dataset('{tiny_dataset_env}', obs_keys=['observation', 'desired_goal'],"
        " progress=False)\n"
        "make_env(d, num_envs=2).rollout(3)\n"
        "make_online_env(d).rollout(3)\n"
        "max_episode_steps(d)\n"
        "import sys; assert 'gymnasium_robotics' in sys.modules\n"
    )
    assert "AdroitHand" not in _run(code).stderr

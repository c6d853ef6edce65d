"""Monte-Carlo returns of dataset transitions (torchrl_dmg.data.returns)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchrl_dmg.data.returns import (
    diagnostic_sample,
    episode_ends,
    monte_carlo_returns,
    truncated_tail_mask,
)

GAMMA = 0.5


def episodes(rewards, terminated, truncated, episode=None) -> TensorDict:
    """A flat TED TensorDict: one transition per reward, observation = its index."""
    n = len(rewards)
    term = torch.tensor(terminated, dtype=torch.bool).unsqueeze(-1)
    trunc = torch.tensor(truncated, dtype=torch.bool).unsqueeze(-1)
    td = TensorDict(
        {
            "observation": torch.arange(n, dtype=torch.float32).unsqueeze(-1),
            "action": torch.zeros(n, 1),
            "next": {
                "reward": torch.tensor(rewards, dtype=torch.float32).unsqueeze(-1),
                "terminated": term,
                "truncated": trunc,
                "done": term | trunc,
            },
        },
        batch_size=[n],
    )
    if episode is not None:
        td["episode"] = torch.tensor(episode)
    return td


@pytest.fixture
def two_episodes() -> TensorDict:
    # episode 0: rewards 1, 2, 4, terminated; episode 1: rewards 8, 16, truncated
    return episodes(
        [1.0, 2.0, 4.0, 8.0, 16.0],
        terminated=[0, 0, 1, 0, 0],
        truncated=[0, 0, 0, 0, 1],
        episode=[0, 0, 0, 1, 1],
    )


def test_a_terminated_episode_gets_its_exact_discounted_returns(two_episodes):
    returns = monte_carlo_returns(two_episodes, GAMMA)
    # G2 = 4; G1 = 2 + 0.5 * 4 = 4; G0 = 1 + 0.5 * 4 = 3
    assert returns[:3, 0].tolist() == [3.0, 4.0, 4.0]


def test_a_truncated_episode_gets_the_return_of_its_observed_rewards(two_episodes):
    returns = monte_carlo_returns(two_episodes, GAMMA)
    # G4 = 16 (nothing after the cut is added); G3 = 8 + 0.5 * 16 = 16
    assert returns[3:, 0].tolist() == [16.0, 16.0]


def test_a_termination_bootstraps_nothing_from_the_next_episode(two_episodes):
    bigger_next_episode = two_episodes.clone()
    bigger_next_episode["next", "reward"][3:] *= 100
    returns = monte_carlo_returns(bigger_next_episode, GAMMA)
    assert returns[2, 0].item() == 4.0


def test_returns_have_the_shape_of_the_rewards(two_episodes):
    assert monte_carlo_returns(two_episodes, GAMMA).shape == (5, 1)


def test_a_change_of_episode_id_ends_an_episode_that_has_no_flag():
    # episode 0 stops without terminated or truncated (the data was cut there)
    data = episodes([1.0, 2.0, 4.0], terminated=[0, 0, 1], truncated=[0, 0, 0], episode=[0, 1, 1])
    end, terminated = episode_ends(data)
    assert end.tolist() == [True, False, True]
    assert terminated.tolist() == [False, False, True]
    assert monte_carlo_returns(data, GAMMA)[:, 0].tolist() == [1.0, 4.0, 4.0]


def test_the_last_transition_ends_an_episode_even_without_a_flag():
    data = episodes([2.0, 2.0], terminated=[0, 0], truncated=[0, 0])
    assert monte_carlo_returns(data, GAMMA)[:, 0].tolist() == [3.0, 2.0]


def test_undiscounted_returns_are_the_sums_of_the_remaining_rewards(two_episodes):
    assert monte_carlo_returns(two_episodes, 1.0)[:, 0].tolist() == [7.0, 6.0, 4.0, 24.0, 16.0]


def test_the_truncated_tail_is_the_steps_whose_missing_future_weighs_more_than_the_tolerance():
    data = episodes([0.0] * 6, terminated=[0] * 6, truncated=[0, 0, 0, 0, 0, 1])
    # γ = 0.5, tolerance 0.1: γ^1 = 0.5, γ^2 = 0.25, γ^3 = 0.125 > 0.1, γ^4 = 0.0625 <= 0.1
    mask = truncated_tail_mask(data, GAMMA, tolerance=0.1)
    assert mask.tolist() == [False, False, False, True, True, True]


def test_a_weight_equal_to_the_tolerance_is_outside_the_tail():
    data = episodes([0.0] * 4, terminated=[0] * 4, truncated=[0, 0, 0, 1])
    # γ^1 = 0.5 > 0.25, γ^2 = 0.25 is not > 0.25
    assert truncated_tail_mask(data, GAMMA, tolerance=0.25).tolist() == [False] * 3 + [True]


def test_a_terminated_episode_has_no_truncated_tail(two_episodes):
    mask = truncated_tail_mask(two_episodes, GAMMA, tolerance=0.1)
    assert mask.tolist() == [False, False, False, True, True]


def test_the_diagnostic_sample_holds_the_returns_of_the_transitions_it_draws(two_episodes):
    sample = diagnostic_sample(two_episodes, GAMMA, size=3, seed=0)
    index = sample["observation"][:, 0].long()
    expected = monte_carlo_returns(two_episodes, GAMMA)[index]
    assert torch.equal(sample["mc_return"], expected)
    assert index.unique().numel() == 3


def test_the_diagnostic_sample_is_fixed_by_its_seed(two_episodes):
    first = diagnostic_sample(two_episodes, GAMMA, size=3, seed=7)
    again = diagnostic_sample(two_episodes, GAMMA, size=3, seed=7)
    assert torch.equal(first["observation"], again["observation"])


def test_the_diagnostic_sample_can_leave_out_truncated_tails(two_episodes):
    sample = diagnostic_sample(
        two_episodes, GAMMA, size=10, drop_truncated_tails=True, tolerance=0.1
    )
    assert sample["observation"][:, 0].tolist() == [0.0, 1.0, 2.0]


def test_the_diagnostic_sample_keeps_every_transition_when_fewer_than_its_size(two_episodes):
    assert diagnostic_sample(two_episodes, GAMMA, size=100).shape == (5,)

"""Reward scalings of the baselines' papers, applied to a dataset's transitions."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from torchrl_dmg.data.returns import episode_ends

__all__ = ["REWARD_SCALES", "episode_returns", "iql_reward_scale", "scale_rewards"]


def episode_returns(data: TensorDictBase) -> torch.Tensor:
    """The undiscounted return of every episode of ``data`` (a flat TED TensorDict of whole
    episodes, episodes as in :func:`~torchrl_dmg.data.returns.episode_ends`)."""
    end, _ = episode_ends(data)
    reward = data["next", "reward"].reshape(-1).double().cpu()
    episode = torch.cumsum(torch.from_numpy(end).long(), 0) - torch.from_numpy(end).long()
    return torch.zeros(int(episode[-1]) + 1, dtype=torch.float64).index_add_(0, episode, reward)


def iql_reward_scale(data: TensorDictBase) -> float:
    """IQL's Gym-MuJoCo reward scale, ``1000 / (max - min episode return)``."""
    returns = episode_returns(data)
    spread = float(returns.max() - returns.min())
    if spread <= 0:
        raise ValueError("every episode has the same return: IQL's reward scale is undefined.")
    return 1000.0 / spread


#: ``data.reward_scale`` choices: a function of the data giving the factor
REWARD_SCALES = {"iql": iql_reward_scale}


def scale_rewards(data: TensorDictBase, scale: str | None) -> float:
    """Multiply ``data``'s rewards in place by the factor of ``scale`` (``None``: 1);
    returns the factor."""
    if scale is None:
        return 1.0
    if scale not in REWARD_SCALES:
        raise ValueError(f"reward_scale={scale!r}: choose null or one of {sorted(REWARD_SCALES)}.")
    factor = REWARD_SCALES[scale](data)
    data["next", "reward"] = data["next", "reward"] * factor
    return factor

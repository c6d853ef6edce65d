"""DMG's in-sample value estimators: the losses that fit ``V(s)`` to the in-sample maximum
of ``Q(s, a)`` over dataset actions (the paper's Table 3)."""

from __future__ import annotations

from typing import Literal

import torch

InSampleEstimator = Literal["expectile", "xql", "sql"]
IN_SAMPLE_ESTIMATORS: tuple[str, ...] = ("expectile", "xql", "sql")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss ``|τ - 1(u<0)| u²`` with ``u = Q - V`` (IQL's in-sample max)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


def gumbel_loss(diff: torch.Tensor, beta: float, clip: float) -> torch.Tensor:
    """Gumbel regression ``exp(z) - z - 1`` with ``z = (Q - V)/β`` clipped to ``[-clip, clip]`` (XQL)."""
    z = (diff / beta).clamp(-clip, clip)
    return z.exp() - z - 1.0


def sparse_loss(diff: torch.Tensor, value: torch.Tensor, alpha: float) -> torch.Tensor:
    """Sparse Q-learning value loss ``1(x>0) x² + V/α`` with ``x = 1 + (Q - V)/(2α)`` (SQL)."""
    x = 1.0 + diff / (2.0 * alpha)
    return torch.where(x > 0, x.pow(2), torch.zeros_like(x)) + value / alpha

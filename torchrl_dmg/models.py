"""Network builders for DMG: deterministic actor, critic and state-value network.

All are stock TorchRL modules (``MLP``, ``TanhModule``, ``ValueOperator``) so that
:class:`~torchrl_dmg.objectives.DMGLoss` composes with the rest of TorchRL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import MLP, TanhModule, ValueOperator


class _ConcatMLP(nn.Module):
    """An MLP on the concatenation of its inputs (state and action for a critic)."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat(inputs, -1))


def _mlp(
    in_features: int, out_features: int, num_cells: Sequence[int], layer_norm: bool, dropout: float
) -> MLP:
    norm_class = nn.LayerNorm if layer_norm else None
    norm_kwargs = [{"normalized_shape": n} for n in num_cells] if layer_norm else None
    return MLP(
        in_features=in_features,
        out_features=out_features,
        num_cells=list(num_cells),
        activation_class=nn.ReLU,
        norm_class=norm_class,
        norm_kwargs=norm_kwargs,
        dropout=dropout if dropout > 0 else None,
    )


def make_actor(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor | float,
    high: torch.Tensor | float,
    *,
    obs_key: str = "observation",
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> TensorDictSequential:
    """Deterministic actor π_φ(s): MLP then tanh scaled to the action bounds; writes ``action``."""
    return TensorDictSequential(
        TensorDictModule(
            _mlp(obs_dim, action_dim, num_cells, layer_norm, dropout),
            in_keys=[obs_key],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=["action"], low=low, high=high),
    )


def make_qvalue(
    obs_dim: int,
    action_dim: int,
    *,
    obs_key: str = "observation",
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> ValueOperator:
    """Critic Q_θ(s, a): MLP on ``[observation, action]``; writes ``state_action_value``."""
    return ValueOperator(
        _ConcatMLP(_mlp(obs_dim + action_dim, 1, num_cells, layer_norm, dropout)),
        in_keys=[obs_key, "action"],
    )


def make_value(
    obs_dim: int,
    *,
    obs_key: str = "observation",
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> ValueOperator:
    """State value V_ψ(s): MLP on ``observation``; writes ``state_value``."""
    return ValueOperator(_mlp(obs_dim, 1, num_cells, layer_norm, dropout), in_keys=[obs_key])


def make_dmg_networks(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor | float,
    high: torch.Tensor | float,
    *,
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
    device: torch.device | str = "cpu",
) -> tuple[TensorDictSequential, ValueOperator, ValueOperator]:
    """Actor, critic and value network with the paper's sizes (256-256, ReLU)."""
    kwargs = {"num_cells": num_cells, "layer_norm": layer_norm, "dropout": dropout}
    actor = make_actor(obs_dim, action_dim, low, high, **kwargs)
    qvalue = make_qvalue(obs_dim, action_dim, **kwargs)
    value = make_value(obs_dim, **kwargs)
    return actor.to(device), qvalue.to(device), value.to(device)

"""Networks and acting policies.

Network builders for DMG (deterministic actor, critic and state-value network) and for the
SAC behaviour policies of :mod:`torchrl_dmg.datagen` (TanhNormal actor, critic), all stock
TorchRL modules (``MLP``, ``TanhModule``, ``ValueOperator``) so that
:class:`~torchrl_dmg.objectives.DMGLoss` composes with the rest of TorchRL; the policies
that act with a loss's trained parameters (evaluation, data collection, exploration).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    InteractionType,
    TensorDictModule,
    TensorDictModuleBase,
    TensorDictSequential,
)
from tensordict.nn.distributions import NormalParamExtractor
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import (
    MLP,
    AdditiveGaussianModule,
    IndependentNormal,
    ProbabilisticActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose compiled form is a matmul then a
    bias add, also when vmapped over stacked agents. Eager calls are ``nn.Linear``'s.

    For a single agent inductor folds the two back into one ``addmm``, which on a CPU first
    copies the bias into every row of the output (a separate pass over it); the update's
    compiled steps split every unscaled ``addmm`` again, the add joining the activation's
    loop where there is one (:func:`~torchrl_dmg.training.compile.unfused_bias_add_pass`)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.bias is not None and torch.compiler.is_compiling():
            return torch.matmul(input, self.weight.mT) + self.bias
        return super().forward(input)


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
        layer_class=Linear,
        in_features=in_features,
        out_features=out_features,
        num_cells=list(num_cells),
        activation_class=nn.ReLU,
        norm_class=norm_class,
        norm_kwargs=norm_kwargs,
        dropout=dropout if dropout > 0 else None,
    )


def _init_output_bias(mlp: nn.Module, value: float | None) -> nn.Module:
    """``mlp`` with its output layer's bias set to ``value`` (``None``: PyTorch's default
    initialisation, the paper's), so that a fresh network predicts about ``value``."""
    if value is not None:
        last = [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.fill_(float(value))
    return mlp


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
    value_init: float | None = None,
) -> ValueOperator:
    """Critic Q_θ(s, a): MLP on ``[observation, action]``; writes ``state_action_value``.
    ``value_init``: the output bias (``None``: PyTorch's default)."""
    mlp = _mlp(obs_dim + action_dim, 1, num_cells, layer_norm, dropout)
    return ValueOperator(
        _ConcatMLP(_init_output_bias(mlp, value_init)), in_keys=[obs_key, "action"]
    )


def make_value(
    obs_dim: int,
    *,
    obs_key: str = "observation",
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
    value_init: float | None = None,
) -> ValueOperator:
    """State value V_ψ(s): MLP on ``observation``; writes ``state_value``.
    ``value_init``: the output bias (``None``: PyTorch's default)."""
    mlp = _mlp(obs_dim, 1, num_cells, layer_norm, dropout)
    return ValueOperator(_init_output_bias(mlp, value_init), in_keys=[obs_key])


def make_dmg_networks(
    obs_dim: int,
    action_dim: int,
    low: torch.Tensor | float,
    high: torch.Tensor | float,
    *,
    num_cells: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    dropout: float = 0.0,
    value_init: float | None = None,
    device: torch.device | str = "cpu",
) -> tuple[TensorDictSequential, ValueOperator, ValueOperator]:
    """Actor, critic and value network with the paper's sizes (256-256, ReLU).

    ``value_init``: the output bias of the critics and of V, so that they start near that
    value instead of near 0 (``None``: PyTorch's default initialisation, the paper's).
    With AntMaze's r − 1 rewards Q must otherwise come down from 0 to about −90, which
    takes the target critics ~``policy_freq / (τ (1 − γ))`` steps (40k at the paper's
    settings)."""
    kwargs = {"num_cells": num_cells, "layer_norm": layer_norm, "dropout": dropout}
    actor = make_actor(obs_dim, action_dim, low, high, **kwargs)
    qvalue = make_qvalue(obs_dim, action_dim, value_init=value_init, **kwargs)
    value = make_value(obs_dim, value_init=value_init, **kwargs)
    return actor.to(device), qvalue.to(device), value.to(device)


# ---------------------------------------------------------------- SAC (behaviour policies)
def make_sac_actor(
    obs_dim: int,
    act_dim: int,
    action_spec: Bounded | None = None,
    num_cells: Sequence[int] = (256, 256),
) -> ProbabilisticActor:
    """SAC actor: ReLU MLP -> (loc, scale) -> TanhNormal within the action bounds.

    ``scale = softplus(x + b) + 1e-4`` (``b`` such that the initial scale is 1, TorchRL's
    ``biased_softplus_1.0``). Reads ``observation``, writes ``action`` (sampled under
    ``ExplorationType.RANDOM``, the default, or ``tanh(loc)`` under ``DETERMINISTIC``).
    ``action_spec`` defaults to ``[-1, 1]^act_dim``, the bounds of the MuJoCo tasks.
    """
    if action_spec is None:
        action_spec = Bounded(-1.0, 1.0, shape=(act_dim,))
    net = nn.Sequential(
        MLP(
            layer_class=Linear,
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=list(num_cells),
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=["action"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        },
        default_interaction_type=InteractionType.RANDOM,
        return_log_prob=False,
    )


class TanhMeanGaussianHead(nn.Module):
    """IQL's policy head (its authors' ``NormalTanhPolicy`` with ``state_dependent_std=False,
    tanh_squash_distribution=False``): the mean is ``tanh`` of the network's output, mapped
    onto the action bounds (``[-1, 1]``: itself), the standard deviation
    ``exp(clamp(log_std, -5, 2))`` with ``log_std`` a parameter of its own (one per action
    dimension, starting at 0), not a function of the state. The Gaussian is not squashed, so
    a dataset action on the bounds (±1, a fifth of the local AntMaze actions' components)
    has a finite log-probability; under a TanhNormal it has one near ``-inf``."""

    def __init__(
        self,
        low: torch.Tensor,
        high: torch.Tensor,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.log_std = nn.Parameter(torch.zeros(low.shape[-1]))
        self.register_buffer("middle", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.middle + self.half_range * torch.tanh(x)
        scale = self.log_std.clamp(self.log_std_min, self.log_std_max).exp().expand_as(loc)
        return loc, scale


def make_iql_actor(
    obs_dim: int,
    act_dim: int,
    action_spec: Bounded | None = None,
    num_cells: Sequence[int] = (256, 256),
) -> ProbabilisticActor:
    """IQL's actor: ReLU MLP -> :class:`TanhMeanGaussianHead` -> a Gaussian (TorchRL's
    ``IndependentNormal``) with its mean inside the action bounds (``action_spec``, default
    ``[-1, 1]``). Reads
    ``observation``, writes ``action``: the mean under ``DETERMINISTIC`` (evaluation), a
    sample under ``RANDOM``, which may leave the bounds (:func:`clip_actions` clips them
    for fine-tuning's exploration, as its authors do)."""
    if action_spec is None:
        action_spec = Bounded(-1.0, 1.0, shape=(act_dim,))
    net = nn.Sequential(
        MLP(
            layer_class=Linear,
            in_features=obs_dim,
            out_features=act_dim,
            num_cells=list(num_cells),
            activation_class=nn.ReLU,
        ),
        TanhMeanGaussianHead(action_spec.space.low, action_spec.space.high),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=["action"],
        spec=action_spec,
        distribution_class=IndependentNormal,
        distribution_kwargs={"tanh_loc": False},
        default_interaction_type=InteractionType.RANDOM,
        return_log_prob=False,
    )


def make_sac_qvalue(obs_dim: int, act_dim: int, num_cells: Sequence[int] = (256, 256)):
    """Critic Q(s, a): ReLU MLP on ``[observation, action]``; writes ``state_action_value``."""
    mlp = MLP(
        layer_class=Linear,
        in_features=obs_dim + act_dim,
        out_features=1,
        num_cells=list(num_cells),
        activation_class=nn.ReLU,
    )
    return ValueOperator(mlp, in_keys=["observation", "action"])


# ---------------------------------------------------------------- acting policies
class ParamsPolicy(TensorDictModuleBase):
    """``actor`` (a functional module, as inside a TorchRL loss) acting with ``params``.

    The parameters are swapped in at every call, so it always acts with the current
    weights (nothing to copy after an update). It runs without gradients: it is for
    collecting data and evaluating, not for learning.
    """

    def __init__(self, actor, params: TensorDictBase) -> None:
        super().__init__()
        self.actor, self.params = actor, params
        self.in_keys = list(actor.in_keys)
        self.out_keys = list(actor.out_keys)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with self.params.to_module(self.actor):
            return self.actor(tensordict)


class SeedStackedPolicy(ParamsPolicy):
    """``N`` stacked actors (``params`` of batch size ``[N]``) acting in one batched env:
    its ``N * E`` copies are split in consecutive blocks of ``E``, one block per agent.

    The actor runs under ``torch.func.functional_call`` inside ``vmap``, over plain
    tensors: the shared actor module is left exactly as it was. (``to_module`` under
    ``vmap`` put back its parameters with ``requires_grad=False``: a compiled stacked
    update guards on them, and recompiled after the first evaluation, ~35 s a run.)"""

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.params.batch_size[0]
        if tensordict.batch_dims != 1 or tensordict.shape[0] % n:
            raise ValueError(
                f"{n} stacked agents need a batched env with a multiple of {n} copies, "
                f"got batch size {list(tensordict.batch_size)}."
            )
        flat = self.params.flatten_keys(".")
        names, leaves = list(flat.keys()), list(flat.values())
        in_keys = self.in_keys
        inputs = [tensordict.get(key) for key in in_keys]
        inputs = [x.reshape(n, -1, *x.shape[1:]) for x in inputs]

        def one_agent(leaves: list[torch.Tensor], inputs: list[torch.Tensor]) -> dict:
            agent_inputs = TensorDict(batch_size=inputs[0].shape[:1])
            for key, value in zip(in_keys, inputs, strict=True):
                agent_inputs.set(key, value)
            params = dict(zip(names, leaves, strict=True))
            out = torch.func.functional_call(self.actor, params, (agent_inputs,))
            return {k: out.get(k) for k in out.keys(True, True) if k not in in_keys}

        outputs = torch.vmap(one_agent, (0, 0))(leaves, inputs)
        for key, value in outputs.items():
            tensordict.set(key, value.reshape(-1, *value.shape[2:]))
        return tensordict


class RolloutActor(ParamsPolicy):
    """The actor of ``loss`` with the weights being trained (see :class:`ParamsPolicy`):
    DMG's deterministic π_φ; IQL's TanhNormal samples under ``ExplorationType.RANDOM``
    (collectors) and acts with its deterministic action under ``DETERMINISTIC``."""

    def __init__(self, loss) -> None:
        super().__init__(loss.actor_network, loss.actor_network_params)


def exploration_sigma(action_spec: Bounded, noise: float) -> float:
    """``noise · max_action`` with ``max_action`` the largest action magnitude of the spec."""
    space = action_spec.space
    max_action = torch.maximum(space.low.abs(), space.high.abs()).max()
    return float(noise * max_action)


class _Clip(nn.Module):
    def __init__(self, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return torch.clamp(action, self.low, self.high)


def clip_actions(actor: TensorDictModuleBase, action_spec: Bounded) -> TensorDictSequential:
    """``actor`` with its ``action`` clipped to the spec's bounds (an unsquashed Gaussian's
    samples, e.g. IQL's, can leave them)."""
    space = action_spec.space
    clip = TensorDictModule(_Clip(space.low, space.high), in_keys=["action"], out_keys=["action"])
    return TensorDictSequential(actor, clip)


def make_exploration_policy(
    actor: TensorDictModuleBase, action_spec: Bounded, *, noise: float = 0.1
) -> TensorDictSequential:
    """``clip(π(s) + ε, low, high)`` with ``ε ~ N(0, (noise · max_action)²)`` (spec: noise 0.1).

    TorchRL's :class:`~torchrl.modules.AdditiveGaussianModule` adds ``sigma · N(0, 1)`` (an
    absolute scale) and projects onto the bounded spec; ``sigma`` is held constant. The
    noise is only added under ``ExplorationType.RANDOM`` (collectors); evaluation with
    ``DETERMINISTIC`` exploration gets the actor's action.
    """
    sigma = exploration_sigma(action_spec, noise)
    explore = AdditiveGaussianModule(
        action_spec,
        sigma_init=sigma,
        sigma_end=sigma,
        annealing_num_steps=1,
        device=action_spec.device,
    )
    return TensorDictSequential(actor, explore)

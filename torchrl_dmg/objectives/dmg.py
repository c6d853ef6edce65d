"""DMG: Doubly Mild Generalization for offline RL, as a TorchRL ``LossModule``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictModule, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torchrl.data.tensor_specs import Bounded, Composite, TensorSpec
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    _GAMMA_LMBDA_DEPREC_ERROR,
    ValueEstimators,
    dispatch_value_estimator,
    distance_loss,
)
from torchrl.objectives.value import TD0Estimator

from torchrl_dmg.objectives.in_sample import (
    IN_SAMPLE_ESTIMATORS,
    InSampleEstimator,
    expectile_loss,
    gumbel_loss,
    sparse_loss,
)

__all__ = ["DMGLoss"]

#: out-of-bounds slack when checking dataset actions (float32 data rescaled to the bounds)
_BOUNDS_ATOL = 1e-4


#: where each parameter of a network lives: ``(dotted name, the owning submodule's
#: ``_parameters`` or ``_buffers``, attribute)``, from :func:`_param_slots`
_Slots = tuple[tuple[str, dict, str], ...]


def _param_slots(module: torch.nn.Module, params: TensorDictBase) -> _Slots:
    """The slots of ``module`` that ``params``'s leaves (a TensorDict that
    :meth:`~torchrl.objectives.LossModule.convert_to_functional` keeps) stand in for,
    resolved once."""
    slots = []
    for name in _flat_params(params):
        prefix, _, attr = name.rpartition(".")
        owner = module.get_submodule(prefix)
        for store in (owner._parameters, owner._buffers):
            if attr in store:
                slots.append((name, store, attr))
                break
        else:
            raise ValueError(
                f"{name!r} of the loss's parameters is neither a parameter nor a buffer of "
                f"{type(module).__name__}: were the network's parameters renamed after the "
                "loss was built?"
            )
    return tuple(slots)


def _with_params(
    module: torch.nn.Module,
    slots: _Slots,
    params: dict[str, torch.Tensor],
    tensordict: TensorDictBase,
) -> TensorDictBase:
    """``module(tensordict)`` run on ``params`` (its parameters under dotted names,
    :func:`_flat_params`) instead of its own: what ``with params.to_module(module):
    module(tensordict)`` and ``torch.func.functional_call`` do (each puts the tensors in
    the modules' ``_parameters`` for the call and back after it), with the slots found
    once (:func:`_param_slots`). The same numbers; under Dynamo ``to_module`` builds and
    swaps TensorDicts module by module and ``functional_call`` resolves every dotted name
    again, which was most of a compiled update's tracing (docs/benchmarks.md)."""
    saved = [store[attr] for _, store, attr in slots]
    for name, store, attr in slots:
        store[attr] = params[name]
    try:
        return module(tensordict)
    finally:
        for (_, store, attr), value in zip(slots, saved, strict=True):
            store[attr] = value


def _flat_params(params: TensorDictBase) -> dict[str, torch.Tensor]:
    """``params``'s leaves under dotted names (``"module.0.weight"``), as
    :func:`_with_params` takes them (``torch.func.functional_call``'s convention)."""
    return {
        ".".join(key) if isinstance(key, tuple) else key: value
        for key, value in params.items(include_nested=True, leaves_only=True)
    }


def _require(
    tensordict: TensorDictBase, key: NestedKey, producer: str = "its input"
) -> torch.Tensor:
    value = tensordict.get(key, None)
    if value is None:
        raise KeyError(
            f"DMGLoss reads {key!r} from {producer}, which has keys "
            f"{sorted(map(str, tensordict.keys(True, True)))}. Rename keys with loss.set_keys(...)."
        )
    return value


class DMGLoss(LossModule):
    r"""Doubly Mild Generalization (DMG) loss.

    Implements "Doubly Mild Generalization for Offline Reinforcement Learning"
    (Mao, Wang, Qu, Jiang, Ji; NeurIPS 2024), https://arxiv.org/abs/2411.07934.

    DMG learns with the operator
    :math:`TQ(s,a) = r + \gamma E_{s'}[\lambda \max_{a'\sim\tilde\beta} Q(s',a')
    + (1-\lambda)\max_{a'\sim\hat\beta} Q(s',a')]`:
    the first maximum is taken by a deterministic actor that stays close to
    high-advantage dataset actions (*mild action generalization*), the second is
    the in-sample maximum estimated by a state-value network :math:`V`
    (*mild generalization propagation*). Three losses, one per network:

    1. :meth:`value_loss` (the in-sample max): with
       :math:`u = \min_i Q_{\theta_i'}(s,a) - V(s)`, the expectile loss
       :math:`E[|\tau - 1(u<0)| u^2]` (default), Gumbel regression (XQL) or sparse
       regression (SQL). Only :math:`V` receives gradients.
    2. :meth:`qvalue_loss`: :math:`\sum_i E[(Q_{\theta_i}(s,a) - y)^2]` with
       :math:`y = r + \gamma (1 - \text{terminated}) [\lambda \min_i Q_{\theta_i'}(s', \tilde a')
       + (1-\lambda) V(s')]` and the TD3 smoothed target action
       :math:`\tilde a' = \text{clip}(\pi_{\phi'}(s') + \text{clip}(\epsilon, -c, c))`.
       Only the critics receive gradients; truncated transitions bootstrap.
    3. :meth:`actor_loss`: :math:`-E[q]/\text{sg}(E|q|) + \nu E[w \cdot
       \text{mean}_j(\pi_\phi(s)_j - a_j)^2]` with :math:`q = \min_i Q_{\theta_i}(s, \pi_\phi(s))`
       and :math:`w = \min(\exp(\alpha (\min_i Q_{\theta_i'}(s,a) - V(s))), w_{max})`.
       Only the actor receives gradients. In the paper it is applied every
       ``policy_freq`` (2) critic steps, followed by a Polyak update of the actor
       and critic targets (:class:`~torchrl.objectives.SoftUpdate`, τ=0.005);
       scheduling is the training loop's job, not the loss's.

    Like :class:`~torchrl.objectives.IQLLoss` and :class:`~torchrl.objectives.TD3BCLoss`,
    :meth:`forward` writes each sample's TD error (the largest over the critics) at
    ``tensor_keys.priority`` of its input, for a prioritized replay buffer's
    ``update_tensordict_priority``, and weighs every term by the buffer's importance
    weights (``tensor_keys.priority_weight``) when the batch carries them.

    The mixture coefficient :math:`\lambda` and the penalty coefficient :math:`\nu` are
    schedulable buffers (``loss.mixture_coef = 0.5`` writes in place, TorchRL's
    ``_schedulable_buffers``); the discount :math:`\gamma` lives in the TD(0) value
    estimator (:meth:`make_value_estimator`), as in every TorchRL loss.
    :meth:`set_coefficients` changes any of the three in place, so nothing is rebuilt or
    recompiled when the fine-tuning schedules move them.

    Args:
        actor_network (TensorDictModule): deterministic policy :math:`\pi_\phi`;
            reads the observation keys and writes ``action``. A target copy is kept.
        qvalue_network (TensorDictModule): critic :math:`Q_\theta(s,a)`; reads the
            observation keys and ``action`` and writes ``state_action_value``.
            It is duplicated ``num_qvalue_nets`` times (independently initialised)
            and called through ``vmap`` over stacked parameters. Target copies are kept.
        value_network (TensorDictModule): state value :math:`V_\psi(s)`; writes
            ``state_value``. No target copy (the spec uses the current :math:`V`).

    Keyword Args:
        action_spec (TensorSpec, optional): bounded action spec (a ``Composite`` is read
            at ``tensor_keys.action``). Exclusive with ``bounds``.
        bounds (tuple of float or Tensor, optional): finite ``(low, high)`` action bounds.
        num_qvalue_nets (int): number of critics, two or more. Defaults to ``2``.
        mixture_coef (float): :math:`\lambda`, weight of the actor's (generalised)
            maximum in the Bellman target. ``0`` is in-sample learning (IQL-like),
            ``1`` with ``penalty_coef=0`` is TD3. Defaults to ``0.25``.
        penalty_coef (float): :math:`\nu`, weight of the advantage-weighted
            behaviour-cloning penalty of the actor. Defaults to ``0.1``.
        expectile (float): :math:`\tau` of the expectile value loss. Defaults to ``0.7``.
        temperature (float): :math:`\alpha`, inverse temperature of the advantage
            weights. Defaults to ``3.0``.
        max_weight (float): :math:`w_{max}`, clip of the advantage weights. Defaults to ``3.0``.
        policy_noise (float): std :math:`\sigma` of the target-policy smoothing noise,
            in units of the action half-range. Defaults to ``0.2``.
        noise_clip (float): clip :math:`c` of that noise, same units. Defaults to ``0.5``.
        loss_function (str): distance of the critics to their target: ``"l2"`` (the
            paper's squared error, default), ``"l1"`` or ``"smooth_l1"``.
        in_sample_estimator (str): ``"expectile"`` (IQL, default), ``"xql"``
            (Gumbel regression) or ``"sql"`` (sparse). See the paper's Table 3.
        xql_beta (float): :math:`\beta` of the Gumbel loss. Defaults to ``5.0``.
        xql_clip (float): clip of :math:`z` in the Gumbel loss. Defaults to ``7.0``.
        sql_alpha (float): :math:`\alpha` of the sparse loss. Defaults to ``2.0``.
        delay_actor (bool): keep target actor parameters. Defaults to ``True``.
        delay_qvalue (bool): keep target critic parameters. Defaults to ``True``.
        separate_losses (bool): if ``True``, parameters the critics or the value network
            share with the actor are trained by the actor's loss only. Defaults to ``False``.
        reduction (str): ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses
            and diagnostics, with the input's batch size).
        deactivate_vmap (bool): loop over critics instead of ``vmap``. Defaults to ``False``.
        use_prioritized_weights (bool or "auto"): weigh the terms by
            ``tensor_keys.priority_weight`` when the input has it (``"auto"``, default),
            always (``True``) or never (``False``).
        priority_key, gamma: deprecated as in TorchRL; use ``loss.set_keys(priority=...)``
            and ``loss.make_value_estimator(gamma=...)``. γ defaults to ``0.99``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.modules import MLP, TanhModule, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_dmg.objectives import DMGLoss
        >>> n_obs, n_act, batch = 4, 2, 8
        >>> actor = TensorDictSequential(
        ...     TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[32, 32]),
        ...                      in_keys=["observation"], out_keys=["param"]),
        ...     TanhModule(in_keys=["param"], out_keys=["action"], low=-1.0, high=1.0),
        ... )
        >>> class QNet(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mlp = MLP(in_features=n_obs + n_act, out_features=1, num_cells=[32, 32])
        ...     def forward(self, obs, act):
        ...         return self.mlp(torch.cat([obs, act], -1))
        >>> qvalue = ValueOperator(QNet(), in_keys=["observation", "action"])
        >>> value = ValueOperator(MLP(in_features=n_obs, out_features=1, num_cells=[32, 32]),
        ...                       in_keys=["observation"])
        >>> loss = DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0))
        >>> _ = loss.make_value_estimator(gamma=0.99)  # TorchRL's way to set γ
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> data = TensorDict({
        ...     "observation": torch.randn(batch, n_obs),
        ...     "action": torch.rand(batch, n_act) * 2 - 1,
        ...     ("next", "observation"): torch.randn(batch, n_obs),
        ...     ("next", "reward"): torch.randn(batch, 1),
        ...     ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
        ... }, batch_size=[batch])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue', 'loss_value']
        >>> data["td_error"].shape  # for a prioritized replay buffer
        torch.Size([8])
        >>> (out["loss_value"] + out["loss_qvalue"] + out["loss_actor"]).backward()
        >>> updater.step()
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys this loss reads and writes; rename them with ``set_keys``.

        Attributes:
            action (NestedKey): dataset action, and the actor's output. Defaults to ``"action"``.
            value (NestedKey): output of the value network. Defaults to ``"state_value"``.
            state_action_value (NestedKey): output of the critics. Defaults to
                ``"state_action_value"``.
            priority (NestedKey): where :meth:`forward` writes each sample's TD error, for
                prioritized replay. Defaults to ``"td_error"``.
            priority_weight (NestedKey): the importance weights of a prioritized replay
                buffer's samples. Defaults to ``"priority_weight"``.
            reward (NestedKey): reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): done flag; never read (DMG bootstraps through truncation),
                kept so that ``set_keys`` calls shared with other TorchRL losses work.
                Defaults to ``"done"``.
            terminated (NestedKey): termination flag, read under ``"next"``; the only
                flag that stops bootstrapping. Defaults to ``"terminated"``.
        """

        action: NestedKey = "action"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    #: λ and ν: ``loss.mixture_coef = 0.5`` writes the buffer in place (γ: :attr:`gamma`)
    _schedulable_buffers = frozenset({"mixture_coef", "penalty_coef"})
    default_value_estimator = ValueEstimators.TD0
    #: the key under which the critic step hands its mixed next-state value to the TD(0)
    #: estimator (never read from or written to a user's batch)
    NEXT_VALUE_KEY = "_dmg_next_value"
    out_keys = [  # the three losses, then each one's diagnostics
        *("loss_value", "loss_qvalue", "loss_actor", "state_value"),
        *("state_action_value", "target_value"),
        *("adv_weight", "adv_weight_clipped_frac", "bc_loss", "actor_q"),
    ]

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    value_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    value_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    target_value_network_params: TensorDictParams  # a detached view: V has no target copy

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule,
        value_network: TensorDictModule,
        *,
        action_spec: TensorSpec | None = None,
        bounds: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
        num_qvalue_nets: int = 2,
        mixture_coef: float = 0.25,
        penalty_coef: float = 0.1,
        expectile: float = 0.7,
        temperature: float = 3.0,
        max_weight: float = 3.0,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        loss_function: str = "l2",
        in_sample_estimator: InSampleEstimator = "expectile",
        xql_beta: float = 5.0,
        xql_clip: float = 7.0,
        sql_alpha: float = 2.0,
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        priority_key: str | None = None,
        gamma: float | None = None,
    ) -> None:
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        reduction = "mean" if reduction is None else reduction
        super().__init__()
        self._set_deprecated_ctor_keys(priority=priority_key)
        self._check_arguments(
            in_sample_estimator, expectile, max_weight, reduction, loss_function, num_qvalue_nets
        )
        self._check_networks(actor_network, qvalue_network, value_network)
        self._in_keys = None
        self.delay_actor = delay_actor
        self.delay_qvalue = delay_qvalue
        self.deactivate_vmap = deactivate_vmap
        self.use_prioritized_weights = use_prioritized_weights
        self.num_qvalue_nets = num_qvalue_nets
        self.loss_function = loss_function
        self.in_sample_estimator = in_sample_estimator
        self.expectile = float(expectile)
        self.temperature = float(temperature)
        self.max_weight = float(max_weight)
        self.policy_noise = float(policy_noise)
        self.noise_clip = float(noise_clip)
        self.xql_beta = float(xql_beta)
        self.xql_clip = float(xql_clip)
        self.sql_alpha = float(sql_alpha)
        self.reduction = reduction
        self._convert_networks(actor_network, qvalue_network, value_network, separate_losses)
        device = next(iter(self.parameters())).device
        self._register_bounds(action_spec, bounds, device)
        # buffers, so that compiled code and captured CUDA graphs read the current value
        self.register_buffer("mixture_coef", torch.tensor(float(mixture_coef), device=device))
        self.register_buffer("penalty_coef", torch.tensor(float(penalty_coef), device=device))
        self.make_value_estimator(ValueEstimators.TD0, gamma=0.99, device=device)
        self._make_vmap()

    def _convert_networks(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule,
        value_network: TensorDictModule,
        separate_losses: bool,
    ) -> None:
        """TorchRL's functional parameters (and targets) of the three networks, and where
        each network's parameters go when it is called on them (:func:`_param_slots`)."""
        self.convert_to_functional(
            actor_network, "actor_network", create_target_params=self.delay_actor
        )
        # separate_losses: what V or Q share with the actor is held as the actor's
        # parameters (detached), so only the actor's loss trains it
        actor_params = list(actor_network.parameters()) if separate_losses else None
        self.convert_to_functional(
            value_network, "value_network", create_target_params=False, compare_against=actor_params
        )
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            self.num_qvalue_nets,
            create_target_params=self.delay_qvalue,
            compare_against=(
                actor_params + list(value_network.parameters()) if separate_losses else None
            ),
        )
        #: each network's parameter slots (its target's params fill the same ones)
        self._param_slots = {
            name: _param_slots(
                getattr(self, f"{name}_network"), getattr(self, f"{name}_network_params")
            )
            for name in ("actor", "value", "qvalue")
        }

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_arguments(
        in_sample_estimator, expectile, max_weight, reduction, loss_function, num_qvalue_nets
    ) -> None:
        if in_sample_estimator not in IN_SAMPLE_ESTIMATORS:
            raise ValueError(
                f"in_sample_estimator={in_sample_estimator!r} is not supported; "
                f"choose one of {IN_SAMPLE_ESTIMATORS}."
            )
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile (τ) must lie in (0, 1), got {expectile}.")
        if max_weight <= 0:
            raise ValueError(f"max_weight must be positive, got {max_weight}.")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(
                f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}."
            )
        if num_qvalue_nets < 2:
            raise ValueError(
                f"DMGLoss takes the minimum over two or more critics, got num_qvalue_nets="
                f"{num_qvalue_nets}; pass num_qvalue_nets=2 (the paper's)."
            )

    def _register_bounds(self, action_spec, bounds, device: torch.device) -> None:
        """``min_action``/``max_action`` (finite, low ≤ high) and ``action_scale``, the
        half-range in whose units the target noise σ and c are given."""
        low, high = self._resolve_bounds(action_spec, bounds)
        low = torch.as_tensor(low, dtype=torch.get_default_dtype(), device=device)
        high = torch.as_tensor(high, dtype=torch.get_default_dtype(), device=device)
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError(
                f"DMGLoss needs finite action bounds (its target noise is scaled by the "
                f"half-range), got low={low.tolist()}, high={high.tolist()}; pass the "
                f"bounds of the data's actions, e.g. bounds=(-1.0, 1.0)."
            )
        if (low > high).any():
            raise ValueError(f"Action bounds have low > high: low={low}, high={high}.")
        self.register_buffer("min_action", low)
        self.register_buffer("max_action", high)
        # noise σ and c are given in units of the action half-range
        self.register_buffer("action_scale", (high - low) / 2)

    def _check_networks(self, actor, qvalue, value) -> None:
        """One-line errors for wiring that would otherwise train wrongly or fail late."""
        for module in actor.modules():
            if isinstance(module, ProbabilisticTensorDictModule):
                raise TypeError(
                    f"DMGLoss needs a deterministic actor, got {type(actor).__name__} with a "
                    f"{type(module).__name__} that samples; end the actor with a TanhModule "
                    f"writing {self.tensor_keys.action!r} (or use IQLLoss for a stochastic actor)."
                )
        self._check_keys(actor, qvalue, value)

    def _check_keys(
        self, actor, qvalue, value, keys=None, fix: str = "build it with that key"
    ) -> None:
        keys = self.tensor_keys if keys is None else keys
        for network, role, key, kind in (
            (actor, "actor", keys.action, "write"),
            (qvalue, "critic", keys.action, "read"),
            (qvalue, "critic", keys.state_action_value, "write"),
            (value, "value network", keys.value, "write"),
        ):
            have = network.out_keys if kind == "write" else network.in_keys
            if key not in have:
                raise ValueError(
                    f"DMGLoss: the {role} must {kind} {key!r} but its "
                    f"{'out_keys' if kind == 'write' else 'in_keys'} are {list(have)}; {fix}."
                )

    def set_keys(self, **kwargs) -> None:
        """Rename tensordict keys (see :class:`_AcceptedKeys`); the networks must use them."""
        accepted = self._AcceptedKeys.__dataclass_fields__
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"DMGLoss has no key {', '.join(unknown)}; it accepts {', '.join(accepted)}."
            )
        renamed = dataclasses.replace(
            self.tensor_keys,
            **{k: getattr(self.default_keys(), k) if v is None else v for k, v in kwargs.items()},
        )
        self._check_keys(
            self.actor_network,
            self.qvalue_network,
            self.value_network,
            renamed,
            fix="rename it to a key the networks use",
        )
        super().set_keys(**kwargs)

    def _check_actions(self, action: torch.Tensor) -> None:
        flat = action.detach().reshape(-1, action.shape[-1])
        low, high = flat.amin(0), flat.amax(0)
        outside = (low < self.min_action - _BOUNDS_ATOL) | (high > self.max_action + _BOUNDS_ATOL)
        if bool(outside.any()):

            def fmt(t: torch.Tensor) -> str:
                return "[" + ", ".join(f"{v:.3g}" for v in t.reshape(-1).tolist()) + "]"

            raise ValueError(
                f"DMGLoss: dataset actions span low={fmt(low)}, high={fmt(high)}, outside the "
                f"loss's bounds low={fmt(self.min_action)}, high={fmt(self.max_action)}; rescale "
                f"the actions or pass the bounds the data uses."
            )

    def _resolve_bounds(self, action_spec, bounds):
        if (action_spec is None) == (bounds is None):
            raise ValueError(
                "Exactly one of 'action_spec' and 'bounds' must be given, "
                f"got action_spec={action_spec} and bounds={bounds}."
            )
        if bounds is not None:
            return bounds
        if isinstance(action_spec, Composite):
            action_spec = action_spec[self.tensor_keys.action]
        if not isinstance(action_spec, Bounded):
            raise ValueError(
                f"action_spec must be Bounded (DMG's actor is tanh-squashed), got {type(action_spec)}."
            )
        return action_spec.space.low, action_spec.space.high

    def _make_vmap(self) -> None:
        """TorchRL's hook (``set_vmap_randomness`` calls it). The critics are vmapped at
        each call (:meth:`_qvalues`) with the loss's current ``vmap_randomness``, so that
        nothing built here holds on to this loss (a deep copy's critics are its own); this
        only settles ``vmap_randomness`` from the networks, once."""
        self.vmap_randomness  # noqa: B018  (a property that caches its answer)

    # --------------------------------------------------- TorchRL's hooks: keys, γ, λ, ν
    def _estimator_keys(self) -> dict[str, NestedKey]:
        # the target bootstraps on ``terminated`` only (a truncation is no end): the
        # estimator's ``done`` is pointed at ``terminated`` too, so it reads no other flag
        return {
            "value": self.NEXT_VALUE_KEY,
            "reward": self.tensor_keys.reward,
            "done": self.tensor_keys.terminated,
            "terminated": self.tensor_keys.terminated,
        }

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(**self._estimator_keys())
        self._set_in_keys()

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams):
        """Build the critic's target estimator the TorchRL way: a
        :class:`~torchrl.objectives.value.TD0Estimator` (``loss.make_value_estimator(gamma=0.99)``).

        DMG's target is a one-step (TD(0)) target by construction, so only
        ``ValueEstimators.TD0`` is accepted. The estimator gets no value network: the
        critic step hands it the mixed next-state value
        ``λ min_i Q_θi'(s', ã') + (1 - λ) V(s')``. Once built, a new ``gamma`` is
        written into the estimator's buffer in place, so that compiled code and CUDA
        graphs that read it see the change.
        """
        if value_type not in (None, ValueEstimators.TD0, TD0Estimator):
            raise NotImplementedError(
                f"DMGLoss uses a one-step target; value estimator {value_type} is not supported."
            )
        unknown = set(hyperparams) - {"gamma", "device"}
        if unknown:
            raise TypeError(f"Unexpected hyperparameters {sorted(unknown)}; only 'gamma' is used.")
        if self._value_estimator is not None:
            if "gamma" in hyperparams:
                self.set_coefficients(gamma=hyperparams["gamma"])
            return self
        dispatch_value_estimator(
            self,
            ValueEstimators.TD0,
            supported=(ValueEstimators.TD0,),
            tensor_keys=self._estimator_keys(),
            value_network=None,
            gamma=float(hyperparams.get("gamma", 0.99)),
            device=hyperparams.get("device"),
        )
        return self

    @property
    def gamma(self) -> torch.Tensor:
        """The discount γ: the value estimator's buffer (assign a float to set it in place)."""
        return self._value_estimator.gamma

    @gamma.setter
    def gamma(self, value: float | torch.Tensor) -> None:
        self.set_coefficients(gamma=value)

    @torch.no_grad()
    def set_coefficients(
        self,
        *,
        mixture_coef: float | torch.Tensor | None = None,
        penalty_coef: float | torch.Tensor | None = None,
        gamma: float | torch.Tensor | None = None,
    ) -> None:
        """Change λ (``mixture_coef``), ν (``penalty_coef``) or γ in place, so that compiled
        functions and CUDA graphs that captured them see the new values. A tensor value
        (one per stacked seed, say) is copied in with broadcasting."""
        for name, value in (
            ("mixture_coef", mixture_coef),
            ("penalty_coef", penalty_coef),
            ("gamma", gamma),
        ):
            if value is not None:
                getattr(self, name).copy_(torch.as_tensor(value))

    def _set_in_keys(self) -> None:
        obs_keys = {
            *self.actor_network.in_keys,
            *self.value_network.in_keys,
            *(k for k in self.qvalue_network.in_keys if k != self.tensor_keys.action),
        }
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *obs_keys,
            *[("next", k) for k in obs_keys],
        ]
        self._in_keys = sorted(set(keys), key=str)

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    # ------------------------------------------------------------ networks
    def _qvalues(self, tensordict: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        """Every critic on the same inputs: shape ``[num_qvalue_nets, *batch]``."""
        td = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        flat = _flat_params(params)
        if self.deactivate_vmap:  # a loop over the critics' stacked parameters
            n = self.num_qvalue_nets
            out = torch.stack(
                [self._critic({k: v[i] for k, v in flat.items()}, td) for i in range(n)]
            )
        else:
            critics = torch.vmap(self._critic, (0, None), randomness=self.vmap_randomness)
            out = critics(flat, td)
        return out.squeeze(-1)

    def _critic(self, params: dict[str, torch.Tensor], tensordict: TensorDictBase) -> torch.Tensor:
        """One critic, ``params`` its own (flat, :func:`_flat_params`), on ``tensordict``."""
        out = _with_params(self.qvalue_network, self._param_slots["qvalue"], params, tensordict)
        return _require(out, self.tensor_keys.state_action_value, "the critic")

    def _state_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        td = tensordict.select(*self.value_network.in_keys, strict=False)
        flat = _flat_params(self.value_network_params)
        td = _with_params(self.value_network, self._param_slots["value"], flat, td)
        return _require(td, self.tensor_keys.value, "the value network").squeeze(-1)

    def _action(self, tensordict: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        td = _with_params(self.actor_network, self._param_slots["actor"], _flat_params(params), td)
        return _require(td, self.tensor_keys.action, "the actor")

    def _target_min_q(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``min_i Q_θi'(s, a)`` on dataset actions, from the target critics (no gradient)."""
        with torch.no_grad():
            return self._qvalues(tensordict, self.target_qvalue_network_params).min(0).values

    def _reduce(self, loss: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        weights = self._maybe_get_priority_weight(tensordict)
        if weights is not None:
            weights = weights.reshape(loss.shape)
        return self._reduce_loss(loss, tensordict, weights=weights)

    # ------------------------------------------------------------ losses
    # TorchRL's metaclass wraps every public ``*_loss`` method and ``forward`` in
    # exploration / recurrent-mode context managers; a training loop that compiles the
    # terms calls the bodies underneath (``type(loss).value_loss.__wrapped__``): the
    # actor is deterministic, so the exploration mode changes nothing.
    def value_loss(
        self, tensordict: TensorDictBase, target_min_q: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """In-sample maximum: regress ``V(s)`` towards ``min_i Q_θi'(s, a)``; reaches only V.

        ``target_min_q``: ``min_i Q_θi'(s, a)`` when the caller has it already (it is
        returned in the metadata, and the targets do not move within one iteration);
        computed here otherwise. Returns the loss and per-sample metadata
        (``state_value``, ``target_min_q``).
        """
        target_q = self._target_min_q(tensordict) if target_min_q is None else target_min_q
        value = self._state_value(tensordict)
        diff = target_q - value
        if self.in_sample_estimator == "expectile":
            loss = expectile_loss(diff, self.expectile)
        elif self.in_sample_estimator == "xql":
            loss = gumbel_loss(diff, self.xql_beta, self.xql_clip)
        else:
            loss = sparse_loss(diff, value, self.sql_alpha)
        loss = self._reduce(loss, tensordict)
        return loss, {"state_value": value.detach(), "target_min_q": target_q.detach()}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """Critic regression on the DMG target; reaches only the critics.

        Returns the loss and per-sample metadata: ``td_error`` (``[num_qvalue_nets,
        *batch]``, squared), ``state_action_value`` (same shape) and ``target_value``.
        """
        action = _require(tensordict, self.tensor_keys.action)
        next_td = _require(tensordict, "next")
        with torch.no_grad():
            noise = torch.randn_like(action) * self.policy_noise
            noise = noise.clamp(-self.noise_clip, self.noise_clip) * self.action_scale
            next_action = self._action(next_td, self.target_actor_network_params) + noise
            next_action = torch.maximum(
                torch.minimum(next_action, self.max_action), self.min_action
            )
            next_td = next_td.select(*self.qvalue_network.in_keys, strict=False)
            next_td = next_td.set(self.tensor_keys.action, next_action)
            next_q = self._qvalues(next_td, self.target_qvalue_network_params).min(0).values
            next_v = self._state_value(tensordict.get("next"))
            # read here for their clear missing-key error; the estimator reads them again
            reward = _require(tensordict, ("next", self.tensor_keys.reward))
            _require(tensordict, ("next", self.tensor_keys.terminated))
            mixed = self.mixture_coef * next_q + (1.0 - self.mixture_coef) * next_v
            # TD(0): r + γ (1 - terminated) · mixed, by the TorchRL estimator
            target = self._value_estimator.value_estimate(
                tensordict, next_value=mixed.view_as(reward)
            ).view_as(mixed)
        pred = self._qvalues(tensordict, self.qvalue_network_params)
        target = target.unsqueeze(0).expand_as(pred)
        loss = distance_loss(pred, target, loss_function=self.loss_function).sum(0)
        loss = self._reduce(loss, tensordict)
        return loss, {
            "td_error": (pred.detach() - target).pow(2),
            "state_action_value": pred.detach(),
            "target_value": target[0],
        }

    def actor_loss(
        self, tensordict: TensorDictBase, target_min_q: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Normalised Q maximisation plus the advantage-weighted BC penalty; reaches only
        the actor. ``target_min_q`` as in :meth:`value_loss`.

        Returns the loss and per-sample metadata (``adv_weight``,
        ``adv_weight_clipped_frac``, ``bc_loss``, ``actor_q``).
        """
        dataset_action = _require(tensordict, self.tensor_keys.action)
        with torch.no_grad():
            target_q = self._target_min_q(tensordict) if target_min_q is None else target_min_q
            adv = target_q - self._state_value(tensordict)
            raw_weight = (self.temperature * adv).exp()
            weight = raw_weight.clamp_max(self.max_weight)
        action = self._action(tensordict, self.actor_network_params)
        actor_td = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        actor_td = actor_td.set(self.tensor_keys.action, action)
        q = self._qvalues(actor_td, self.qvalue_network_params.detach()).min(0).values
        bc = (action - dataset_action).pow(2).mean(-1)
        loss = -q / q.abs().mean().detach() + self.penalty_coef * weight * bc
        loss = self._reduce(loss, tensordict)
        return loss, {
            "adv_weight": weight,
            "adv_weight_clipped_frac": (raw_weight > self.max_weight).float(),
            "bc_loss": bc.detach(),
            "actor_q": q.detach(),
        }

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All three losses on one batch, in the reference order (value, critic, actor).

        Each ``loss_*`` entry only reaches its own network, so the sum can be
        back-propagated at once; the diagnostics are detached (batch means, or per
        sample with ``reduction="none"``). Writes each sample's TD error at
        ``tensor_keys.priority`` of the input. Dataset actions outside the bounds raise.
        """
        if not torch.compiler.is_compiling():
            self._check_actions(_require(tensordict, self.tensor_keys.action))
        loss_value, md_value = self.value_loss(tensordict)
        loss_qvalue, md_qvalue = self.qvalue_loss(tensordict)
        loss_actor, md_actor = self.actor_loss(tensordict, md_value.pop("target_min_q"))
        tensordict.set(self.tensor_keys.priority, md_qvalue.pop("td_error").max(0).values)
        md_qvalue["state_action_value"] = md_qvalue["state_action_value"].mean(0)
        metadata = {**md_value, **md_qvalue, **md_actor}
        if self.reduction == "none":
            batch_size = tensordict.batch_size
        else:
            batch_size = torch.Size([])
            metadata = {k: v.mean() for k, v in metadata.items()}
        return TensorDict(
            {
                "loss_value": loss_value,
                "loss_qvalue": loss_qvalue,
                "loss_actor": loss_actor,
                **metadata,
            },
            batch_size=batch_size,
        )

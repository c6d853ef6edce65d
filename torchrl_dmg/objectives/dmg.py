"""DMG: Doubly Mild Generalization for offline RL, as a TorchRL ``LossModule``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torchrl.data.tensor_specs import Bounded, Composite, TensorSpec
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, _vmap_func

from torchrl_dmg.objectives.coefficients import ScheduledCoefficients
from torchrl_dmg.objectives.in_sample import (
    IN_SAMPLE_ESTIMATORS,
    InSampleEstimator,
    expectile_loss,
    gumbel_loss,
    sparse_loss,
)


def _require(tensordict: TensorDictBase, key: NestedKey) -> torch.Tensor:
    value = tensordict.get(key, None)
    if value is None:
        raise KeyError(
            f"DMGLoss needs the key {key!r} in its input, which has keys "
            f"{sorted(map(str, tensordict.keys(True, True)))}. Rename keys with loss.set_keys(...)."
        )
    return value


class DMGLoss(ScheduledCoefficients, LossModule):
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

    The mixture coefficient :math:`\lambda`, the penalty coefficient :math:`\nu` and
    the discount :math:`\gamma` are schedulable buffers: assign them
    (``loss.mixture_coef = 0.5``, TorchRL's ``_schedulable_buffers``) or call
    :meth:`set_coefficients` during training (the fine-tuning schedules do); either writes
    in place, so nothing is rebuilt or recompiled.

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
        bounds (tuple of float or Tensor, optional): ``(low, high)`` action bounds.
        num_qvalue_nets (int): number of critics. Defaults to ``2``.
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
        gamma (float): discount :math:`\gamma`. Defaults to ``0.99``.
        in_sample_estimator (str): ``"expectile"`` (IQL, default), ``"xql"``
            (Gumbel regression) or ``"sql"`` (sparse). See the paper's Table 3.
        xql_beta (float): :math:`\beta` of the Gumbel loss. Defaults to ``5.0``.
        xql_clip (float): clip of :math:`z` in the Gumbel loss. Defaults to ``7.0``.
        sql_alpha (float): :math:`\alpha` of the sparse loss. Defaults to ``2.0``.
        delay_actor (bool): keep target actor parameters. Defaults to ``True``.
        delay_qvalue (bool): keep target critic parameters. Defaults to ``True``.
        reduction (str): ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap (bool): loop over critics instead of ``vmap``. Defaults to ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.modules import MLP, TanhModule, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_dmg.objectives import DMGLoss
        >>> n_obs, n_act, batch = 4, 2, 8
        >>> actor = TensorDictSequential(
        ...     TensorDictModule(MLP(out_features=n_act, num_cells=[32, 32]),
        ...                      in_keys=["observation"], out_keys=["param"]),
        ...     TanhModule(in_keys=["param"], out_keys=["action"], low=-1.0, high=1.0),
        ... )
        >>> class QNet(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mlp = MLP(out_features=1, num_cells=[32, 32])
        ...     def forward(self, obs, act):
        ...         return self.mlp(torch.cat([obs, act], -1))
        >>> qvalue = ValueOperator(QNet(), in_keys=["observation", "action"])
        >>> value = ValueOperator(MLP(out_features=1, num_cells=[32, 32]), in_keys=["observation"])
        >>> loss = DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0))
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
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    #: λ and ν: ``loss.mixture_coef = 0.5`` writes the buffer in place (γ: :attr:`gamma`)
    _schedulable_buffers = frozenset({"mixture_coef", "penalty_coef"})
    default_value_estimator = ValueEstimators.TD0
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
        gamma: float = 0.99,
        in_sample_estimator: InSampleEstimator = "expectile",
        xql_beta: float = 5.0,
        xql_clip: float = 7.0,
        sql_alpha: float = 2.0,
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        reduction: str = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        super().__init__()
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
        self._in_keys = None
        self.delay_actor = delay_actor
        self.delay_qvalue = delay_qvalue
        self.deactivate_vmap = deactivate_vmap
        self.num_qvalue_nets = num_qvalue_nets
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

        self.convert_to_functional(actor_network, "actor_network", create_target_params=delay_actor)
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=delay_qvalue,
        )
        self.convert_to_functional(value_network, "value_network", create_target_params=False)

        device = next(iter(self.parameters())).device
        low, high = self._resolve_bounds(action_spec, bounds)
        low = torch.as_tensor(low, dtype=torch.get_default_dtype(), device=device)
        high = torch.as_tensor(high, dtype=torch.get_default_dtype(), device=device)
        if (low > high).any():
            raise ValueError(f"Action bounds have low > high: low={low}, high={high}.")
        self.register_buffer("min_action", low)
        self.register_buffer("max_action", high)
        # noise σ and c are given in units of the action half-range
        self.register_buffer("action_scale", (high - low) / 2)
        # Coefficients that schedules change during training: buffers, so that compiled
        # code and captured CUDA graphs read the current value instead of a constant.
        self.register_coeff_buffer("mixture_coef", float(mixture_coef), device=device)
        self.register_coeff_buffer("penalty_coef", float(penalty_coef), device=device)
        # γ lives in the TD(0) value estimator (TorchRL's convention), a buffer too
        self.make_value_estimator(ValueEstimators.TD0, gamma=float(gamma), device=device)
        self._make_vmap()

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
        self._vmap_qvalue = _vmap_func(
            self.qvalue_network,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )

    # ------------------------------------------------------------------ keys
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(**self._estimator_keys())
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        obs_keys = {
            *self.actor_network.in_keys,
            *self.value_network.in_keys,
            *(k for k in self.qvalue_network.in_keys if k != self.tensor_keys.action),
        }
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
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
        out = self._vmap_qvalue(td, params)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def _state_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        td = tensordict.select(*self.value_network.in_keys, strict=False)
        with self.value_network_params.to_module(self.value_network, preserve_module_state=False):
            td = self.value_network(td)
        return td.get(self.tensor_keys.value).squeeze(-1)

    def _action(self, tensordict: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        with params.to_module(self.actor_network, preserve_module_state=False):
            td = self.actor_network(td)
        return td.get(self.tensor_keys.action)

    # ------------------------------------------------------------ losses
    # TorchRL's LossModule metaclass wraps every public method whose name ends in "loss"
    # in exploration / recurrent-mode context managers; entered by hand, they break
    # torch.compile graphs (and recompile on every call). So each term has two public
    # doors: ``value_loss`` ... (TorchRL's convention, wrapped) and ``value_objective``
    # ... (the same body, unwrapped: compile-safe, what the training updater calls). The
    # objectives also take ``min_i Q_θi'(s, a)`` (:meth:`target_min_q`) from a caller
    # that already has it: the targets do not change within one iteration.
    def target_min_q(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``min_i Q_θi'(s, a)`` on dataset actions, from the target critics (no gradient)."""
        with torch.no_grad():
            return self._qvalues(tensordict, self.target_qvalue_network_params).min(0).values

    def value_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """In-sample maximum: regress ``V(s)`` towards ``min_i Q_θi'(s, a)``; reaches only V."""
        return self.value_objective(tensordict)

    def value_objective(
        self, tensordict: TensorDictBase, target_min_q: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """:meth:`value_loss` without TorchRL's context managers (compile-safe)."""
        target_q = self.target_min_q(tensordict) if target_min_q is None else target_min_q
        value = self._state_value(tensordict)
        diff = target_q - value
        if self.in_sample_estimator == "expectile":
            loss = expectile_loss(diff, self.expectile)
        elif self.in_sample_estimator == "xql":
            loss = gumbel_loss(diff, self.xql_beta, self.xql_clip)
        else:
            loss = sparse_loss(diff, value, self.sql_alpha)
        loss = self._reduce_loss(loss, tensordict)
        return loss, {"state_value": value.detach().mean()}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """Critic regression on the DMG target; reaches only the critics."""
        return self.qvalue_objective(tensordict)

    def qvalue_objective(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """:meth:`qvalue_loss` without TorchRL's context managers (compile-safe)."""
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
        loss = (pred - target.unsqueeze(0)).pow(2).sum(0)
        loss = self._reduce_loss(loss, tensordict)
        return loss, {
            "state_action_value": pred.detach().mean(),
            "target_value": target.mean(),
        }

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """Normalised Q maximisation plus the advantage-weighted BC penalty; reaches only the actor."""
        return self.actor_objective(tensordict)

    def actor_objective(
        self, tensordict: TensorDictBase, target_min_q: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """:meth:`actor_loss` without TorchRL's context managers (compile-safe)."""
        dataset_action = _require(tensordict, self.tensor_keys.action)
        with torch.no_grad():
            target_q = self.target_min_q(tensordict) if target_min_q is None else target_min_q
            adv = target_q - self._state_value(tensordict)
            raw_weight = (self.temperature * adv).exp()
            weight = raw_weight.clamp_max(self.max_weight)
        action = self._action(tensordict, self.actor_network_params)
        actor_td = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        actor_td = actor_td.set(self.tensor_keys.action, action)
        q = self._qvalues(actor_td, self.qvalue_network_params.detach()).min(0).values
        bc = (action - dataset_action).pow(2).mean(-1)
        loss = -q / q.abs().mean().detach() + self.penalty_coef * weight * bc
        loss = self._reduce_loss(loss, tensordict)
        return loss, {
            "adv_weight": weight.mean(),
            "adv_weight_clipped_frac": (raw_weight > self.max_weight).float().mean(),
            "bc_loss": bc.detach().mean(),
            "actor_q": q.detach().mean(),
        }

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All three losses on one batch, in the reference order (value, critic, actor).

        Each ``loss_*`` entry only reaches its own network, so the sum can be
        back-propagated at once; the diagnostics are detached.
        """
        loss_value, md_value = self.value_objective(tensordict)
        loss_qvalue, md_qvalue = self.qvalue_objective(tensordict)
        loss_actor, md_actor = self.actor_objective(tensordict)
        return TensorDict(
            {
                "loss_value": loss_value,
                "loss_qvalue": loss_qvalue,
                "loss_actor": loss_actor,
                **md_value,
                **md_qvalue,
                **md_actor,
            },
            batch_size=[],
        )

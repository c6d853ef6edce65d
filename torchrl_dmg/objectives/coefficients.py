"""DMG's schedulable coefficients: λ and ν as buffers, γ in a TorchRL TD(0) value
estimator. A mixin of :class:`~torchrl_dmg.objectives.DMGLoss`, kept apart so that the loss
module reads as the paper's three terms."""

from __future__ import annotations

import torch
from tensordict.utils import NestedKey
from torchrl.objectives.utils import ValueEstimators, dispatch_value_estimator
from torchrl.objectives.value import TD0Estimator

__all__ = ["ScheduledCoefficients"]


class ScheduledCoefficients:
    """λ (``mixture_coef``), ν (``penalty_coef``) and γ of a TorchRL ``LossModule`` that
    registers the first two as buffers and reads its Bellman target from
    ``self._value_estimator`` (built by :meth:`make_value_estimator`). Every change is
    written in place, so compiled code and CUDA graphs see it without a rebuild."""

    #: the key under which the critic step hands its mixed next-state value to the
    #: estimator (never read from or written to a user's batch)
    NEXT_VALUE_KEY = "_dmg_next_value"

    def _estimator_keys(self) -> dict[str, NestedKey]:
        # the target bootstraps on ``terminated`` only (a truncation is no end): the
        # estimator's ``done`` is pointed at ``terminated`` too, so it reads no other flag
        return {
            "value": self.NEXT_VALUE_KEY,
            "reward": self.tensor_keys.reward,
            "done": self.tensor_keys.terminated,
            "terminated": self.tensor_keys.terminated,
        }

    @torch.no_grad()
    def set_coefficients(
        self,
        *,
        mixture_coef: float | torch.Tensor | None = None,
        penalty_coef: float | torch.Tensor | None = None,
        gamma: float | torch.Tensor | None = None,
    ) -> None:
        """Change λ (``mixture_coef``), ν (``penalty_coef``) or γ in place.

        In-place so that compiled functions and CUDA graphs that captured these
        buffers see the new values without recompiling or re-capturing. A float can also
        be assigned (``loss.mixture_coef = 0.5``); a tensor value (one per stacked seed,
        say) is copied in with broadcasting.
        """
        for name, value in (
            ("mixture_coef", mixture_coef),
            ("penalty_coef", penalty_coef),
            ("gamma", gamma),
        ):
            if value is not None:
                getattr(self, name).copy_(torch.as_tensor(value))

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before γ moved into the value estimator hold it as ``gamma``
        old = state_dict.pop(prefix + "gamma", None)
        if old is not None:
            state_dict.setdefault(prefix + "_value_estimator.gamma", old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

"""Coefficient schedules of training (the actor's cosine learning rate lives in
:class:`~torchrl_dmg.training.updater.DMGUpdater`)."""

from __future__ import annotations

from dataclasses import dataclass

from torchrl_dmg.objectives import DMGLoss


@dataclass(frozen=True)
class FinetuneSchedule:
    """The online schedules of λ (``mixture_coef``) and ν (``penalty_coef``).

    With ``t`` the number of online gradient steps and ``d_t = decay ** floor(t / interval)``
    (spec: ``0.99 ** floor(t / 1000)``)::

        λ_t = λ_end - (λ_end - λ_0) · d_t        (spec: 0.25 -> 0.5)
        ν_t = ν_end + (ν_0 - ν_end) · d_t        (spec: 0.5 -> 0.005)

    A pure function of ``t``: resuming at step ``t`` only needs :meth:`apply` at ``t``.
    """

    mixture_start: float = 0.25  # λ_0
    mixture_end: float = 0.5  # λ_end
    penalty_start: float = 0.5  # ν_0
    penalty_end: float = 0.005  # ν_end
    decay: float = 0.99
    interval: int = 1000

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"schedule interval must be >= 1, got {self.interval}.")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"schedule decay must lie in (0, 1], got {self.decay}.")

    def decay_factor(self, t: int) -> float:
        """``d_t = decay ** floor(t / interval)``."""
        return self.decay ** (int(t) // self.interval)

    def mixture_coef(self, t: int) -> float:
        """λ_t."""
        return self.mixture_end - (self.mixture_end - self.mixture_start) * self.decay_factor(t)

    def penalty_coef(self, t: int) -> float:
        """ν_t."""
        return self.penalty_end + (self.penalty_start - self.penalty_end) * self.decay_factor(t)

    def coefficients(self, t: int) -> dict[str, float]:
        return {"mixture_coef": self.mixture_coef(t), "penalty_coef": self.penalty_coef(t)}

    def apply(self, loss: DMGLoss, t: int) -> dict[str, float]:
        """Write λ_t and ν_t into the loss's buffers (in place: nothing is recompiled)."""
        coefs = self.coefficients(t)
        loss.set_coefficients(**coefs)
        return coefs

    def changes_at(self, t: int) -> bool:
        """Whether ``d_t`` steps at ``t`` (the only steps where :meth:`apply` has work to do)."""
        return int(t) % self.interval == 0

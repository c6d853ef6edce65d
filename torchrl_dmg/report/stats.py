"""Statistics over seeds: mean ± std, percentile-bootstrap confidence intervals, IQM;
and over the episodes of one evaluation: the Wilson interval of a success rate.

The definitions follow rliable (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021) so numbers are comparable with papers that use it:

- **IQM**: the interquartile mean, the mean of the middle 50% of the scores:
  ``floor(n / 4)`` scores are cut from each end of the sorted scores (as
  ``scipy.stats.trim_mean(x, 0.25)``, which rliable's ``aggregate_iqm`` calls).
- **Stratified bootstrap**: each resample draws, within every task (dataset)
  independently, as many runs as that task has, with replacement; the statistic is
  computed on the pooled resample. The CI is the percentile interval (rliable's default).

We do not call rliable itself: its 1.2.0 release requires ``arch<8``, and ``arch`` 7.2
fails to import with pandas 3 (the resolver's choice with numpy 2.4 here); pinning
pandas, arch, seaborn and scipy for three small functions is not worth it. The same
numbers come from these few lines of numpy (checked against rliable with pandas<3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SeedStats",
    "bootstrap_ci",
    "iqm",
    "stratified_bootstrap_ci",
    "summarize",
    "wilson_interval",
]

BOOTSTRAP_REPS = 10_000
CONFIDENCE = 0.95
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def iqm(scores: np.ndarray | Sequence[float], axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean after cutting ``floor(n/4)`` scores from each end.

    With ``axis=None`` the scores are flattened (one number); with an axis, the IQM
    along it (used on a ``[reps, n]`` matrix of bootstrap resamples).
    """
    x = np.asarray(scores, dtype=np.float64)
    if axis is None:
        x, axis = x.reshape(-1), 0
    x = np.sort(np.moveaxis(x, axis, -1), axis=-1)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("iqm of no scores")
    cut = n // 4
    out = x[..., cut : n - cut].mean(-1)
    return float(out) if out.ndim == 0 else out


def _percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    scores: np.ndarray | Sequence[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    *,
    reps: int = BOOTSTRAP_REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` over ``scores``.

    Resamples the ``n`` scores with replacement ``reps`` times (a generator seeded with
    ``seed``: the same report twice gives the same interval) and returns the
    ``(1 ± confidence) / 2`` percentiles of the resampled statistic. ``statistic`` is
    called as ``statistic(matrix, axis=1)`` on the ``[reps, n]`` resamples.
    NaN for fewer than two scores: one seed has no spread to resample.
    """
    return stratified_bootstrap_ci([scores], statistic, reps=reps, confidence=confidence, seed=seed)


def stratified_bootstrap_ci(
    groups: Sequence[np.ndarray | Sequence[float]],
    statistic: Callable[..., np.ndarray] = iqm,
    *,
    reps: int = BOOTSTRAP_REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic`` over scores pooled from ``groups``
    (tasks), resampling runs within each group independently (rliable's stratified
    bootstrap). NaN when no group has two scores (nothing to resample)."""
    arrays = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    arrays = [a for a in arrays if a.size]
    if not arrays or max(a.size for a in arrays) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = np.concatenate(
        [a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays], axis=1
    )
    return _percentile_interval(np.asarray(statistic(resampled, axis=1)), confidence)


@dataclass(frozen=True)
class SeedStats:
    """A score over seeds: ``n`` seeds, their mean and std (``ddof=0``, as the recipes'
    summaries), and the 95% percentile-bootstrap CI of the mean (NaN for one seed)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarize(
    scores: np.ndarray | Sequence[float], *, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> SeedStats:
    """:class:`SeedStats` of the finite ``scores`` (a diverged seed's NaN is left out of
    the mean; the report counts it separately)."""
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        nan = float("nan")
        return SeedStats(0, nan, nan, nan, nan)
    low, high = bootstrap_ci(x, reps=reps, seed=seed)
    return SeedStats(int(x.size), float(x.mean()), float(x.std()), low, high)


def wilson_interval(
    successes: np.ndarray | float, episodes: int, z: float = Z_95
) -> tuple[np.ndarray, np.ndarray]:
    r"""Wilson score interval of a success rate, in percent (95% with the default ``z``).

    With :math:`\hat p = k / n` the success fraction of ``n`` episodes,

    .. math::
        \frac{\hat p + z^2/2n \pm z \sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}.

    Unlike ``mean ± std`` of 0/100 outcomes it stays inside ``[0, 100]`` and is not empty at
    0 or ``n`` successes (0 of 100: ``[0, 3.7]``). ``successes``: the count ``k`` (an array
    gives one interval per entry). Returns ``(low, high)`` in percent.
    """
    if episodes < 1:
        raise ValueError(f"a success rate needs at least one episode, got {episodes}")
    n = float(episodes)
    p = np.asarray(successes, dtype=np.float64) / n
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"successes must lie in [0, {episodes}], got {successes}")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exactly 0 at k = 0 and 1 at k = n, where the formula is only so up to rounding
    low = np.where(p == 0.0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(p == 1.0, 1.0, np.clip(centre + half, 0.0, 1.0))
    return 100.0 * low, 100.0 * high

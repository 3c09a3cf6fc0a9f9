"""Bootstrap replicates of minibatch Hessian entries (SPEC section 4).

The random variable is H_a(S) = (1/s) sum_{k in S} h[k, a], S drawn from the pool with
replacement. With C the (B, n) multinomial count matrix (each row sums to s), all B
replicates are one matrix product X = C h / s. `curvature.identities.replicates_direct`
recomputes each replicate from the network (verification only). The exact moments over S that the
replicates must reproduce are `entry_stats.predicted_moments`.

`confidence_interval` is the public interval API: it resamples *pool examples* (the independent
unit, never minibatch replicates), by the percentile or the BCa method (Efron 1987: bias
correction z0 from the share of resamples below the estimate, acceleration from the jackknife).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from ..config import ConfigError
from ..errors import UserFacingError

MIN_EXAMPLES = 20  # below this a bootstrap interval over examples is not worth reporting


class IntervalError(UserFacingError, ValueError):
    """An interval that cannot be given honestly; the message says why."""


def multinomial_counts(n: int, s: int, n_rep: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) counts: replicate b draws s pool examples with replacement."""
    return rng.multinomial(s, np.full(n, 1.0 / n), size=n_rep).astype(np.float64)


def check_pool(n: int, s: int) -> None:
    if s > n:
        raise ConfigError(f"minibatch size s={s} exceeds the pool size n={n}; raise measure.pool_size "
                         f"or lower measure.hessian_entries.minibatch")


def replicates(h: np.ndarray, counts: np.ndarray, s: int) -> np.ndarray:
    """X = C h / s: (B, K) replicates of the minibatch entries, one matrix product."""
    return counts @ h / s


def confidence_interval(data, statistic, n_resamples: int = 2000, level: float = 0.95, method: str = "bca",
                        rng: np.random.Generator | None = None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of a `level` interval for `statistic(data)` by resampling the rows of `data`.

    `data` is (n, ...) with one row per pool example; `statistic(x)` maps an (n, ...) array to a
    scalar or an array of statistics (e.g. one per entry, reduced over axis 0). method: "percentile"
    or "bca". Fewer than 20 examples is an error; where the statistic does not vary over the
    resamples (e.g. an entry that is 0 on every example) the interval is NaN, never a zero-width one.
    """
    data = np.asarray(data)
    n = data.shape[0]
    if n < MIN_EXAMPLES:
        raise IntervalError(f"a bootstrap interval over pool examples needs at least {MIN_EXAMPLES} of them, "
                            f"got {n}; raise measure.pool_size")
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = rng or np.random.default_rng()
    theta = np.asarray(statistic(data), dtype=np.float64)
    boots = np.empty((n_resamples,) + theta.shape)
    for i in range(0, n_resamples, chunk):
        for j, idx in enumerate(rng.integers(0, n, (min(chunk, n_resamples - i), n))):
            boots[i + j] = statistic(data[idx])
    alpha = (1 - level) / 2
    if method == "percentile":
        lo_q, hi_q = np.full(theta.shape, alpha), np.full(theta.shape, 1 - alpha)
    else:
        below = (boots < theta).mean(axis=0) + 0.5 * (boots == theta).mean(axis=0)
        z0 = ndtri(np.clip(below, 1e-12, 1 - 1e-12))
        jack = np.array([statistic(np.delete(data, k, axis=0)) for k in range(n)], dtype=np.float64)
        d = jack.mean(axis=0) - jack
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (d**3).sum(axis=0) / (6.0 * ((d**2).sum(axis=0)) ** 1.5)
        a = np.where(np.isfinite(a), a, 0.0)
        z_lo, z_hi = ndtri(alpha), ndtri(1 - alpha)
        lo_q = ndtr(z0 + (z0 + z_lo) / (1 - a * (z0 + z_lo)))
        hi_q = ndtr(z0 + (z0 + z_hi) / (1 - a * (z0 + z_hi)))
    flat = boots.reshape(n_resamples, -1)
    low = np.array([np.quantile(flat[:, i], q) for i, q in enumerate(np.ravel(lo_q))]).reshape(theta.shape)
    high = np.array([np.quantile(flat[:, i], q) for i, q in enumerate(np.ravel(hi_q))]).reshape(theta.shape)
    degenerate = np.ptp(flat, axis=0).reshape(theta.shape) == 0
    return np.where(degenerate, np.nan, low), np.where(degenerate, np.nan, high)

"""Coupling set size (SPEC section 4, Fig 7c) from per-entry counts of non-zero statistics.

For correlations, entry a has C_a non-zero partners among the K - 1 other sampled entries:
relative size c = mean C_a / (K - 1). For co-skewness and co-kurtosis, entry a has C_a
non-zero tuples among its `per_entry` sampled ones: c = mean C_a / per_entry. The absolute
size extrapolates c to all partners a Hessian entry has among the N^2 entries,
M = N^2 - 1 partners, C(N^2 - 1, 2) pairs, C(N^2 - 1, 3) triples, and the exponent in N is
log(c M) / log N. Uncertainties: bootstrap over entries (standard deviations and 95%
percentile intervals). The entries, not the pool examples, are resampled here: a non-zero
decision is a threshold on the pool, and a resampled pool with repeated examples would change
the tests themselves rather than the sampling of entries. When nothing is non-zero the
exponent is reported as an upper bound, from one detection among all tests.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def log_partner_tuples(n_params: int, order: int) -> float:
    """log of the number of partner tuples of an entry: C(N^2 - 1, order - 1)."""
    m = float(n_params) ** 2 - 1.0
    k = order - 1
    return float(gammaln(m + 1) - gammaln(k + 1) - gammaln(m - k + 1))


def coupling_summary(counts: np.ndarray, n_tested_per_entry: float, n_params: int, order: int,
                     rng: np.random.Generator, n_resamples: int = 200) -> dict:
    counts = np.asarray(counts, dtype=np.float64)
    K = counts.size
    log_m = log_partner_tuples(n_params, order)
    log_n = np.log(n_params)

    def summarise(c):
        rel = c.mean() / n_tested_per_entry
        return rel

    rel = summarise(counts)
    boots = np.array([summarise(counts[rng.integers(0, K, K)]) for _ in range(n_resamples)])
    upper = rel == 0
    rel_for_log = rel if rel > 0 else 1.0 / (K * n_tested_per_entry)
    exps = (np.log(np.where(boots > 0, boots, rel_for_log)) + log_m) / log_n
    q = [0.025, 0.975]
    rel_ci, exp_ci = np.quantile(boots, q), np.quantile(exps, q)
    return {
        "mean_count": float(counts.mean()),
        "relative": float(rel),
        "relative_std": float(boots.std(ddof=1)),
        "relative_ci_low": float(rel_ci[0]), "relative_ci_high": float(rel_ci[1]),
        "log10_absolute": float((np.log(rel_for_log) + log_m) / np.log(10)),
        "exponent": float((np.log(rel_for_log) + log_m) / log_n),
        "exponent_std": float(exps.std(ddof=1)),
        "exponent_ci_low": float(exp_ci[0]), "exponent_ci_high": float(exp_ci[1]),
        "exponent_is_upper_bound": bool(upper),
    }

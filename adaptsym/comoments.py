"""Co-skewness and excess co-kurtosis of Hessian entries on sampled tuples (SPEC section 4).

For entry a, `per_entry` tuples (a, b, c) or (a, b, c, d) are drawn with the partners
uniform among the other entries (distinct). With z the standardised variables,
  kappa3(a,b,c)   = E[z_a z_b z_c],
  kappa4(a,b,c,d) = E[z_a z_b z_c z_d] - rho_ab rho_cd - rho_ac rho_bd - rho_ad rho_bc.
The reported values are over the bootstrap replicates (they scale as 1/sqrt(s) and 1/s).
The non-zero test uses the n pool examples: t = mean of the pool products (less the
rho-terms) over (sample std of the products / sqrt(n)), two-sided normal, and
Benjamini-Hochberg over all sampled tuples of one order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .correlation import standardise
from .fdr import bh_reject, two_sided_p


def sample_tuples(K: int, per_entry: int, order: int, rng: np.random.Generator) -> np.ndarray:
    """(K * per_entry, order) indices; row a*per_entry + t starts with a, partners distinct and != a."""
    if K < order:
        raise ValueError(f"need at least {order} entries for tuples of order {order}, have {K}")
    a = np.repeat(np.arange(K), per_entry)
    out = np.empty((a.size, order), dtype=np.int64)
    out[:, 0] = a
    for j in range(1, order):
        col = rng.integers(0, K, a.size)
        bad = np.any(out[:, :j] == col[:, None], axis=1)
        while bad.any():  # redraw clashes
            col[bad] = rng.integers(0, K, bad.sum())
            bad = np.any(out[:, :j] == col[:, None], axis=1)
        out[:, j] = col
    return out


def _values(Z: np.ndarray, tup: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Mean over rows of Z of the tuple products, and their sample std (ddof=1)."""
    mean = np.empty(len(tup))
    sd = np.empty(len(tup))
    for i in range(0, len(tup), chunk):
        t = tup[i : i + chunk]
        prod = Z[:, t[:, 0]].copy()
        for j in range(1, t.shape[1]):
            prod *= Z[:, t[:, j]]
        mean[i : i + chunk] = prod.mean(axis=0)
        sd[i : i + chunk] = prod.std(axis=0, ddof=1)
    return mean, sd


def _rho_terms(Z: np.ndarray, t: np.ndarray) -> np.ndarray:
    r = lambda i, j: np.einsum("bk,bk->k", Z[:, t[:, i]], Z[:, t[:, j]]) / Z.shape[0]
    return r(0, 1) * r(2, 3) + r(0, 2) * r(1, 3) + r(0, 3) * r(1, 2)


def tuple_statistics(Zx: np.ndarray, Zh: np.ndarray, tup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bootstrap value, pool value, pool t-statistic) of each tuple; Zx, Zh standardised columns."""
    order, n = tup.shape[1], Zh.shape[0]
    value, _ = _values(Zx, tup)
    pool, sd = _values(Zh, tup)
    if order == 4:
        for i in range(0, len(tup), 4096):
            t = tup[i : i + 4096]
            value[i : i + 4096] -= _rho_terms(Zx, t)
            pool[i : i + 4096] -= _rho_terms(Zh, t)
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(sd > 0, pool / (sd / np.sqrt(n)), 0.0)
    return value, pool, tstat


def decide(value: np.ndarray, tstat: np.ndarray, method: str, q: float, threshold: float) -> np.ndarray:
    """Non-zero decisions: BH over all tuples at level q, or |value| >= threshold."""
    return bh_reject(two_sided_p(tstat), q) if method == "fdr" else np.abs(value) >= threshold


@dataclass
class CoMomentResult:
    order: int
    tuples: np.ndarray  # (T, order)
    value: np.ndarray  # bootstrap estimate per tuple
    pool_value: np.ndarray  # the same on the pool (scale s times larger, t-stat from it)
    tstat: np.ndarray
    nonzero: np.ndarray  # decision per tuple
    counts: np.ndarray  # per entry: non-zero tuples among its per_entry


def comoment(X: np.ndarray, h: np.ndarray, order: int, per_entry: int, rng: np.random.Generator,
             method: str = "fdr", q: float = 0.05, threshold: float = 0.1) -> CoMomentResult:
    """Co-skewness (order 3) or excess co-kurtosis (order 4) of the columns of X (B, K) and h (n, K).

    The in-memory reference of what the measurement does in blocks of tuples (same functions)."""
    if order not in (3, 4):
        raise ValueError("order must be 3 (co-skewness) or 4 (co-kurtosis)")
    K = X.shape[1]
    tup = sample_tuples(K, per_entry, order, rng)
    value, pool, tstat = tuple_statistics(standardise(X), standardise(h), tup)
    nonzero = decide(value, tstat, method, q, threshold)
    return CoMomentResult(order, tup, value, pool, tstat, nonzero, nonzero.reshape(K, per_entry).sum(axis=1))

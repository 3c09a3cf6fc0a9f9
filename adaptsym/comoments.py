"""Co-skewness and excess co-kurtosis of Hessian entries on sampled tuples (SPEC section 4).

For entry a, `per_entry` tuples (a, b, c) or (a, b, c, d) are drawn with the partners
uniform among the other entries (distinct). With z the standardised variables,
  kappa3(a,b,c)   = E[z_a z_b z_c],
  kappa4(a,b,c,d) = E[z_a z_b z_c z_d] - rho_ab rho_cd - rho_ac rho_bd - rho_ad rho_bc.
The reported values are over the bootstrap replicates (they scale as 1/sqrt(s) and 1/s).
The non-zero test uses the n pool examples: the studentised sum T = sum x / sqrt(sum x^2)
(`nonzero.py`) of the per-example products, corrected for the estimated means and rho-terms
(`influence`), and Benjamini-Hochberg over all sampled tuples of one order. The number of pool
examples on which every member of a tuple is non-zero is kept per tuple (`tuple_active`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .correlation import standardise
from .fdr import bh_reject, pvalue
from .nonzero import self_normalised


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


PAIRINGS = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))


def influence(Z: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-row products x (n, T) of each tuple whose mean is the sample co-moment, corrected to first
    order for the quantities estimated from the same rows (delta method), so that their spread
    includes that estimation error:
      order 3: x = z_a z_b z_c - (rho_bc z_a + rho_ac z_b + rho_ab z_c)        (the centring);
      order 4: x = z_a z_b z_c z_d - sum over the 3 pairings (ab, cd) of
               (rho_cd z_a z_b + rho_ab z_c z_d - rho_ab rho_cd)              (the rho-terms).
    Treating the rho-terms as known instead is invalid under zero inflation: on the n - A inactive
    rows every product is then the same constant -rho_ab rho_cd, and n identical terms look like
    overwhelming evidence (`docs/statistics.md`)."""
    cols = [Z[:, t[:, i]] for i in range(t.shape[1])]
    if t.shape[1] == 3:
        za, zb, zc = cols
        r = lambda u, v: np.einsum("kt,kt->t", u, v) / Z.shape[0]
        return za * zb * zc - (r(zb, zc) * za + r(za, zc) * zb + r(za, zb) * zc)
    P = {(i, j): cols[i] * cols[j] for i in range(4) for j in range(i + 1, 4)}
    rho = {key: v.mean(axis=0) for key, v in P.items()}
    x = P[(0, 1)] * P[(2, 3)]
    for ab, cd in PAIRINGS:
        x -= rho[cd] * P[ab] + rho[ab] * P[cd] - rho[ab] * rho[cd]
    return x


def _values(Z: np.ndarray, tup: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per tuple, the mean of its influence-corrected products (the co-moment) and of their squares."""
    mean = np.empty(len(tup))
    msq = np.empty(len(tup))
    for i in range(0, len(tup), chunk):
        x = influence(Z, tup[i : i + chunk])
        mean[i : i + chunk] = x.mean(axis=0)
        msq[i : i + chunk] = np.square(x).mean(axis=0)
    return mean, msq


def tuple_active(active: np.ndarray, tup: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per tuple, the number of rows of the boolean (n, *) `active` where every member is True."""
    out = np.empty(len(tup), dtype=np.int64)
    for i in range(0, len(tup), chunk):
        out[i : i + chunk] = np.all(active[:, tup[i : i + chunk]], axis=2).sum(axis=0)
    return out


def tuple_statistics(Zx: np.ndarray, Zh: np.ndarray, tup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bootstrap value, pool value, pool studentised sum T) of each tuple; Zx, Zh standardised columns.

    T = sum_k x_k / sqrt(sum_k x_k^2) over the pool rows, x the influence-corrected products."""
    value, _ = _values(Zx, tup)
    pool, msq = _values(Zh, tup)
    return value, pool, self_normalised(np.sqrt(Zh.shape[0]) * pool, msq)


def decide(value: np.ndarray, tstat: np.ndarray, method: str, q: float, threshold: float,
           pvalue_kind: str = "normal", fdr: str = "bh") -> np.ndarray:
    """Non-zero decisions: BH (or BY) over all tuples at level q, or |value| >= threshold."""
    if method == "fdr":
        return bh_reject(pvalue(tstat, pvalue_kind), q, fdr)
    return np.abs(value) >= threshold


@dataclass
class CoMomentResult:
    order: int
    tuples: np.ndarray  # (T, order)
    value: np.ndarray  # bootstrap estimate per tuple
    pool_value: np.ndarray  # the same on the pool (scale s times larger, t-stat from it)
    tstat: np.ndarray  # studentised sum T on the pool
    active: np.ndarray  # pool examples on which every member is non-zero
    nonzero: np.ndarray  # decision per tuple
    counts: np.ndarray  # per entry: non-zero tuples among its per_entry


def comoment(X: np.ndarray, h: np.ndarray, order: int, per_entry: int, rng: np.random.Generator,
             method: str = "fdr", q: float = 0.05, threshold: float = 0.1, pvalue_kind: str = "normal",
             fdr: str = "bh") -> CoMomentResult:
    """Co-skewness (order 3) or excess co-kurtosis (order 4) of the columns of X (B, K) and h (n, K).

    The in-memory reference of what the measurement does in blocks of tuples (same functions)."""
    if order not in (3, 4):
        raise ValueError("order must be 3 (co-skewness) or 4 (co-kurtosis)")
    K = X.shape[1]
    tup = sample_tuples(K, per_entry, order, rng)
    value, pool, tstat = tuple_statistics(standardise(X), standardise(h), tup)
    nonzero = decide(value, tstat, method, q, threshold, pvalue_kind, fdr)
    return CoMomentResult(order, tup, value, pool, tstat, tuple_active(h != 0, tup), nonzero,
                          nonzero.reshape(K, per_entry).sum(axis=1))

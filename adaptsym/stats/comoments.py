"""Co-skewness and excess co-kurtosis of Hessian entries on sampled tuples (SPEC section 4).

For entry a, `per_entry` tuples (a, b, c) or (a, b, c, d) are drawn with the partners
uniform among the other entries (distinct). With z the standardised variables,
  kappa3(a,b,c)   = E[z_a z_b z_c],
  kappa4(a,b,c,d) = E[z_a z_b z_c z_d] - rho_ab rho_cd - rho_ac rho_bd - rho_ad rho_bc.
The marginal values are over the bootstrap replicates (they scale as 1/sqrt(s) and 1/s).
The non-zero test uses the rows of one reading (`nonzero.READINGS`): the n pool examples
(marginal) or the A active ones (active), the studentised sum T = sum x / sqrt(sum x^2)
(`nonzero.py`) of the per-example products, corrected for the estimated means and rho-terms
(`influence`), and Benjamini-Hochberg over all sampled tuples of one order. The active reading's
value is the exact co-moment of a minibatch of s active examples (the per-example one over the
active rows, times s^(-1/2) or s^(-1)). The number of pool examples on which every member of a
tuple is non-zero is kept per tuple (`rows_all_nonzero`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .correlation import standardise, standardise_over
from .fdr import bh_reject, pvalue
from .nonzero import detectability, mild, self_normalised


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


def rows_all_nonzero(nonzero: np.ndarray, tup: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per tuple, the number of rows of the boolean (n, *) `nonzero` where every member is True."""
    out = np.empty(len(tup), dtype=np.int64)
    for i in range(0, len(tup), chunk):
        out[i : i + chunk] = np.all(nonzero[:, tup[i : i + chunk]], axis=2).sum(axis=0)
    return out


def pool_statistics(Z: np.ndarray, tup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(co-moment, studentised sum T) of each tuple over the rows of Z (columns standardised over
    those same rows): T = sum_k x_k / sqrt(sum_k x_k^2), x the influence-corrected products."""
    value, msq = _values(Z, tup)
    return value, self_normalised(np.sqrt(Z.shape[0]) * value, msq)


def tuple_statistics(Zx: np.ndarray, Zh: np.ndarray, tup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bootstrap value, pool value, pool studentised sum T) of each tuple; Zx, Zh standardised columns."""
    value, _ = _values(Zx, tup)
    return (value,) + pool_statistics(Zh, tup)


def at_minibatch(per_example: np.ndarray, order: int, s: int) -> np.ndarray:
    """A standardised co-moment of per-example entries scaled to a minibatch mean of s of them:
    order 3 (co-skewness) by s^(-1/2), order 4 (excess co-kurtosis) by s^(-1) (SPEC section 4)."""
    return np.asarray(per_example) / float(s) ** ((order - 2) / 2)


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
    value: np.ndarray  # the reading's value per tuple (marginal: bootstrap; active: exact at s)
    pool_value: np.ndarray  # per-example co-moment over the reading's rows (t-stat from it)
    tstat: np.ndarray  # studentised sum T over the reading's rows
    n_nonzero: np.ndarray  # pool examples on which every member is non-zero
    nonzero: np.ndarray  # decision per tuple
    counts: np.ndarray  # per entry: non-zero tuples among its per_entry


def comoment(X: np.ndarray, h: np.ndarray, order: int, per_entry: int, rng: np.random.Generator,
             method: str = "fdr", q: float = 0.05, threshold: float = 0.1, pvalue_kind: str = "normal",
             fdr: str = "bh", rows: np.ndarray | None = None, s: int | None = None) -> CoMomentResult:
    """Co-skewness (order 3) or excess co-kurtosis (order 4) of the columns of X (B, K) and h (n, K).

    rows=None: the marginal reading (bootstrap values, test over the n pool rows); a boolean mask
    of the active rows: the active reading (test and value over those rows, the value scaled to
    minibatch size s). The in-memory reference of what the measurement does in blocks of tuples."""
    if order not in (3, 4):
        raise ValueError("order must be 3 (co-skewness) or 4 (co-kurtosis)")
    K = X.shape[1]
    tup = sample_tuples(K, per_entry, order, rng)
    if rows is None:
        value, pool, tstat = tuple_statistics(standardise(X), standardise(h), tup)
    else:
        pool, tstat = pool_statistics(standardise_over(h, rows), tup)
        value = at_minibatch(pool, order, s or 1)
    nonzero = decide(value, tstat, method, q, threshold, pvalue_kind, fdr)
    return CoMomentResult(order, tup, value, pool, tstat, rows_all_nonzero(h != 0, tup), nonzero,
                          nonzero.reshape(K, per_entry).sum(axis=1))


def reading_comoments(X: np.ndarray, h: np.ndarray, order: int, per_entry: int, rng: np.random.Generator,
                      active: np.ndarray, q: float = 0.05, s: int = 1, mild_skew: float = 0.5,
                      pvalue_kind: str = "normal", fdr: str = "bh") -> dict:
    """One co-moment order's decisions in both readings on the same sampled tuples, as the
    measurement makes them: {reading: (nonzero per tuple, detectability)}, plus "tuples". Active:
    the test over the active rows at q, untestable when it finds nothing below its limit; marginal:
    the union of that test and the pool test among tuples of mildly skewed entries (under the strict
    limit), each at q / 2."""
    from .correlation import union_detectability

    active = np.asarray(active, dtype=bool)
    res_a = comoment(X, h, order, per_entry, rng, q=q, pvalue_kind=pvalue_kind, fdr=fdr, rows=active, s=s)
    value_m, _, tstat_m = tuple_statistics(standardise(X), standardise(h), res_a.tuples)
    A = int(active.sum())

    def thr(nonzero, tstat):
        return float(np.abs(tstat[nonzero]).min()) if nonzero.any() else np.inf

    out = {}
    for level in (q, q / 2):  # q for the active reading; q / 2 for each half of the marginal union
        d = decide(res_a.value, res_a.tstat, "fdr", level, 0.0, pvalue_kind, fdr)
        det = detectability(A, len(res_a.tuples), level, pvalue_kind, fdr, int(d.sum()), thr(d, res_a.tstat), order)
        out[level] = (d & (not det.untestable), det)
    calm = np.all(mild(standardise_over(h, active), mild_skew)[res_a.tuples], axis=1)
    dec_p = np.zeros(len(calm), dtype=bool)
    if calm.any():
        dec_p[calm] = decide(value_m[calm], tstat_m[calm], "fdr", q / 2, 0.0, pvalue_kind, fdr)
    det_p = detectability(A, int(calm.sum()), q / 2, pvalue_kind, fdr, int(dec_p.sum()), thr(dec_p, tstat_m), order,
                          strict=True)
    dec_p &= not det_p.untestable
    return {"tuples": res_a.tuples, "active": out[q],
            "marginal": (out[q / 2][0] | dec_p, union_detectability(out[q / 2][1], det_p))}

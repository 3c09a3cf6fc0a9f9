"""Correlations between Hessian entries, blockwise and streaming (SPEC section 4, Figs 6b/6c, 7c).

rho_ab is the correlation of H_a(S) and H_b(S). Over S it equals exactly the correlation of
h[:, a] and h[:, b] over the pool (covariances all scale as 1/s), which is the B -> infinity
limit of the bootstrap estimate; the tests are made on the pool (n independent examples, never
the B replicates). The K x K matrix is never held: pool columns are standardised once, and
(block x block) tiles are computed, tested and dropped. The non-zero test is the studentised
product sum T_ab = sum_k z_ka z_kb / sqrt(sum_k (z_ka z_kb)^2) (`nonzero.py`: valid under zero
inflation and heavy tails, where Fisher's z with n - 3 is not), and Benjamini-Hochberg over all
K (K-1) / 2 pairs uses `StreamingBH` (two passes over the tiles). The coupling count
C_a = #{b != a: rho_ab != 0}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fdr import StreamingBH, bh_reject
from .fdr import pvalue as pvalue_of
from .nonzero import Detectability, detectability, differences, mild, pair_rows, product_t


def standardise(X: np.ndarray) -> np.ndarray:
    """Columns with zero mean and unit (population) variance."""
    Z = X - X.mean(axis=0)
    return Z / Z.std(axis=0)


def standardise_over(X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The rows `rows` (a boolean mask; None: all) of X, each column standardised over those rows
    only: the active reading's columns (`nonzero.READINGS`). A column constant there is all 0, so
    its products, and its test statistics, are 0."""
    Xr = X if rows is None else X[np.asarray(rows, dtype=bool)]
    Z = Xr - Xr.mean(axis=0)
    sd = Z.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, Z / np.where(sd > 0, sd, 1.0), 0.0)


def tiles(K: int, block: int):
    """Upper-triangle tiles (i0, i1, j0, j1) covering all pairs a < b."""
    for i0 in range(0, K, block):
        for j0 in range(i0, K, block):
            yield i0, min(i0 + block, K), j0, min(j0 + block, K)


def pair_mask(shape: tuple[int, int], diagonal: bool) -> np.ndarray:
    """The pairs a < b of a tile (a diagonal tile holds each pair twice and a = b once)."""
    mask = np.ones(shape, dtype=bool)
    return np.triu(mask, k=1) if diagonal else mask


def tile_pairs(Z: np.ndarray, i0, i1, j0, j1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlations, |T| statistics and the mask of the pairs a < b of one tile."""
    R, T = product_t(Z[:, i0:i1], Z[:, j0:j1])
    return R, np.abs(T), pair_mask(R.shape, i0 == j0)


@dataclass
class CorrelationResult:
    counts: np.ndarray  # C_a per entry
    n_tests: int
    n_nonzero: int
    threshold: float  # |T| threshold (fdr) or |rho| threshold
    mean_abs: float  # mean |rho| over all pairs


def coupling_counts(Z: np.ndarray, method: str = "fdr", q: float = 0.05, threshold: float = 0.1,
                    block: int = 1024, pvalue: str = "normal", fdr: str = "bh") -> CorrelationResult:
    """Per-entry counts of non-zero correlations, streaming over tiles of the standardised pool
    columns Z (n, K).

    The in-memory reference: the measurement itself runs the same tiles from zarr on an executor
    (`hessian_entries.correlations`), and the tests check it against this function, which they
    check against scipy's BH on the full matrix."""
    K = Z.shape[1]
    counts = np.zeros(K, dtype=np.int64)
    abs_sum, m = 0.0, 0

    def add(i0, j0, sel):
        r, c = np.nonzero(sel)
        np.add.at(counts, i0 + r, 1)
        np.add.at(counts, j0 + c, 1)

    if method == "threshold":
        for i0, i1, j0, j1 in tiles(K, block):
            R, _, mask = tile_pairs(Z, i0, i1, j0, j1)
            abs_sum += np.abs(R[mask]).sum()
            m += int(mask.sum())
            add(i0, j0, mask & (np.abs(R) >= threshold))
        return CorrelationResult(counts, m, int(counts.sum() // 2), threshold, abs_sum / max(m, 1))

    bh = StreamingBH(q, pvalue=pvalue, method=fdr)
    for i0, i1, j0, j1 in tiles(K, block):  # pass 1: histogram of |T|
        R, absT, mask = tile_pairs(Z, i0, i1, j0, j1)
        bh.observe(absT[mask])
        abs_sum += np.abs(R[mask]).sum()
    bh.plan()
    undecided = []
    for i0, i1, j0, j1 in tiles(K, block):  # pass 2: sure rejections counted, undecided kept
        _, absT, mask = tile_pairs(Z, i0, i1, j0, j1)
        az = np.where(mask, absT, -1.0)
        sure, und = bh.split(az)
        add(i0, j0, sure & mask)
        r, c = np.nonzero(und & mask)
        if r.size:
            bh.keep(az[r, c])
            undecided.append((i0 + r, j0 + c, az[r, c]))
    z_star = bh.resolve()
    for a, b, v in undecided:
        hit = v >= z_star
        np.add.at(counts, a[hit], 1)
        np.add.at(counts, b[hit], 1)
    m = bh.m
    return CorrelationResult(counts, m, int(counts.sum() // 2), z_star, abs_sum / max(m, 1))


@dataclass
class ReadingDecision:
    """The service's correlation decisions in one reading, pair by pair (a < b, in
    `np.triu_indices` order), after the untestable rule, with the reading's detectability."""

    declared: np.ndarray  # bool per pair
    detectability: Detectability
    n_tests: int

    @property
    def counted(self) -> int:
        return int(self.declared.sum())

    def counts(self, K: int) -> np.ndarray:
        """Per entry: its declared partners (C_a)."""
        a, b = np.triu_indices(K, 1)
        return np.bincount(a[self.declared], minlength=K) + np.bincount(b[self.declared], minlength=K)


def _bh_family(T: np.ndarray, tested: np.ndarray, q: float, pvalue: str, fdr: str) -> tuple[np.ndarray, float]:
    """BH over the tested pairs of |T|: (declared, threshold on |T|; inf when none)."""
    out = np.zeros(T.shape, dtype=bool)
    if tested.any():
        out[tested] = bh_reject(pvalue_of(T[tested], pvalue), q, fdr)
    return out, float(T[out].min()) if out.any() else np.inf


def reading_decisions(h: np.ndarray, active: np.ndarray, q: float = 0.05, pvalue: str = "normal", fdr: str = "bh",
                      active_test: str = "pairs", mild_skew: float = 0.5,
                      pairs: tuple[np.ndarray, np.ndarray] | None = None,
                      rng: np.random.Generator | None = None) -> dict[str, ReadingDecision]:
    """Correlation decisions of the columns of h (n, K) in both readings, as the measurement makes
    them (`hessian_entries.correlations`), in memory:
    - active: the active reading's test over the rows `active` (boolean mask): 'pairs', the
      studentised sum of products of differences of a random pairing of the active examples
      (`pairs`, or drawn from `rng`), or 'studentised', products of the entries standardised over
      the active examples; BH over every pair; untestable when it finds nothing below its limit;
    - marginal: the union of two families, each at level q / 2: the active reading's test, and the
      pool test (entries standardised over all n rows) among the pairs of entries whose values over
      the active examples have |skewness| <= mild_skew, under the strict limit."""
    active = np.asarray(active, dtype=bool)
    K, A = h.shape[1], int(active.sum())
    iu = np.triu_indices(K, 1)
    Za = standardise_over(h, active)
    if active_test == "pairs":
        pairs = pairs if pairs is not None else pair_rows(np.nonzero(active)[0], rng or np.random.default_rng(0))
        Ta = np.abs(product_t(differences(Za, pairs), differences(Za, pairs))[1])[iu]
    else:
        Ta = np.abs(product_t(Za, Za)[1])[iu]
    everything = np.ones(len(Ta), dtype=bool)
    dec, det = {}, {}
    for level in (q, q / 2):  # q for the active reading; q / 2 for each half of the marginal union
        d, t = _bh_family(Ta, everything, level, pvalue, fdr)
        det[level] = detectability(A, len(Ta), level, pvalue, fdr, int(d.sum()), t, 2, paired=active_test == "pairs")
        dec[level] = d & (not det[level].untestable)
    calm = mild(Za, mild_skew)
    tested = np.logical_and.outer(calm, calm)[iu]
    Zm = standardise_over(h)
    Tm = np.abs(product_t(Zm, Zm)[1])[iu]
    dec_p, t_p = _bh_family(Tm, tested, q / 2, pvalue, fdr)
    det_p = detectability(A, int(tested.sum()), q / 2, pvalue, fdr, int(dec_p.sum()), t_p, 2, strict=True)
    dec_p &= not det_p.untestable
    return {"active": ReadingDecision(dec[q], det[q], len(Ta)),
            "marginal": ReadingDecision(dec[q / 2] | dec_p, union_detectability(det[q / 2], det_p), len(Ta))}


def union_detectability(active: Detectability, pool: Detectability) -> Detectability:
    """The marginal reading's detectability: testable when either of its parts is (the active
    reading's test, or the pool test among mild entries); its threshold and smallest detectable
    |rho| those of the part that sees more."""
    if active.untestable and pool.untestable:
        return Detectability(active.n_active, active.m_tests, pool.threshold, pool.max_abs_t, np.nan, True,
                             f"{active.reason}; and among mildly skewed entries {pool.reason}", active.order)
    best = pool if not pool.untestable and (active.untestable or not pool.min_detectable_rho > active.min_detectable_rho) \
        else active
    return Detectability(active.n_active, active.m_tests, best.threshold, pool.max_abs_t, best.min_detectable_rho,
                         False, "", active.order)

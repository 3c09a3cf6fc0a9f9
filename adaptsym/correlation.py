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

from .fdr import StreamingBH
from .nonzero import product_t


def standardise(X: np.ndarray) -> np.ndarray:
    """Columns with zero mean and unit (population) variance."""
    Z = X - X.mean(axis=0)
    return Z / Z.std(axis=0)


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

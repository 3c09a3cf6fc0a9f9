"""Multiple testing: Benjamini-Hochberg, in memory and streaming (SPEC section 4).

All our tests are two-sided normal tests, so the p-value is a decreasing function of |z|
and BH amounts to rejecting every test with |z| >= z*. `StreamingBH` finds z* exactly
without holding all statistics: pass 1 histograms |z|; the bins that can hold z* are then
known, and pass 2 keeps only the statistics that fall in them.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr


def two_sided_p(z) -> np.ndarray:
    z = np.abs(np.asarray(z, dtype=np.float64))
    return np.exp(np.log(2.0) + log_ndtr(-z))


def bh_reject(pvals, q: float) -> np.ndarray:
    """Boolean mask of the hypotheses BH rejects at level q (exact, in memory)."""
    p = np.asarray(pvals, dtype=np.float64).ravel()
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    ok = p[order] <= q * np.arange(1, m + 1) / m
    reject = np.zeros(m, dtype=bool)
    if ok.any():
        k = np.nonzero(ok)[0].max()
        reject[order[: k + 1]] = True
    return reject.reshape(np.shape(pvals))


class StreamingBH:
    """Exact BH on |z| statistics that arrive in blocks, in two passes.

    z* = min{v observed : p(v) <= q N(>=v) / m}; BH rejects exactly the tests with |z| >= z*.
    Pass 1, `observe(absz)`: a histogram of |z| (bin b = [e_b, e_b+1), the last one open).
    A bin is *sure* if its smallest value passes (p(e_b) <= q n_ge[b] / m) and *maybe* if
    some value could (p(e_b+1) < q n_ge[b] / m). z* lies in [e_lo, e_hi) with lo the first
    maybe bin and hi the edge above the first sure bin. `plan()` fixes that window.
    Pass 2, `split(absz)`: values >= e_hi are rejected for sure; values in the window are
    undecided and handed to `keep`. `resolve()` then returns the exact z*.
    """

    def __init__(self, q: float, zmax: float = 40.0, bins: int = 40000):
        self.q = q
        self.edges = np.linspace(0.0, zmax, bins + 1)  # bin b starts at edges[b]
        self.hist = np.zeros(bins + 1, dtype=np.int64)
        self.undecided: list[np.ndarray] = []
        self.z_low = self.z_high = np.inf
        self.n_high = 0

    @property
    def m(self) -> int:
        return int(self.hist.sum())

    def histogram(self, absz) -> np.ndarray:
        """Counts of a block of |z| on this object's bins (what `observe` adds; workers send these)."""
        idx = np.searchsorted(self.edges, np.asarray(absz, dtype=np.float64).ravel(), side="right") - 1
        return np.bincount(idx, minlength=len(self.hist))

    def observe(self, absz) -> None:
        self.hist += self.histogram(absz)

    def plan(self) -> None:
        m = max(self.m, 1)
        n_ge = np.cumsum(self.hist[::-1])[::-1]
        upper = np.append(self.edges[1:], np.inf)
        nonempty = self.hist > 0
        sure = nonempty & (two_sided_p(self.edges) <= self.q * n_ge / m)
        maybe = nonempty & (two_sided_p(upper) < self.q * n_ge / m)
        if not maybe.any():
            self.z_low = self.z_high = np.inf
            self.n_high = 0
            return
        self.z_low = float(self.edges[np.nonzero(maybe)[0].min()])
        if sure.any():
            b = int(np.nonzero(sure)[0].min())
            self.z_high = float(upper[b])
            self.n_high = int(n_ge[b + 1]) if b + 1 < len(n_ge) else 0
        else:
            self.z_high, self.n_high = np.inf, 0

    def split(self, absz) -> tuple[np.ndarray, np.ndarray]:
        """(surely rejected, undecided) masks for a block of |z|, after `plan`."""
        absz = np.asarray(absz)
        sure = absz >= self.z_high
        return sure, (absz >= self.z_low) & ~sure

    def keep(self, values) -> None:
        self.undecided.append(np.asarray(values, dtype=np.float64).ravel())

    def resolve(self) -> float:
        """The exact BH threshold z* on |z| (inf: nothing is rejected)."""
        vals = np.sort(np.concatenate(self.undecided))[::-1] if self.undecided else np.zeros(0)
        counts = self.n_high + np.arange(1, len(vals) + 1)
        ok = two_sided_p(vals) <= self.q * counts / max(self.m, 1)
        return float(vals[np.nonzero(ok)[0].max()]) if ok.any() else np.inf

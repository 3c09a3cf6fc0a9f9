"""Multiple testing: Benjamini-Hochberg (or Benjamini-Yekutieli), in memory and streaming (SPEC section 4).

Every non-zero test of the service reduces to a statistic |T| whose p-value decreases in |T|, so
BH amounts to rejecting every test with |T| >= T*. `StreamingBH` finds T* exactly without holding
all statistics: pass 1 histograms |T|; the bins that can hold T* are then known, and pass 2 keeps
only the statistics that fall in them.

p-values of a studentised product sum T (`nonzero.py`), `pvalue`:
- "normal": 2 (1 - Phi(|T|)), the self-normalised central limit (asymptotically exact);
- "bound": min(1, c 2 (1 - Phi(|T|))) with c = 1 / (4 (1 - Phi(sqrt 2))) = 3.18, valid for every
  number of examples when the products are symmetric given their magnitudes (Bentkus and
  Dzindzalieta 2015: a Rademacher sum with unit square sum has tails at most c times Gaussian).
`fdr`: "bh" (Benjamini-Hochberg 1995) or "by" (Benjamini-Yekutieli 2001: q / sum_{i<=m} 1/i, valid
under any dependence between the tests, at a large cost in power).
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, log_ndtr, ndtri

BD_CONSTANT = float(1.0 / (4.0 * np.exp(log_ndtr(-np.sqrt(2.0)))))  # 3.178...
PVALUES = ("normal", "bound")
FDR_METHODS = ("bh", "by")


def two_sided_p(z) -> np.ndarray:
    z = np.abs(np.asarray(z, dtype=np.float64))
    return np.exp(np.log(2.0) + log_ndtr(-z))


def pvalue(absT, kind: str = "normal") -> np.ndarray:
    """p-value of a studentised statistic |T| (see the module docstring)."""
    p = two_sided_p(absT)
    if kind == "normal":
        return p
    if kind == "bound":
        return np.minimum(1.0, BD_CONSTANT * p)
    raise ValueError(f"pvalue must be one of {PVALUES}, got {kind!r}")


def abs_t_for_p(p: float, kind: str = "normal") -> float:
    """The |T| at which `pvalue(|T|, kind)` equals p (the inverse, for thresholds)."""
    p = p / BD_CONSTANT if kind == "bound" else p
    return float(-ndtri(p / 2.0)) if p < 1 else 0.0


def effective_q(q: float, m: int, method: str = "bh") -> float:
    """The level BH runs at: q for BH, q / sum_{i<=m} 1/i for BY."""
    if method == "bh":
        return q
    if method == "by":
        return q / float(digamma(max(m, 1) + 1) + np.euler_gamma)
    raise ValueError(f"fdr must be one of {FDR_METHODS}, got {method!r}")


def one_discovery_threshold(m: int, q: float, kind: str = "normal", method: str = "bh") -> float:
    """The |T| a test needs to be the only discovery among m: p <= q_eff / m."""
    return abs_t_for_p(effective_q(q, m, method) / max(m, 1), kind)


def bh_reject(pvals, q: float, method: str = "bh") -> np.ndarray:
    """Boolean mask of the hypotheses BH (or BY) rejects at level q (exact, in memory)."""
    p = np.asarray(pvals, dtype=np.float64).ravel()
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    ok = p[order] <= effective_q(q, m, method) * np.arange(1, m + 1) / m
    reject = np.zeros(m, dtype=bool)
    if ok.any():
        k = np.nonzero(ok)[0].max()
        reject[order[: k + 1]] = True
    return reject.reshape(np.shape(pvals))


class StreamingBH:
    """Exact BH (or BY) on |T| statistics that arrive in blocks, in two passes.

    T* = min{v observed : p(v) <= q N(>=v) / m}; BH rejects exactly the tests with |T| >= T*.
    Pass 1, `observe(absT)`: a histogram of |T| (bin b = [e_b, e_b+1), the last one open).
    A bin is *sure* if its smallest value passes (p(e_b) <= q n_ge[b] / m) and *maybe* if
    some value could (p(e_b+1) < q n_ge[b] / m). T* lies in [e_lo, e_hi) with lo the first
    maybe bin and hi the edge above the first sure bin. `plan()` fixes that window.
    Pass 2, `split(absT)`: values >= e_hi are rejected for sure; values in the window are
    undecided and handed to `keep`. `resolve()` then returns the exact T*.
    """

    def __init__(self, q: float, zmax: float = 40.0, bins: int = 40000, pvalue: str = "normal",
                 method: str = "bh"):
        effective_q(q, 1, method)  # validates method
        self.q, self.kind, self.method = q, pvalue, method
        self.edges = np.linspace(0.0, zmax, bins + 1)  # bin b starts at edges[b]
        self.hist = np.zeros(bins + 1, dtype=np.int64)
        self.undecided: list[np.ndarray] = []
        self.z_low = self.z_high = np.inf
        self.n_high = 0

    @property
    def m(self) -> int:
        return int(self.hist.sum())

    def p(self, absz) -> np.ndarray:
        return pvalue(absz, self.kind)

    @property
    def q_eff(self) -> float:
        return effective_q(self.q, self.m, self.method)

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
        sure = nonempty & (self.p(self.edges) <= self.q_eff * n_ge / m)
        maybe = nonempty & (self.p(upper) < self.q_eff * n_ge / m)
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
        """The exact BH threshold T* on |T| (inf: nothing is rejected)."""
        vals = np.sort(np.concatenate(self.undecided))[::-1] if self.undecided else np.zeros(0)
        counts = self.n_high + np.arange(1, len(vals) + 1)
        ok = self.p(vals) <= self.q_eff * counts / max(self.m, 1)
        return float(vals[np.nonzero(ok)[0].max()]) if ok.any() else np.inf

"""The non-zero test shared by correlations, co-skewness and co-kurtosis (SPEC section 4).

Every statistic is the mean over the pool of a product of centred per-example entries, e.g.
rho_ab ~ mean_k x_k with x_k = z_ka z_kb. The test of "mean of x = 0" is the studentised
(self-normalised) product sum

    T = sum_k x_k / sqrt(sum_k x_k^2),

over the n pool examples k, the independent unit (never the bootstrap replicates).

Why it is valid on the data the service produces. The pool examples are independent draws, so
the x_k are independent and, under the null, have mean 0, whatever the distribution of h:
zero-inflated (an example with margin >= 1 contributes exactly 0 to *every* entry, so all entries
share one activity mask), heavy-tailed, or dependent across entries through that mask. Then
- T -> N(0, 1) as n grows for every x in the normal domain of attraction, including infinite
  variance (Gine, Goetze and Mason 1997), so no normality and no effective sample size is assumed;
  Fisher's z with n - 3 assumes n bivariate-normal samples, while with A active examples the null
  spread of a correlation is ~1/sqrt(A) (`docs/statistics.md` has the simulation);
- the denominator counts only the examples that contribute, so A << n makes T small, not large:
  |T| <= sqrt(number of non-zero products) (Cauchy-Schwarz). With few active examples the test
  loses power; it does not invent discoveries;
- when the products are symmetric given their magnitudes, T is a Rademacher sum with unit square
  sum for every n, and P(|T| >= t) <= 3.18 x 2 (1 - Phi(t)) exactly (`fdr.pvalue(kind="bound")`).

`detectability` turns the number of active examples into what a user needs to read a count of
zero: the |T| one discovery requires among m tests, the smallest |rho| found with probability 1/2,
and whether the statistic is *untestable* at this A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fdr import one_discovery_threshold


def self_normalised(num: np.ndarray, sumsq: np.ndarray) -> np.ndarray:
    """T = sum x / sqrt(sum x^2), elementwise; 0 where every product is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sumsq > 0, num / np.sqrt(sumsq), 0.0)


def product_t(Zi: np.ndarray, Zj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlations, studentised product sums) of a tile of standardised pool columns (n, *)."""
    S = Zi.T @ Zj
    Q = np.square(Zi).T @ np.square(Zj)
    return S / Zi.shape[0], self_normalised(S, Q)


@dataclass(frozen=True)
class Detectability:
    """What a non-zero test can see with `n_active` active examples among `m_tests` tests."""

    n_active: int
    m_tests: int
    threshold: float  # |T| needed: the BH threshold if anything was found, else one discovery's
    max_abs_t: float  # sqrt(n_active): the largest |T| the data can produce (products off the active rows ~0)
    min_detectable_rho: float  # correlations: |rho| found with probability 1/2 (Gaussian values); nan if none <= 1
    untestable: bool
    reason: str  # empty when testable
    order: int = 2  # 2: correlations; 3, 4: co-moments

    def scalars(self, prefix: str) -> dict:
        out = {f"{prefix}.n_active": self.n_active, f"{prefix}.test_threshold": self.threshold,
               f"{prefix}.max_abs_t": self.max_abs_t, f"{prefix}.untestable": float(self.untestable)}
        if self.order == 2:  # an effect size in |rho| exists for correlations only
            out[f"{prefix}.min_detectable_rho"] = self.min_detectable_rho
        return out


def detectability(n_active: int, m_tests: int, q: float, pvalue: str = "normal", fdr: str = "bh",
                  found: int = 0, threshold: float = np.inf, order: int = 2) -> Detectability:
    """Power of the test at this activity.

    With A active examples and products ~0 elsewhere, |T| <= sqrt(A). For a correlation rho
    of Gaussian active values, E x = rho and E x^2 = 1 + 2 rho^2, so T ~ sqrt(A) rho /
    sqrt(1 + 2 rho^2): the |rho| reaching the threshold t is t / sqrt(A - 2 t^2), which is <= 1
    only when A >= 3 t^2. A statistic with no discovery is *untestable* when no effect could be
    found: for correlations, no |rho| <= 1 reaches the threshold with probability 1/2
    (A < 3 t^2); for co-moments (no bounded effect size), no tuple can reach it at all
    (A < t^2). With discoveries it is testable, whatever A."""
    t = float(threshold) if np.isfinite(threshold) else one_discovery_threshold(m_tests, q, pvalue, fdr)
    A = int(n_active)
    rho = t / np.sqrt(A - 2 * t * t) if order == 2 and A > 3 * t * t else np.nan
    need = 3 * t * t if order == 2 else t * t
    untestable = found == 0 and A < need
    reason = ""
    if untestable:
        what = ("no correlation |rho| <= 1 is found with probability 1/2" if order == 2
                else "no tuple can reach it (|T| <= sqrt(active examples))")
        reason = (f"untestable: {A} active examples; one discovery among {m_tests} tests needs |T| >= {t:.2f}, "
                  f"so {what}; needs >= {int(np.ceil(need))} active examples")
    return Detectability(A, int(m_tests), t, float(np.sqrt(A)), float(rho), bool(untestable), reason, order)

"""The non-zero test shared by correlations, co-skewness and co-kurtosis (SPEC section 4).

Every statistic is the mean over a set of rows of a product of standardised per-example entries,
e.g. rho_ab ~ mean_k x_k with x_k = z_ka z_kb. The test of "mean of x = 0" is the studentised
(self-normalised) product sum

    T = sum_k x_k / sqrt(sum_k x_k^2),

over the rows k of one *reading* (`READINGS`), each row an independent pool example (never a
bootstrap replicate):
- "marginal": all n pool examples, columns standardised over the pool. This is the quantity the
  paper's bootstrap of minibatch means estimates, and under the hinge loss it includes the activity
  mask: entries whose values have a non-zero mean over the active examples are correlated through
  the mask itself.
- "active": only the A pool examples where the hinge loss is active (margin <= 1), columns
  standardised over those rows. It asks how entries covary where the loss has curvature at all.

Why T is valid on the data the service produces. The pool examples are independent draws, so the
x_k are independent and, under the null, have mean 0, whatever their law: zero-inflated,
heavy-tailed, or dependent across entries through the shared mask or a per-example scale. T is
asymptotically N(0, 1) for every x in the normal domain of attraction, infinite variance included
(Gine, Goetze and Mason 1997). What it needs is enough informative rows: with A active examples
the evidence comes from A rows, and with strongly skewed values a small sample of A rows looks
like a non-zero mean (`docs/statistics.md`: a mean-zero centred lognormal at A = 13 has a median
t-statistic of -3.8), which under a shared mask is a marginal correlation. Hence the rule in
`detectability`: below the activity where a real effect could be found (A < 3 t^2 for
correlations, A < t^2 for co-moments) a marginal statistic is *untestable*, whatever the test
declares. The active reading centres each column over the active rows, which removes that
apparent mean; it is untestable there only when it finds nothing.

Bounds: |T| <= sqrt(number of rows with x_k != 0) (Cauchy-Schwarz). In the active reading every
product lives on the A active rows, so |T| <= sqrt(A). In the marginal reading the standardised
entries of inactive rows are the constants -mean/sd, so products (and the influence-corrected
co-moment products) are non-zero on inactive rows too, and only |T| <= sqrt(n) holds.

When the products are symmetric given their magnitudes, T is a Rademacher sum with unit square
sum for every n, and P(|T| >= t) <= 3.18 x 2 (1 - Phi(t)) exactly (`fdr.pvalue(kind="bound")`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fdr import one_discovery_threshold

READINGS = ("marginal", "active")  # over the pool; over the pool examples with margin <= 1


def self_normalised(num: np.ndarray, sumsq: np.ndarray) -> np.ndarray:
    """T = sum x / sqrt(sum x^2), elementwise; 0 where every product is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sumsq > 0, num / np.sqrt(sumsq), 0.0)


def pair_rows(rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random pairing of the positions 0..len(rows)-1 of the rows of one reading:
    (first, second), floor(len / 2) disjoint pairs (an odd row out is left out)."""
    perm = rng.permutation(len(rows))
    m = len(perm) // 2
    return np.sort(perm[:m]), perm[m : 2 * m][np.argsort(perm[:m])]


def differences(Z: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Z[first] - Z[second] over the pairs: for i.i.d. examples each difference is symmetric about 0,
    so for two independent entries the products of their differences are symmetric given their
    magnitudes, whatever the law of the values (`pairs_t`)."""
    first, second = pairs
    return Z[first] - Z[second]


def mild(Z: np.ndarray, skew_max: float) -> np.ndarray:
    """Columns of Z (standardised over the active examples) whose skewness is at most skew_max in
    absolute value: those whose mean over the active examples a normal approximation can be trusted
    with (the marginal reading tests the mask's couplings among them only)."""
    return np.abs(np.mean(Z**3, axis=0)) <= skew_max


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
                  found: int = 0, threshold: float = np.inf, order: int = 2, strict: bool = False,
                  paired: bool = False) -> Detectability:
    """Power of the test at this activity, and whether the statistic is testable at all.

    With A active examples, products off the active rows carry no evidence: a test has m = A
    independent products, or m = A/2 for the pairs test (`paired`). For a correlation rho of
    Gaussian values, E x = rho and E x^2 = 1 + 2 rho^2 (also for the differences of pairs, up to a
    factor 2 in both), so T ~ sqrt(m) rho / sqrt(1 + 2 rho^2): the |rho| reaching the threshold t is
    t / sqrt(m - 2 t^2), which is <= 1 only when m >= 3 t^2. The *power limit* is the activity below
    which no effect can be found: for correlations, no |rho| <= 1 reaches t with probability 1/2
    (m < 3 t^2); for co-moments (no bounded effect size), no tuple can reach it at all (A < t^2, from
    |T| <= sqrt(A) over the active rows). t is the BH threshold if anything was found, else that of
    one discovery among m_tests.

    strict=False: untestable when nothing was found below the limit. strict=True (the marginal
    reading's pool test): untestable below the limit of a single discovery, whatever the test
    declared (`found` is kept in the reason): there a few strongly skewed active values look like a
    non-zero mean, and under a shared mask a non-zero mean is a marginal correlation, so on skewed
    mean-zero nulls the pool test's false declarations lie below that limit (`docs/calibration.md`)."""
    t = float(threshold) if np.isfinite(threshold) else one_discovery_threshold(m_tests, q, pvalue, fdr)
    t_limit = one_discovery_threshold(m_tests, q, pvalue, fdr) if strict else t
    A = int(n_active)
    m = A // 2 if paired else A
    need = 3 * t_limit * t_limit if order == 2 else t_limit * t_limit
    untestable = m < need and (strict or found == 0)
    rho = t / np.sqrt(m - 2 * t * t) if order == 2 and m > 3 * t * t and not untestable else np.nan
    reason = ""
    if untestable:
        what = ("no correlation |rho| <= 1 is found with probability 1/2" if order == 2
                else "no tuple can reach it (|T| <= sqrt(active examples))")
        found_txt = f"; the test declared {found} anyway, which is not counted" if found else ""
        need_a = 2 * need if paired else need
        reason = (f"untestable: {A} active examples; one discovery among {m_tests} tests needs |T| >= {t_limit:.2f}, "
                  f"so {what}; needs >= {int(np.ceil(need_a))} active examples"
                  + (" (the pairs test uses them two by two)" if paired else "") + found_txt)
    return Detectability(A, int(m_tests), t, float(np.sqrt(m)), float(rho), bool(untestable), reason, order)

"""Mardia's multivariate skewness and kurtosis (Mardia 1970) with their normal-theory tests.

For n samples of a p-vector with ML covariance S and centred rows d_i:
  b1 = (1/n^2) sum_ij (d_i' S^-1 d_j)^3,   n b1 / 6 ~ chi^2 with p(p+1)(p+2)/6 dof;
  b2 = (1/n) sum_i (d_i' S^-1 d_i)^2,      (b2 - p(p+2)) / sqrt(8 p (p+2) / n) ~ N(0, 1).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def mardia(data: np.ndarray) -> dict:
    n, p = data.shape
    d = data - data.mean(axis=0)
    S = d.T @ d / n
    G = d @ np.linalg.pinv(S, hermitian=True) @ d.T
    b1 = float((G**3).sum() / n**2)
    b2 = float((np.diag(G) ** 2).mean())
    dof = p * (p + 1) * (p + 2) / 6
    skew_stat = n * b1 / 6
    kurt_stat = (b2 - p * (p + 2)) / np.sqrt(8 * p * (p + 2) / n)
    return {"b1": b1, "b2": b2, "skew_stat": float(skew_stat), "skew_p": float(stats.chi2.sf(skew_stat, dof)),
            "kurt_stat": float(kurt_stat), "kurt_p": float(2 * stats.norm.sf(abs(kurt_stat)))}

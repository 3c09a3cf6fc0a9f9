"""Power laws in the network size N: y = A N^alpha, fitted as log y = log A + alpha log N.

Weighted least squares with per-point standard errors of log y (from the measurements'
uncertainties); the exponent's standard error is the usual one, inflated by the reduced chi^2
when the points scatter more than their error bars say (never deflated). The exponent's
confidence interval is exponent +- q * std, with q the Student t quantile on points - 2 degrees of
freedom when the scale comes from the scatter (no error bars, or chi^2 > 1), else the normal one:
exact for Gaussian errors in log y (tested for coverage, and against scipy.stats.linregress).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def fit_power_law(n_params, y, y_std=None, level: float = 0.95) -> dict:
    n_params, y = np.asarray(n_params, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = (y > 0) & np.isfinite(y) & (n_params > 0)
    if ok.sum() < 3:
        raise ValueError(f"a power-law fit needs at least 3 positive points, got {int(ok.sum())}")
    x, ly = np.log(n_params[ok]), np.log(y[ok])
    if y_std is None:
        s = np.ones_like(x)
    else:
        s = np.asarray(y_std, dtype=np.float64)[ok] / y[ok]  # std of log y
        s = np.where(np.isfinite(s) & (s > 0), s, np.nanmedian(s[s > 0]) if np.any(s > 0) else 1.0)
    w = 1.0 / s**2
    A = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(A.T @ (A * w[:, None]))
    coef = cov @ (A.T @ (w * ly))
    resid = ly - A @ coef
    dof = max(len(x) - 2, 1)
    chi2_red = float((w * resid**2).sum() / dof)
    scale = max(chi2_red, 1.0) if y_std is not None else chi2_red
    std = float(np.sqrt(cov[1, 1] * scale))
    from_scatter = y_std is None or chi2_red > 1.0
    q = float(stats.t.ppf(0.5 + level / 2, len(x) - 2) if from_scatter else stats.norm.ppf(0.5 + level / 2))
    return {"exponent": float(coef[1]), "exponent_std": std, "exponent_ci_low": float(coef[1]) - q * std,
            "exponent_ci_high": float(coef[1]) + q * std, "ci_level": level,
            "log_prefactor": float(coef[0]), "chi2_reduced": chi2_red, "points": int(ok.sum())}

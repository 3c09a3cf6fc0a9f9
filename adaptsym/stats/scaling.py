"""Power laws in the network size N: y = A N^alpha, fitted as log y = log A + alpha log N.

Weighted least squares with per-point standard errors of log y (from the measurements'
uncertainties); the exponent's standard error is the usual one, inflated by the reduced chi^2
when the points scatter more than their error bars say (never deflated). The exponent's
confidence interval is exponent +- q * std, with q the Student t quantile on points - 2 degrees of
freedom when the scale comes from the scatter (no error bars, or chi^2 > 1), else the normal one:
exact for Gaussian errors in log y (tested for coverage, and against scipy.stats.linregress).

`resampled_power_law` is the scale sweep's fit of the coupling set size: its interval comes from
replicates that resample the pool examples and the entries together (`resampled_couplings`), so
it covers the scatter a different pool would give, not only a different draw of entries (tested
for coverage on simulated sweeps with zero-inflated, skewed entries under a shared mask).
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


# ---------------------------------------------------------------- intervals with pool resampling


def pair_fraction(declared: np.ndarray, weights: np.ndarray) -> float:
    """The relative coupling size mean_a C_a / (K - 1) of the entries drawn with multiplicities
    `weights` (K,), from the decisions of the K distinct entries (`declared`, one bool per pair
    a < b in `np.triu_indices` order): sum_{a != b} w_a w_b D_ab / (K'^2 - sum w^2), K' = sum w,
    so a pair of two copies of one entry is no pair. All weights 1: the sample's own size."""
    K = len(weights)
    a, b = np.triu_indices(K, 1)
    num = 2.0 * float((weights[a] * weights[b])[declared].sum())
    total = float(weights.sum())
    den = total * total - float((weights**2).sum())
    return num / den if den > 0 else np.nan


def resampled_couplings(h: np.ndarray, active: np.ndarray, rng: np.random.Generator, n_resamples: int = 200,
                        resample_pool: bool = True, decide=None, **decision_kw) -> dict[str, np.ndarray]:
    """Relative correlation coupling sizes of both readings, (n_resamples,) each, every replicate
    resampling the pool and the entries together: the examples with replacement within their
    activity (A active from the active, n - A from the rest, so the power stays that of the
    measurement), a fresh pairing of the active ones for the pairs test, the decisions made
    again (`correlation.reading_decisions`, with `decision_kw`), and the entries with replacement
    (`pair_fraction`). The spread is that of the estimate over pools and entries both
    (resample_pool=False: over entries only, the decisions made once, as `coupling_summary` does)."""
    from .correlation import reading_decisions

    decide = decide or reading_decisions
    active = np.asarray(active, dtype=bool)
    on, off = np.nonzero(active)[0], np.nonzero(~active)[0]
    K = h.shape[1]
    out: dict[str, list] = {}
    fixed = None if resample_pool else decide(h, active, rng=rng, **decision_kw)
    for _ in range(n_resamples):
        weights = np.bincount(rng.integers(0, K, K), minlength=K).astype(np.float64)
        if fixed is None:
            rows = np.concatenate([rng.choice(on, len(on)), rng.choice(off, len(off)) if len(off) else off])
        for reading, dec in (fixed or decide(h[rows], active[rows], rng=rng, **decision_kw)).items():
            out.setdefault(reading, []).append(pair_fraction(dec.declared, weights))
    return {k: np.asarray(v) for k, v in out.items()}


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def resampled_power_law(n_params, estimate, replicates, level: float = 0.95, offset=None) -> dict:
    """The exponent of y = A N^alpha by least squares in log-log over the sizes with y > 0, with a
    `level` interval from the replicates (sizes x B, e.g. `resampled_couplings`): each replicate's
    deviations of log y from their mean over replicates, added to the estimate, refitted; the
    interval is the percentiles of those exponents (the estimate's own fit +- the resampling's
    spread, free of a resampling bias that is the same at every size). A replicate at 0 counts
    as half a detection of the smallest positive estimate. `offset` (log of a known factor per
    size, e.g. log(N^2 - 1) for the absolute size) is added to log y. Also the leave-one-out
    exponents (each size dropped in turn; NaN where fewer than 3 would remain)."""
    n = np.asarray(n_params, dtype=np.float64)
    y = np.asarray(estimate, dtype=np.float64)
    R = np.asarray(replicates, dtype=np.float64)
    off = np.zeros_like(n) if offset is None else np.asarray(offset, dtype=np.float64)
    ok = (y > 0) & np.isfinite(y)
    if ok.sum() < 3:
        raise ValueError(f"a power-law fit needs at least 3 positive points, got {int(ok.sum())}")
    x = np.log(n[ok])
    ly = np.log(y[ok]) + off[ok]
    floor = 0.5 * y[ok].min()
    lr = np.log(np.where(np.isfinite(R[ok]) & (R[ok] > 0), R[ok], floor))
    dev = lr - lr.mean(axis=1, keepdims=True)  # sizes x B
    alpha = _slope(x, ly)
    boots = np.array([alpha + _slope(x, dev[:, b]) for b in range(dev.shape[1])])
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    loo = []
    for i in range(len(n)):
        keep = ok.copy()
        keep[i] = False
        loo.append(_slope(np.log(n[keep]), np.log(y[keep]) + off[keep]) if keep.sum() >= 3 else np.nan)
    intercept = float(ly.mean() - alpha * x.mean())
    return {"exponent": alpha, "exponent_std": float(boots.std(ddof=1)), "exponent_ci_low": float(lo),
            "exponent_ci_high": float(hi), "ci_level": level, "log_prefactor": intercept,
            "points": int(ok.sum()), "resamples": int(dev.shape[1]), "leave_one_out": [float(v) for v in loo],
            "log_std_per_size": [float(v) for v in np.where(ok, log_std(R, floor), np.nan)]}


def log_std(R: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Per row (a size): the standard deviation of log y over the replicates; a replicate of 0 (or
    NaN) counts as `floor`, or is left out when `floor` is None (NaN with fewer than 2 left)."""
    R = np.atleast_2d(np.asarray(R, dtype=float))
    pos = np.isfinite(R) & (R > 0)
    if floor is not None:
        return np.log(np.where(pos, R, floor)).std(axis=1, ddof=1)
    logs = np.where(pos, np.log(np.where(pos, R, 1.0)), np.nan)
    import warnings

    with warnings.catch_warnings():  # rows with fewer than 2 detections: NaN, below
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanstd(logs, axis=1, ddof=1)
    return np.where(pos.sum(axis=1) > 1, out, np.nan)

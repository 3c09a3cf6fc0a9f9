"""Per-entry statistics of the minibatch Hessian entries (SPEC section 4, Figs 6a, 7a, 7b).

Moments are population moments over the B replicates (as scipy.stats.skew / kurtosis with
their defaults, and numpy's std with ddof=0). The normalised mean z_a = mean_a / std_a; the
fraction of entries with |z_a| < cut carries a standard error from resampling the n pool
examples (the independent samples), using the exact z over S, sqrt(s) mean_k h / std_k h.
"""

from __future__ import annotations

import numpy as np

from .bootstrap import predicted_moments


def moments(X: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, skewness and excess kurtosis of each column of X (B, K)."""
    mean = X.mean(axis=0)
    d = X - mean
    m2 = (d**2).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = (d**3).mean(axis=0) / m2**1.5
        exkurt = (d**4).mean(axis=0) / m2**2 - 3.0
    return {"mean": mean, "std": np.sqrt(m2), "skew": skew, "exkurt": exkurt}


def valid_entries(h: np.ndarray, structural_zero: np.ndarray) -> np.ndarray:
    """Entries that carry statistics: not structurally zero and not constant over the pool."""
    return ~structural_zero & (h.std(axis=0) > 0)


def z_fraction(z: np.ndarray, cut: float) -> float:
    return float(np.mean(np.abs(z) < cut)) if z.size else float("nan")


def z_fraction_uncertainty(h: np.ndarray, s: int, cut: float, n_resamples: int,
                           rng: np.random.Generator) -> float:
    """Std of the |z| < cut fraction over bootstrap resamples of the pool rows (h: valid entries)."""
    n = h.shape[0]
    fr = np.empty(n_resamples)
    for r in range(n_resamples):
        hb = h[rng.integers(0, n, n)]
        sd = hb.std(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.sqrt(s) * hb.mean(axis=0) / sd
        # a resample can miss every active example (late training): no entry varies, skip it
        fr[r] = np.mean(np.abs(z[sd > 0]) < cut) if np.any(sd > 0) else np.nan
    fr = fr[np.isfinite(fr)]
    return float(fr.std(ddof=1)) if fr.size > 1 else float("nan")


def scaling_check(X: np.ndarray, h: np.ndarray, s: int, groups: int = 20) -> dict:
    """Bootstrap moments against the exact predictions over S (SPEC section 4).

    The error bar of each bootstrap estimate is the batch-means standard error over
    `groups` groups of replicates. Returns, per moment, the fraction of entries within
    3 error bars and the median |deviation| / error bar.
    """
    est = moments(X)
    pred = predicted_moments(h, s)
    pred["std"] = np.sqrt(pred.pop("var"))
    parts = [moments(g) for g in np.array_split(X, groups, axis=0)]
    out = {}
    for key in ("mean", "std", "skew", "exkurt"):
        se = np.stack([p[key] for p in parts]).std(axis=0, ddof=1) / np.sqrt(groups)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.abs(est[key] - pred[key]) / se
        dev = dev[np.isfinite(dev)]
        out[f"{key}_within_3se"] = float(np.mean(dev < 3)) if dev.size else float("nan")
        out[f"{key}_median_dev_se"] = float(np.median(dev)) if dev.size else float("nan")
    return out

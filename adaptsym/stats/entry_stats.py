"""Per-entry statistics of the minibatch Hessian entries (SPEC section 4, Figs 6a, 7a, 7b).

Moments are population moments over the B replicates (as scipy.stats.skew / kurtosis with
their defaults, and numpy's std with ddof=0). The normalised mean z_a = mean_a / std_a; the
fraction of entries with |z_a| < cut carries a standard error and a 95% percentile interval
from resampling the n pool examples (the independent samples), using the exact z over S,
sqrt(s) mean_k h / std_k h; the same resamples give it at other batch sizes (`Z_BATCHES`) and
give per-entry intervals of the exact moments of H_a(S).
"""

from __future__ import annotations

import warnings

import numpy as np


def moments(X: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, skewness and excess kurtosis of each column of X (B, K)."""
    mean = X.mean(axis=0)
    d = X - mean
    m2 = (d**2).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = (d**3).mean(axis=0) / m2**1.5
        exkurt = (d**4).mean(axis=0) / m2**2 - 3.0
    return {"mean": mean, "std": np.sqrt(m2), "skew": skew, "exkurt": exkurt}


def predicted_moments(h: np.ndarray, s: int) -> dict[str, np.ndarray]:
    """Exact moments of H_a(S) over S from the pool h (n, K): mean = mean_k h, var = var_k / s,
    skewness = skew_k / sqrt(s), excess kurtosis = exkurt_k / s (SPEC section 4)."""
    m = moments(h)
    return {"mean": m["mean"], "var": m["std"] ** 2 / s, "skew": m["skew"] / np.sqrt(s), "exkurt": m["exkurt"] / s}


def valid_entries(h: np.ndarray, structural_zero: np.ndarray) -> np.ndarray:
    """Entries that carry statistics: not structurally zero and not constant over the pool."""
    return ~structural_zero & (h.std(axis=0) > 0)


def sparsity_bound(p) -> np.ndarray:
    """sqrt(p / (1 - p)): the largest |mean / sd| of an entry that is non-zero on a fraction p of the
    rows it is taken over, whatever its values (equality when its non-zero values are all equal).
    Infinite at p = 1. At minibatch size s the bound on |z| is sqrt(s) times this."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p < 1, np.sqrt(p / np.maximum(1.0 - p, 1e-300)), np.inf)


def forced(p, s: float, cut: float) -> np.ndarray:
    """Entries whose |z| at minibatch size s is below `cut` by the sparsity bound alone."""
    return np.sqrt(s) * sparsity_bound(p) < cut


def z_fraction(z: np.ndarray, cut: float) -> float:
    return float(np.mean(np.abs(z) < cut)) if z.size else float("nan")


# batch sizes s at which the |z| < cut fraction is also reported (z grows as sqrt(s));
# s = 1 is the other reading of Fig 7a: mean over the std of the per-example entry
Z_BATCHES = (1, 8, 32, 128, 512)


def z_resample_counts(h: np.ndarray, s: int, cut, idx: np.ndarray, exclude: np.ndarray | None = None
                      ) -> np.ndarray:
    """For each pool resample idx[r] (row indices): (#entries with |z| < cut_c for each cut,
    #entries with std > 0), shape (R, n_cuts + 1).

    z is the exact z over S of the resampled pool, sqrt(s) mean / std; `exclude` masks entries
    (structural zeros). Counts add up over blocks of entries, so workers can each do a block.
    """
    cuts = np.atleast_1d(np.asarray(cut, dtype=np.float64))
    out = np.zeros((len(idx), cuts.size + 1), dtype=np.int64)
    keep = np.ones(h.shape[1], dtype=bool) if exclude is None else ~exclude
    for r, rows in enumerate(idx):
        hr = h[rows]
        sd = hr.std(axis=0)
        ok = (sd > 0) & keep
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(np.sqrt(s) * hr.mean(axis=0) / sd)
        out[r, :-1] = [np.sum(ok & (z < c)) for c in cuts]
        out[r, -1] = np.sum(ok)
    return out


def batch_cuts(cut: float, s: int, batches=Z_BATCHES) -> np.ndarray:
    """Cuts on the z at batch size s equivalent to |z| < cut at each of `batches`:
    z_b = sqrt(b / s) z_s, so |z_b| < cut iff |z_s| < cut sqrt(s / b)."""
    return cut * np.sqrt(s / np.asarray(batches, dtype=np.float64))


def fraction_interval(counts: np.ndarray, level: float = 0.95, column: int = 0,
                      point: float | None = None) -> tuple[float, float]:
    """Interval over pool resamples of the fraction in `column` of counts (R, c + 1); resamples
    with no varying entry are left out. With the pool's own value `point`: the basic (reverse
    percentile) interval [2 point - q_hi, 2 point - q_lo], clipped to [0, 1], which undoes the
    resampling's bias; without it, the percentile interval [q_lo, q_hi].

    The bias is real here: a resampled pool's means scatter more, so fewer |z| fall below the cut;
    in the regime study the pool's own fraction lay above the percentile interval at 10 of 34
    checkpoints."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fr = counts[:, column] / counts[:, -1]
    fr = fr[np.isfinite(fr)]
    if fr.size < 2 or (point is not None and not np.isfinite(point)):
        return float("nan"), float("nan")
    lo, hi = np.quantile(fr, [(1 - level) / 2, (1 + level) / 2])
    if point is None:
        return float(lo), float(hi)
    return float(max(0.0, 2 * point - hi)), float(min(1.0, 2 * point - lo))


def moment_intervals(h: np.ndarray, s: int, idx: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Per-entry percentile intervals of the exact moments of H_a(S) (mean, std, skewness, excess
    kurtosis; `predicted_moments`) over the pool resamples idx (R, n): {name: (2, K) array}."""
    reps = {k: [] for k in ("mean", "std", "skew", "exkurt")}
    for rows in idx:
        m = predicted_moments(h[rows], s)
        m["std"] = np.sqrt(m.pop("var"))
        for k in reps:
            reps[k].append(m[k])
    q = [(1 - level) / 2, (1 + level) / 2]
    with warnings.catch_warnings():  # entries constant in every resample: NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: np.nanquantile(np.array(v), q, axis=0) for k, v in reps.items()}


def fraction_std(counts: np.ndarray, column: int = 0) -> float:
    """Std over resamples of the fraction; a resample with no varying entry (it missed every
    active example, late in training) is left out."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fr = counts[:, column] / counts[:, -1]
    fr = fr[np.isfinite(fr)]
    return float(fr.std(ddof=1)) if fr.size > 1 else float("nan")


def z_fraction_uncertainty(h: np.ndarray, s: int, cut: float, n_resamples: int,
                           rng: np.random.Generator) -> float:
    """Std of the |z| < cut fraction over bootstrap resamples of the pool rows."""
    return fraction_std(z_resample_counts(h, s, cut, rng.integers(0, h.shape[0], (n_resamples, h.shape[0]))))


def scaling_deviations(X: np.ndarray, h: np.ndarray, s: int, groups: int = 20) -> dict[str, np.ndarray]:
    """|bootstrap moment - exact moment over S| in batch-means standard errors, per entry (finite ones)."""
    est = moments(X)
    pred = predicted_moments(h, s)
    pred["std"] = np.sqrt(pred.pop("var"))
    parts = [moments(g) for g in np.array_split(X, groups, axis=0)]
    out = {}
    for key in ("mean", "std", "skew", "exkurt"):
        se = np.stack([p[key] for p in parts]).std(axis=0, ddof=1) / np.sqrt(groups)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.abs(est[key] - pred[key]) / se
        out[key] = dev[np.isfinite(dev)]
    return out


def summarise_deviations(devs: dict[str, np.ndarray]) -> dict:
    """Per moment: the fraction of entries within 3 error bars and the median deviation."""
    out = {}
    for key, dev in devs.items():
        out[f"{key}_within_3se"] = float(np.mean(dev < 3)) if dev.size else float("nan")
        out[f"{key}_median_dev_se"] = float(np.median(dev)) if dev.size else float("nan")
    return out


def scaling_check(X: np.ndarray, h: np.ndarray, s: int, groups: int = 20) -> dict:
    """Bootstrap moments against the exact predictions over S (SPEC section 4)."""
    return summarise_deviations(scaling_deviations(X, h, s, groups))

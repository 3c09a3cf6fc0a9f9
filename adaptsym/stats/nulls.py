"""Synthetic per-example entries with the service's zero inflation, for calibrating every decision rule.

With the hinge loss an example with margin >= 1 contributes exactly 0 to every Hessian entry, so
the entries share one activity mask over the pool: `h[k, a] = 1[k active] * c_k * g[k, a]`.
Entries can also be zero on active examples (a closed ReLU gate on the path): `masks="entry"`
zeroes each value with probability 1/2 on top of the shared mask. `scales="lognormal"` multiplies
every entry of example k by one factor c_k ~ lognormal(0, 1) (an example's input norm scales all
its entries), so entries are dependent through c_k although uncorrelated. The values g, all with
mean exactly 0 (`LAWS`):
- "normal": standard normal;
- "lognormal": symmetric and heavy-tailed, sign x lognormal(0, 1.5) (kurtosis ~ 1e4);
- "skewed": exponential - 1 (skewness 2);
- "chi2": chi-square(1) - 1 (skewness 2.8);
- "gamma": gamma(0.1) - 0.1 (skewness 6.3, zero most of the time up to 1e-10);
- "lognormal-skew": centred lognormal(0, 1.5) (skewness 33);
- "extreme": centred lognormal(0, 2.5) (skewness 1.2e4; the rarest 1/512 of its values carry 35%
  of the mean, so a pool of 512 usually lacks them).
`LIMIT_LAWS` holds laws beyond what any test can tell from n = 512 examples (`docs/statistics.md`):
"extreme-3", centred lognormal(0, 3), whose rarest 1/512 of values carry 55% of the mean.

`planted` adds structure with a known truth: groups of `size` entries share one factor of the same
law (within a group: correlation 1/2, and non-zero co-skewness and co-kurtosis when the law is
skewed); entries in different groups, and the `k_null` extra entries, are independent. Under the
shared mask all of them remain uncorrelated across groups, so every cross-group pair is a true null.
`one_signed` makes the mask itself the only coupling: independent positive values, so that every
pair is correlated over the pool (through which examples are active) and uncorrelated over the
active examples. Their spread is symmetric: the marginal reading tests such couplings only among
entries whose active values are mildly skewed (`docs/statistics.md`).
"""

from __future__ import annotations

import numpy as np

LAWS = ("normal", "lognormal", "skewed", "chi2", "gamma", "lognormal-skew", "extreme")
LIMIT_LAWS = ("extreme-3",)
SCALES = ("none", "lognormal")
SKEWNESS = {"normal": 0.0, "lognormal": 0.0, "skewed": 2.0, "chi2": 2.83, "gamma": 6.32,
            "lognormal-skew": 33.5, "extreme": 1.18e4, "extreme-3": 7.3e5}


def _centred_lognormal(sigma: float, shape, rng: np.random.Generator) -> np.ndarray:
    return rng.lognormal(0.0, sigma, shape) - np.exp(sigma**2 / 2)


def draw(law: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if law == "normal":
        return rng.standard_normal(shape)
    if law == "lognormal":
        return rng.choice([-1.0, 1.0], shape) * rng.lognormal(0.0, 1.5, shape)
    if law == "skewed":
        return rng.exponential(size=shape) - 1.0
    if law == "chi2":
        return rng.chisquare(1, shape) - 1.0
    if law == "gamma":
        return rng.gamma(0.1, size=shape) - 0.1
    if law == "lognormal-skew":
        return _centred_lognormal(1.5, shape, rng)
    if law == "extreme":
        return _centred_lognormal(2.5, shape, rng)
    if law == "extreme-3":
        return _centred_lognormal(3.0, shape, rng)
    raise ValueError(f"law must be one of {LAWS + LIMIT_LAWS}, got {law!r}")


def activity(n: int, active: int, rng: np.random.Generator) -> np.ndarray:
    """A shared mask with exactly `active` of the n pool examples on."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=active, replace=False)] = True
    return mask


def zero_inflated(g: np.ndarray, active: int, masks: str, rng: np.random.Generator, scales: str = "none",
                  return_mask: bool = False):
    """g with per-example scales, the shared activity mask (and, for masks='entry', independent
    per-entry zeros); with return_mask, also the (n,) activity mask (the active reading's rows)."""
    if scales == "lognormal":
        g = g * rng.lognormal(0.0, 1.0, (g.shape[0], 1))
    elif scales != "none":
        raise ValueError(f"scales must be one of {SCALES}, got {scales!r}")
    mask = activity(g.shape[0], active, rng)
    h = g * mask[:, None]
    if masks == "entry":
        h = h * (rng.random(h.shape) < 0.5)
    elif masks != "shared":
        raise ValueError(f"masks must be 'shared' or 'entry', got {masks!r}")
    return (h, mask) if return_mask else h


def null(n: int, K: int, active: int, law: str, masks: str, rng: np.random.Generator, scales: str = "none",
         return_mask: bool = False):
    """(n, K) entries with every correlation and joint cumulant between distinct entries exactly 0
    (over the pool and over the active examples)."""
    return zero_inflated(draw(law, (n, K), rng), active, masks, rng, scales, return_mask)


def planted(n: int, groups: int, size: int, active: int, law: str, masks: str, rng: np.random.Generator,
            k_null: int = 0, scales: str = "none", return_mask: bool = False):
    """(h, group[, mask]) with `groups` groups of `size` coupled entries and `k_null` free ones (group -1 - i)."""
    g = np.repeat(draw(law, (n, groups), rng), size, axis=1) + draw(law, (n, groups * size), rng)
    g = np.hstack([g, draw(law, (n, k_null), rng)])
    label = np.concatenate([np.repeat(np.arange(groups), size), -1 - np.arange(k_null)])
    out = zero_inflated(g, active, masks, rng, scales, return_mask)
    return (out[0], label, out[1]) if return_mask else (out, label)


def one_signed(n: int, K: int, active: int, masks: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(h, mask): independent uniform(0.5, 1.5) values (positive, symmetric: mean 1, variance 1/12)
    under the shared mask. Over the pool every pair is correlated through the mask alone
    (rho = (1 - p) / (13/12 - p), p = active / n, for shared masks); over the active examples no pair is."""
    return zero_inflated(rng.uniform(0.5, 1.5, size=(n, K)), active, masks, rng, "none", True)


def drop_constant(h: np.ndarray, label: np.ndarray | None = None):
    """Entries that vary over the pool (what the service calls valid), with their labels."""
    keep = h.std(axis=0) > 0
    return (h[:, keep], label[keep]) if label is not None else h[:, keep]

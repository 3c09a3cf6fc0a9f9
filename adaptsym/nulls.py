"""Synthetic per-example entries with the service's zero inflation, for calibrating every decision rule.

With the hinge loss an example with margin >= 1 contributes exactly 0 to every Hessian entry, so
the entries share one activity mask over the pool: `h[k, a] = 1[k active] * g[k, a]`. Entries can
also be zero on active examples (a closed ReLU gate on the path): `masks="entry"` zeroes each
value with probability 1/2 on top of the shared mask. `g` is
- "normal": standard normal;
- "lognormal": symmetric and heavy-tailed, sign x lognormal(0, 1.5) (kurtosis ~ 1e4);
- "skewed": exponential - 1 (skewness 2), so products of entries are skewed too.

`planted` adds structure with a known truth: groups of `size` entries share one factor of the same
law (within a group: correlation 1/2, and non-zero co-skewness and co-kurtosis when the law is
skewed); entries in different groups, and the `k_null` extra entries, are independent. Under the
shared mask all of them remain uncorrelated across groups, so every cross-group pair is a true null.
"""

from __future__ import annotations

import numpy as np

LAWS = ("normal", "lognormal", "skewed")


def draw(law: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if law == "normal":
        return rng.standard_normal(shape)
    if law == "lognormal":
        return rng.choice([-1.0, 1.0], shape) * rng.lognormal(0.0, 1.5, shape)
    if law == "skewed":
        return rng.exponential(size=shape) - 1.0
    raise ValueError(f"law must be one of {LAWS}, got {law!r}")


def activity(n: int, active: int, rng: np.random.Generator) -> np.ndarray:
    """A shared mask with exactly `active` of the n pool examples on."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=active, replace=False)] = True
    return mask


def zero_inflated(g: np.ndarray, active: int, masks: str, rng: np.random.Generator) -> np.ndarray:
    """g with the shared activity mask (and, for masks='entry', independent per-entry zeros)."""
    h = g * activity(g.shape[0], active, rng)[:, None]
    if masks == "entry":
        h = h * (rng.random(h.shape) < 0.5)
    elif masks != "shared":
        raise ValueError(f"masks must be 'shared' or 'entry', got {masks!r}")
    return h


def null(n: int, K: int, active: int, law: str, masks: str, rng: np.random.Generator) -> np.ndarray:
    """(n, K) entries with every joint cumulant between distinct entries exactly 0."""
    return zero_inflated(draw(law, (n, K), rng), active, masks, rng)


def planted(n: int, groups: int, size: int, active: int, law: str, masks: str, rng: np.random.Generator,
            k_null: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(h, group) with `groups` groups of `size` coupled entries and `k_null` free ones (group -1 - i)."""
    g = np.repeat(draw(law, (n, groups), rng), size, axis=1) + draw(law, (n, groups * size), rng)
    g = np.hstack([g, draw(law, (n, k_null), rng)])
    label = np.concatenate([np.repeat(np.arange(groups), size), -1 - np.arange(k_null)])
    return zero_inflated(g, active, masks, rng), label


def drop_constant(h: np.ndarray, label: np.ndarray | None = None):
    """Entries that vary over the pool (what the service calls valid), with their labels."""
    keep = h.std(axis=0) > 0
    return (h[:, keep], label[keep]) if label is not None else h[:, keep]

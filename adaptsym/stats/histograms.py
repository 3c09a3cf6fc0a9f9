"""Histograms on fixed bins with under- and overflow counts, shared by the distribution observables."""

from __future__ import annotations

import numpy as np


def counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(len(edges) + 1,) counts: [below edges[0], each bin, at or above edges[-1]]."""
    idx = np.searchsorted(edges, np.asarray(values).ravel(), side="right")
    return np.bincount(idx, minlength=len(edges) + 1)


def symlog_edges(lo_exp: float, hi_exp: float, bins: int) -> np.ndarray:
    """Symmetric log-spaced edges: -10^hi .. -10^lo, 10^lo .. 10^hi (a central bin around 0)."""
    half = np.logspace(lo_exp, hi_exp, bins // 2)
    return np.concatenate([-half[::-1], half])

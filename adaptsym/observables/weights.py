"""Weight distributions per layer (SPEC section 3, Fig 3a).

Bins are fixed per layer for the whole run, so histograms line up across checkpoints:
`bins` equal bins on [-8, 8] He standard deviations (sqrt(2 / fan_in)), plus under- and
overflow counts. Moments are population moments (scipy.stats' defaults).
"""

from __future__ import annotations

import numpy as np

from ..stats.entry_stats import moments
from ..stats.histograms import counts
from .observation import Context, Observation


def weight_edges(shape, bins: int) -> np.ndarray:
    sigma = np.sqrt(2.0 / np.prod(shape[1:]))
    return np.linspace(-8 * sigma, 8 * sigma, bins + 1)


def measure_weights(weights, bins: int) -> Observation:
    obs = Observation("weights")
    ws = [w.detach().cpu().double().numpy().ravel() for w in weights]
    hist = np.stack([counts(w, weight_edges(wt.shape, bins)) for w, wt in zip(ws, weights)])
    edges = np.stack([weight_edges(wt.shape, bins) for wt in weights])
    obs.add("hist", hist, ["layer", "wbin_ext"])
    obs.add("edges", edges, ["layer", "wedge"])
    for key in ("mean", "std", "skew", "exkurt"):
        vals = np.array([float(moments(w[:, None])[key][0]) for w in ws])
        obs.add(key, vals, ["layer"])
        for li, v in enumerate(vals):
            obs.scalars[f"layer{li}.{key}"] = float(v)
    obs.attrs["hist_layout"] = "index 0: below edges[0]; 1..bins: bins; last: at or above edges[-1]"
    return obs


def measure(ctx: Context) -> Observation:
    return measure_weights(ctx.model.params(), ctx.cfg.measure.histogram_bins)

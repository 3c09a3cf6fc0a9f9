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
from ..registry import Figure, Observable
from .plotting import Reader, ridgeline


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


# ------------------------------------------------------------------ report figures


def fig3a(r: Reader, fig):
    eps, hists = r.series("weights", "hist")
    _, edges = r.series("weights", "edges")
    L = hists[0].shape[0]
    axes = fig.subplots(1, L, squeeze=False)[0]
    for li, ax in enumerate(axes):
        e = edges[0][li]
        centers = 0.5 * (e[1:] + e[:-1])
        ridgeline(ax, centers, [h[li][1:-1].astype(float) for h in hists], eps, "weight")
        ax.set_title(f"layer {li}", fontsize=8)
    fig.suptitle("Fig 3a: weight distributions per layer over epochs (bottom = first)")


# The registration (`adaptsym.registry`): name, measure function, settings section, report figures.
OBSERVABLE = Observable("weights", measure, settings=None, figures=(Figure("fig3a_weights", fig3a, (12, 3.5)),),
                        default=True, order=10)

"""Gradient of the risk over the measurement pool, per layer (SPEC section 3, Figs 4a, 4b).

Histograms on fixed symmetric-log bins (|g| from 1e-12 to 1e2), the same at every checkpoint;
per-layer moments and squared norms; the plasticity order parameter ||grad R||^2 and
Omega = lr ||grad R||^2 (the first-order loss decrease of one SGD step).
"""

from __future__ import annotations

import numpy as np

from ..stats.entry_stats import moments
from ..stats.histograms import counts, symlog_edges
from .observation import Context, Observation
from ..protocols import CurvatureOperator

GRAD_EDGES = symlog_edges(-12, 2, 128)


def measure_gradients(op: CurvatureOperator, lr: float) -> Observation:
    obs = Observation("gradients")
    grads = [g.detach().cpu().double().numpy().ravel() for g in op.gradient()]
    obs.add("hist", np.stack([counts(g, GRAD_EDGES) for g in grads]), ["layer", "gbin_ext"])
    obs.add("edges", GRAD_EDGES, ["gedge"])
    norm2 = np.array([float(g @ g) for g in grads])
    obs.add("norm2", norm2, ["layer"])
    for key in ("mean", "std", "skew", "exkurt"):
        obs.add(key, np.array([float(moments(g[:, None])[key][0]) if g.std() > 0 else 0.0 for g in grads]), ["layer"])
    obs.scalars["grad_norm2"] = float(norm2.sum())
    obs.scalars["omega"] = float(lr * norm2.sum())
    obs.attrs["lr"] = lr
    return obs


def measure(ctx: Context) -> Observation:
    return measure_gradients(ctx.op, ctx.cfg.train.lr)

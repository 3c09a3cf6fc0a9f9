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
from ..registry import Figure, Observable
from .plotting import Reader, ridgeline
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


# ------------------------------------------------------------------ report figures


def fig4a(r: Reader, fig):
    eps, hists = r.series("gradients", "hist")
    _, edges = r.series("gradients", "edges")
    e = edges[0]
    centers = np.sign(0.5 * (e[1:] + e[:-1])) * np.log10(np.abs(0.5 * (e[1:] + e[:-1])) / 1e-12 + 1)
    L = hists[0].shape[0]
    axes = fig.subplots(1, L, squeeze=False)[0]
    for li, ax in enumerate(axes):
        ridgeline(ax, centers, [h[li][1:-1].astype(float) for h in hists], eps, "sign(g) log10(1 + |g| / 1e-12)")
        ax.set_title(f"layer {li}", fontsize=8)
    fig.suptitle("Fig 4a: gradient distributions per layer over epochs")


def fig4b(r: Reader, fig):
    ep, omega = r.training("omega")
    _, loss = r.training("train_loss")
    ax = fig.subplots()
    ep, omega = np.asarray(ep), np.asarray(omega, dtype=float)
    pos = omega > 0
    ax.semilogy(ep[pos], omega[pos], "o-", label=r"$\Omega$ = lr $\|\nabla R\|^2$")
    if (~pos).any():  # an exact zero has no place on a log axis: marked apart, along the top edge
        ax.plot(ep[~pos], np.full((~pos).sum(), 0.96), "v", color="tab:blue", mfc="none",
                transform=ax.get_xaxis_transform(), label=r"$\Omega$ = 0 exactly (marked at the top)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$\Omega$ (loss units per step)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax2 = ax.twinx()
    ax2.plot(ep, loss, "s--", color="tab:red", label="train hinge loss")
    ax2.set_ylabel("train hinge loss")
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Fig 4b: plasticity order parameter and loss")


# The registration (`adaptsym.registry`): name, measure function, settings section, report figures.
OBSERVABLE = Observable("gradients", measure, settings=None, figures=(Figure("fig4a_gradients", fig4a, (12, 3.5)), Figure("fig4b_plasticity", fig4b, (7, 4))),
                        default=True, order=20)

"""Basis circuits: paths through the network and their values (SPEC section 3, Fig 3b).

A path i = (i_0, ..., i_L) runs from an input unit to the output through one unit per stage;
its value is Psi_i = x_{i0} * prod_l W^l (the weights it crosses) * prod gates, with a ReLU gate
1[pre-activation > 0] at every hidden unit and, for a CNN, a max-pool gate 1[the unit is its
window's argmax] (torch's choice: the first maximum in row-major order). In a CNN a path visits
(channel, position) units joined by kernel entries; a step into the zero padding kills it.
Sum over all paths of Psi = T(x). With c = dl/dT = -1[y T < 1] y, an order-1 circuit is
c Psi / W^l (one weight differentiated out) and sums to a gradient entry; order 2 is
c Psi / (W^l W^l') for two layers l < l' and sums to a Hessian entry.

Paths are walked from the output down, choosing a predecessor at each stage:
- `uniform`: uniformly among all predecessors (most paths die at a gate);
- `active`: uniformly among predecessors with active gates (and inside the image), so every
  path is alive; at the first layer (no gates below) uniformly among all inputs;
- `all`: every predecessor (exact enumeration, small nets only: used by the tests).
Each path carries its sampling probability, so mean(Psi / prob) is an unbiased estimate of T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..nets.indexing import ParamIndex
from ..nets.models import forward
from .observation import Observation
from ..config import CircuitSpec
from ..registry import Figure, Observable
from .plotting import Reader


@dataclass
class Paths:
    x: np.ndarray  # (P,) input value at i_0
    w: np.ndarray  # (P, L) weight crossed in each layer
    widx: np.ndarray  # (P, L) its global parameter index
    gate: np.ndarray  # (P,) product of all gates (0 or 1)
    logp: np.ndarray  # (P,) log sampling probability

    @property
    def value(self) -> np.ndarray:
        """Psi, order 0."""
        return self.x * self.gate * np.prod(self.w, axis=1)

    def without(self, layers) -> np.ndarray:
        """Psi with the weights of `layers` (a (P, k) array of layer indices) left out."""
        keep = np.ones_like(self.w, dtype=bool)
        np.put_along_axis(keep, np.asarray(layers), False, axis=1)
        return self.x * self.gate * np.prod(np.where(keep, self.w, 1.0), axis=1)


def _choose(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform choice among the True entries of each row; (choice, number of options).

    A row without options (no active predecessor: the whole unit is dead) gets count 0."""
    keys = rng.random(mask.shape) * mask
    return keys.argmax(axis=1), mask.sum(axis=1)


@dataclass
class _Walk:
    """The paths being walked, from the output down: per path the current unit (flat index into
    the tensor at this depth), the weight values and global indices met so far, the product of
    gates, the log-probability of the choices, and whether the path is alive."""

    unit: np.ndarray
    wv: np.ndarray
    wi: np.ndarray
    gate: np.ndarray
    logp: np.ndarray
    alive: np.ndarray

    @classmethod
    def start(cls, paths: int, layers: int) -> "_Walk":
        return cls(np.zeros(paths, dtype=np.int64), np.ones((paths, layers)), np.zeros((paths, layers), dtype=np.int64),
                   np.ones(paths), np.zeros(paths), np.ones(paths, dtype=bool))

    def expand(self, k: int) -> np.ndarray:
        """'all' mode: every path branches into k copies; returns each copy's branch 0..k-1."""
        for name in ("unit", "wv", "wi", "gate", "logp", "alive"):
            setattr(self, name, np.repeat(getattr(self, name), k, axis=0))
        return np.tile(np.arange(k), len(self.unit) // k)


def _linear_step(st: _Walk, a, w, li: int, offset: int, mode: str, rng) -> None:
    n_in = a.size
    if mode == "all":
        choice = st.expand(n_in)
        count = np.full(len(st.unit), n_in)
    else:
        P = len(st.unit)
        mask = np.ones((P, n_in), dtype=bool) if mode == "uniform" or li == 0 else \
            np.broadcast_to(a.ravel() > 0, (P, n_in))
        choice, count = _choose(mask, rng)
    st.wv[:, li] = w[st.unit, choice]
    st.wi[:, li] = offset + st.unit * n_in + choice
    st.alive &= count > 0
    st.logp -= np.log(np.maximum(count, 1))
    st.unit = choice


def _pool_step(st: _Walk, a, mode: str, rng) -> None:
    C, H, W = a.shape
    c, y, xx = np.unravel_index(st.unit, (C, H // 2, W // 2))
    win = np.stack([a[c, 2 * y + dy, 2 * xx + dx] for dy in (0, 1) for dx in (0, 1)], axis=1)
    first_max = win.argmax(axis=1)
    P = len(st.unit)
    if mode == "all":
        choice = st.expand(4)
        c, y, xx, first_max = (np.repeat(v, 4) for v in (c, y, xx, first_max))
        count = np.full(len(st.unit), 4)
    elif mode == "uniform":
        choice, count = rng.integers(0, 4, P), np.full(P, 4)
    else:
        choice, count = first_max, np.ones(P)
    st.gate *= choice == first_max
    st.logp -= np.log(count)
    st.unit = np.ravel_multi_index((c, 2 * y + choice // 2, 2 * xx + choice % 2), (C, H, W))


def _conv_step(st: _Walk, a, w, li: int, offset: int, mode: str, rng) -> None:
    Cin, H, W = a.shape
    co, y, xx = np.unravel_index(st.unit, (w.shape[0], H, W))
    k = Cin * 9
    ci_all, kh_all, kw_all = np.unravel_index(np.arange(k), (Cin, 3, 3))
    if mode == "all":
        choice = st.expand(k)
        co, y, xx = (np.repeat(v, k) for v in (co, y, xx))
        count = np.full(len(st.unit), k)
    else:
        P = len(st.unit)
        yy = y[:, None] + kh_all[None] - 1
        xw = xx[:, None] + kw_all[None] - 1
        inside = (yy >= 0) & (yy < H) & (xw >= 0) & (xw < W)
        if mode == "uniform":
            mask = np.ones((P, k), dtype=bool)
        else:
            act = np.zeros((P, k), dtype=bool)
            act[inside] = (a[np.broadcast_to(ci_all, (P, k))[inside], yy[inside], xw[inside]] > 0) \
                if li > 0 else True
            mask = inside & act
        choice, count = _choose(mask, rng)
    ci, kh, kw = ci_all[choice], kh_all[choice], kw_all[choice]
    yy, xw = y + kh - 1, xx + kw - 1
    inside = (yy >= 0) & (yy < H) & (xw >= 0) & (xw < W)
    st.alive &= inside & (count > 0)
    st.wv[:, li] = w[co, ci, kh, kw]
    st.wi[:, li] = offset + np.ravel_multi_index((co, ci, kh, kw), w.shape)
    st.logp -= np.log(np.maximum(count, 1))
    st.unit = np.ravel_multi_index((ci, np.clip(yy, 0, H - 1), np.clip(xw, 0, W - 1)), (Cin, H, W))


def walk(plan, weights, x: torch.Tensor, mode: str, n_paths: int = 0,
         rng: np.random.Generator | None = None) -> Paths:
    """Paths through the network for ONE example x (shape of a single input, no batch dim): from
    the output unit down, one step per operation (`_linear_step`, `_pool_step`, `_conv_step`;
    a ReLU multiplies the gate, a flatten keeps the flat index)."""
    if mode not in ("uniform", "active", "all"):
        raise ValueError(f"mode must be uniform, active or all; got {mode!r}")
    rng = rng or np.random.default_rng(0)
    trace: list = []
    with torch.no_grad():
        forward(plan, weights, x[None], trace=trace)
    ins = [t.detach().cpu().double().numpy()[0] for _, t in trace]
    ws = [w.detach().cpu().double().numpy() for w in weights]
    index = ParamIndex(tuple(w.shape for w in ws))
    st = _Walk.start(1 if mode == "all" else n_paths, len(ws))
    for step in range(len(plan) - 1, -1, -1):
        op, a = trace[step][0], ins[step]
        kind = op[0]
        if kind == "linear":
            _linear_step(st, a, ws[op[1]], op[1], index.offsets[op[1]], mode, rng)
        elif kind == "relu":
            st.gate *= (a.ravel()[st.unit] > 0)
        elif kind == "pool":
            _pool_step(st, a, mode, rng)
        elif kind == "conv":
            _conv_step(st, a, ws[op[1]], op[1], index.offsets[op[1]], mode, rng)
    xin = ins[0].ravel()[st.unit] * st.alive
    return Paths(xin, st.wv, st.wi, st.gate * st.alive, st.logp)


def loss_slope(plan, weights, x: torch.Tensor, y: float) -> float:
    """c = dl/dT for the hinge loss: -y where the margin y T(x) < 1, else 0."""
    with torch.no_grad():
        t = float(forward(plan, weights, x[None])[0])
    return -y if y * t < 1 else 0.0


def sample_circuits(plan, weights, x: torch.Tensor, y: torch.Tensor, n_paths: int, mode: str,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Circuit values of orders 0, 1, 2 for paths sampled on each example of (x, y).

    Order 1 differentiates out one uniformly chosen layer's weight of each path, order 2 two
    distinct layers. Returns arrays of length len(x) * n_paths, and 'estimate' (per example:
    mean of Psi / prob, an unbiased estimate of T(x)).
    """
    out = {"order0": [], "order1": [], "order2": [], "estimate": []}
    L = len(weights)
    for k in range(len(x)):
        p = walk(plan, weights, x[k], mode, n_paths, rng)
        c = loss_slope(plan, weights, x[k], float(y[k]))
        v0 = p.value
        l1 = rng.integers(0, L, (n_paths, 1))
        first = rng.integers(0, L, n_paths)
        second = (first + rng.integers(1, L, n_paths)) % L if L > 1 else first
        out["order0"].append(v0)
        out["order1"].append(c * p.without(l1))
        out["order2"].append(c * p.without(np.stack([first, second], axis=1)))
        out["estimate"].append(np.mean(v0 * np.exp(-p.logp)))
    return {k: np.concatenate([np.atleast_1d(v) for v in vals]) for k, vals in out.items()}


def measure_circuits(plan, weights, x: torch.Tensor, y: torch.Tensor, n_examples: int, n_paths: int,
                     seed: int, epoch: int):
    """Observation 'circuits': sampled circuit values, both modes, three orders."""

    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xC1C]))
    pick = np.sort(rng.choice(len(x), size=min(n_examples, len(x)), replace=False))
    obs = Observation("circuits")
    obs.add("example", pick, ["circuit_example"])
    with torch.no_grad():
        t = forward(plan, weights, x[pick]).detach().cpu().double().numpy()
    obs.add("T", t, ["circuit_example"])
    for mode in ("uniform", "active"):
        r = sample_circuits(plan, weights, x[pick], y[pick], n_paths, mode, rng)
        for order in ("order0", "order1", "order2"):
            obs.add(f"{mode}_{order}", r[order], ["circuit_sample"])
            obs.scalars[f"{mode}.{order}_nonzero_fraction"] = float(np.mean(r[order] != 0))
        obs.add(f"{mode}_estimate", r["estimate"], ["circuit_example"])
        scale = np.abs(t).mean() if np.abs(t).mean() > 0 else 1.0
        obs.scalars[f"{mode}.estimate_rel_error"] = float(np.abs(r["estimate"] - t).mean() / scale)
    obs.attrs["n_paths_per_example"] = n_paths
    return obs


def measure(ctx):
    """The registry's entry point (`adaptsym.observables.registry`): `measure_circuits` with the config's settings."""
    c = ctx.cfg.measure.circuits
    return measure_circuits(ctx.model.plan, ctx.model.params(), ctx.x, ctx.y, c.examples, c.paths, ctx.cfg.seed,
                            ctx.epoch)


# ------------------------------------------------------------------ report figures


def fig3b(r: Reader, fig):
    axes = fig.subplots(2, 3, squeeze=False)
    for row, mode in enumerate(("uniform", "active")):
        for o, order in enumerate(("order0", "order1", "order2")):
            ep, series = r.series("circuits", f"{mode}_{order}")
            ax = axes[row][o]
            pair = [(ep[0], series[0], "tab:blue"), (ep[-1], series[-1], "tab:red")]
            nz_all = np.concatenate([np.abs(v[v != 0]) for _, v, _ in pair])
            scale = 10 ** np.floor(np.log10(nz_all.min())) if nz_all.size else 1.0
            for e, v, col in pair:
                nz = v[v != 0]
                ax.hist(np.sign(nz) * np.log10(1 + np.abs(nz) / scale), bins=60, density=nz.size > 0,
                        histtype="step", color=col, label=f"epoch {e}")
            ax.set_xlabel(f"sign(v) log10(1 + |v| / {scale:.0e})", fontsize=7)
            counts = " / ".join(str(int((v != 0).sum())) for _, v, _ in pair)
            ax.set_title(f"{mode}, {order}: {counts} of {pair[0][1].size} non-zero", fontsize=8)
            ax.set_ylabel("density of paths", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Fig 3b: basis-circuit values, orders 0-2 (uniform and active-gate paths)")


# The registration (`adaptsym.registry`): name, measure function, settings section, report figures.
OBSERVABLE = Observable("circuits", measure, settings=CircuitSpec, figures=(Figure("fig3b_circuits", fig3b, (12, 6)),),
                        default=True, order=50)

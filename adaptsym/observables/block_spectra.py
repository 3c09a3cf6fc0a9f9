"""Spectra and traces of diagonal blocks of the pool Hessian: one per weight layer, H_ll, and one
per configured layer pair, the joint block [[H_ll, H_lm], [H_ml, H_mm]] (`measure.block_spectra`).

A block is an operator of its own: its product pads a block vector with zeros to the full
length, multiplies by H (`matvec` of any `CurvatureOperator`, so it runs sharded on Ray too) and
keeps the block's rows. Each block gets stochastic Lanczos quadrature (`spectrum.slq`, Rademacher
starts, steps capped at the block size), a smoothed density on its own grid, and Hutchinson's
trace estimate with its standard error. Tested against the dense blocks of small networks.

Arrays (dimension `block`: layers first, then pairs): `ritz_values`, `ritz_weights` (block,
start, ritz), `grid`, `density` (block, lam); `size`, `lambda_min`, `lambda_max`,
`trace_estimate`, `trace_stderr` (block). Attribute `blocks`: the names (`L0`, ..., `L0+L2`).
Scalars: the largest block trace in absolute value and its block index.
"""

from __future__ import annotations

import numpy as np
import torch

from .observation import Context, Observation
from ..config import BlockSpectraSpec
from ..registry import Figure, Observable
from ..protocols import CurvatureOperator
from .spectrum import default_sigma, hutchinson, slq, smoothed_density


def layer_slices(weights) -> list[slice]:
    """Positions of each weight tensor in the flat parameter vector."""
    out, start = [], 0
    for w in weights:
        out.append(slice(start, start + w.numel()))
        start += w.numel()
    return out


def block_matvec(op: CurvatureOperator, idx: torch.Tensor):
    """v -> (H v_padded)[idx]: the principal block of H on the flat positions `idx`."""

    def mv(v: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(op.n_params, dtype=v.dtype, device=v.device)
        full[idx] = v
        return op.matvec(full)[idx]

    return mv


def blocks_of(weights, pairs) -> list[tuple[str, torch.Tensor]]:
    sl = layer_slices(weights)
    device = weights[0].device
    out = [(f"L{i}", torch.arange(s.start, s.stop, device=device)) for i, s in enumerate(sl)]
    for a, b in pairs:
        if not (0 <= a < len(sl) and 0 <= b < len(sl)) or a == b:
            raise ValueError(f"block_spectra.pairs: [{a}, {b}] is not a pair of two of the {len(sl)} layers")
        out.append((f"L{a}+L{b}", torch.cat([out[a][1], out[b][1]])))
    return out


def measure_block_spectra(op: CurvatureOperator, starts: int, steps: int, samples: int, grid: int, sigma_rel: float,
                          pairs, seed: int, epoch: int) -> Observation:
    w0 = op.weights[0]
    blocks = blocks_of(op.weights, pairs)
    m = max(min(steps, len(idx)) for _, idx in blocks)
    K = len(blocks)
    nodes, wts = np.zeros((K, starts, m)), np.zeros((K, starts, m))
    grids, dens = np.zeros((K, grid)), np.zeros((K, grid))
    per = {k: np.zeros(K) for k in ("size", "lambda_min", "lambda_max", "trace_estimate", "trace_stderr")}
    for b, (name, idx) in enumerate(blocks):
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xB10C, b]))
        mv = block_matvec(op, idx)
        res = slq(mv, len(idx), starts, min(steps, len(idx)), rng, dtype=w0.dtype, device=w0.device,
                  basis_dtype=w0.dtype)
        k = res.nodes.shape[1]
        nodes[b, :, :k], wts[b, :, :k] = res.nodes, res.weights
        lo, hi = res.extremes
        sigma = default_sigma(res.nodes, res.weights, sigma_rel)
        grids[b] = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid)
        dens[b] = smoothed_density(res.nodes, res.weights, grids[b], sigma)
        tr, se = hutchinson(mv, len(idx), samples, rng, dtype=w0.dtype, device=w0.device)
        per["size"][b], per["lambda_min"][b], per["lambda_max"][b] = len(idx), lo, hi
        per["trace_estimate"][b], per["trace_stderr"][b] = tr, se
    obs = Observation("block_spectra")
    obs.add("ritz_values", nodes, ["block", "start", "ritz"])
    obs.add("ritz_weights", wts, ["block", "start", "ritz"])
    obs.add("grid", grids, ["block", "lam"])
    obs.add("density", dens, ["block", "lam"])
    for key, arr in per.items():
        obs.add(key, arr, ["block"])
    obs.attrs["blocks"] = [name for name, _ in blocks]
    top = int(np.argmax(np.abs(per["trace_estimate"])))
    obs.scalars.update(max_abs_block_trace=float(per["trace_estimate"][top]), max_abs_block_trace_block=top)
    return obs


def measure(ctx: Context) -> Observation:
    b = ctx.cfg.measure.block_spectra
    return measure_block_spectra(ctx.op, b.starts, b.steps, b.samples, b.grid, b.sigma_rel, b.pairs, ctx.cfg.seed,
                                 ctx.epoch)


def figure(r, fig) -> None:
    """Each block's density at the last checkpoint (report)."""
    eps, grids = r.series("block_spectra", "grid")
    _, dens = r.series("block_spectra", "density")
    names = r.store.attrs(f"{r.groups[r.epochs.index(eps[-1])]}/block_spectra").get("blocks", [])
    ax = fig.subplots()
    for b in range(grids[-1].shape[0]):
        ax.plot(grids[-1][b], dens[-1][b], lw=1, label=names[b] if b < len(names) else f"block {b}")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue of the block")
    ax.set_ylabel("smoothed density")
    ax.set_title(f"diagonal blocks of H, epoch {eps[-1]}", fontsize=9)
    ax.legend(fontsize=7)


# The registration (`adaptsym.registry`): name, measure function, settings section, report figures.
OBSERVABLE = Observable("block_spectra", measure, settings=BlockSpectraSpec, figures=(Figure("block_spectra", figure, (8, 4.5)),),
                        default=False, order=60)

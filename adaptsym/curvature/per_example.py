"""Per-example Hessian entries h[k, i, j] = d^2 l_k / d theta_{I_i} d theta_{J_j} (SPEC section 4).

Fast path (`per_example_entries`): every example k gets its own perturbation u[k, r] of the
weight entry of row r (`models.RowSelection`). The gradient of the *summed* loss in u is the
per-example gradient at the rows, because u[k, .] touches only example k; its forward-mode
derivative along the tangent e_q (a column) is the per-example Hessian column at the rows.
One batched pass per (example chunk, column chunk) thus yields all |I| rows for all examples,
so |J| columns over n examples cost about |J| pool HVPs (the per-layer gradient is the
product of the layer input and the back-propagated signal; u picks out its entries).

Reference path (`per_example_entries_vmap`): `vmap` over examples of a per-example HVP,
reading the rows. Slower; tests compare the two and both against brute-force Hessians.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.func import grad, jvp, vmap
from tqdm.auto import tqdm

from .hvp import active_examples
from .operator import one_hot_tangents
from ..nets.indexing import ParamIndex
from ..nets.losses import HINGE, Loss
from ..nets.models import RowSelection, forward
from ..progress import bar_off
from .entries import block_entries


def _row_grad_fn(plan, sel: RowSelection, loss: Loss = HINGE):
    """(weights, x, y) -> per-example gradient at the selected rows, shape (n, |I|)."""

    def summed(u, weights, x, y):
        return loss(forward(plan, weights, x, rows=sel, u=u), y).sum()

    g = grad(summed)

    def fn(weights, x, y):
        u0 = torch.zeros((x.shape[0], sel.n_rows), dtype=weights[0].dtype, device=weights[0].device)
        return g(u0, weights, x, y)

    return fn


def per_example_gradients(plan, weights, x, y, rows: Sequence[int], loss: Loss = HINGE) -> torch.Tensor:
    """Per-example gradient entries dl_k/d theta_I, shape (n, |I|) in the caller's row order."""
    weights = tuple(w.detach() for w in weights)
    index = ParamIndex.from_weights(weights)
    sel = RowSelection.build(rows, index, [tuple(w.shape) for w in weights], device=weights[0].device)
    g = _row_grad_fn(plan, sel, loss)(weights, x, y)
    out = torch.empty_like(g)
    out[:, torch.as_tensor(sel.order, device=g.device)] = g
    return out


def per_example_entries(plan, weights, x, y, rows: Sequence[int], cols: Sequence[int],
                        example_chunk: int = 256, column_chunk: int = 8, progress: bool = False,
                        loss: Loss = HINGE) -> np.ndarray:
    """h[k, i, j] for rows I and columns J over all examples: a (n, |I|, |J|) float64 array.

    The entries of the block design I x J (`design_entries`), reshaped; memory is bounded by one
    (example_chunk x column_chunk) tile whatever n and N are.
    """

    design = block_entries(ParamIndex.from_weights(weights), rows, cols)
    h = design_entries(plan, weights, x, y, design, example_chunk, column_chunk, progress, loss)
    return h.reshape(len(x), len(design.cols), len(design.rows)).transpose(0, 2, 1)


def design_tile(plan, weights, index: ParamIndex, design, xb, yb, a0: int, a1: int, loss: Loss = HINGE) -> np.ndarray:
    """Per-example entries a0 <= a < a1 of `design` for the examples (xb, yb): (len(xb), a1 - a0).

    The one tile function of both the single-process and the distributed paths: it builds the
    rows and columns these entries need, runs one batched pass, and reads the entries out.
    Examples that cannot contribute (hinge: margin > 1) have h = 0 exactly; the pass runs only on the others.
    """
    act = active_examples(plan, weights, xb, yb, max(1, len(xb)), loss)
    if len(act) < len(xb):
        out = np.zeros((len(xb), a1 - a0), dtype=np.float64)
        if len(act):
            out[act.cpu().numpy()] = design_tile(plan, weights, index, design, xb[act], yb[act], a0, a1, loss)
        return out
    rp, cp = design.row_pos[a0:a1], design.col_pos[a0:a1]
    rows_u, r_loc = np.unique(rp, return_inverse=True)
    cols_u, c_loc = np.unique(cp, return_inverse=True)
    sel = RowSelection.build(design.rows[rows_u], index, [tuple(w.shape) for w in weights], device=weights[0].device)
    tile = entries_tile(_row_grad_fn(plan, sel, loss), sel, index, weights, xb, yb, design.cols[cols_u])
    return tile[:, r_loc, c_loc]


def design_entries(plan, weights, x, y, design, example_chunk: int = 256, column_chunk: int = 8,
                   progress: bool = False, loss: Loss = HINGE) -> np.ndarray:
    """Per-example entries of an `EntryDesign`: an (n, K) float64 array, tile by tile (in memory)."""
    weights = tuple(w.detach() for w in weights)
    index = ParamIndex.from_weights(weights)
    n, K = len(x), design.n_entries
    ea = design.entry_chunk(column_chunk)
    out = np.empty((n, K), dtype=np.float64)
    tiles = [(i, a) for i in range(0, n, example_chunk) for a in range(0, K, ea)]
    for i, a in tqdm(tiles, desc="per-example entries", disable=bar_off(progress), unit="tile", leave=False):
        out[i : i + example_chunk, a : a + ea] = design_tile(plan, weights, index, design, x[i : i + example_chunk],
                                                             y[i : i + example_chunk], a, min(a + ea, K), loss)
    return out


def entries_tile(row_grad, sel: RowSelection, index: ParamIndex, weights, xb, yb, cols) -> np.ndarray:
    """One tile: (len(xb), |I|, len(cols)) per-example entries, rows in the caller's order."""
    tangents = one_hot_tangents(index, cols, weights)
    one = lambda t: jvp(lambda w: row_grad(w, xb, yb), (weights,), (t,))[1]
    hv = vmap(one)(tangents)  # (c, nb, |I| in selection order)
    tile = np.empty((xb.shape[0], sel.n_rows, len(cols)), dtype=np.float64)
    tile[:, sel.order, :] = hv.permute(1, 2, 0).detach().cpu().double().numpy()
    return tile


def per_example_entries_vmap(plan, weights, x, y, rows: Sequence[int], cols: Sequence[int],
                             loss: Loss = HINGE) -> np.ndarray:
    """Reference: vmap over examples of per-example HVP columns, rows read out. (n, |I|, |J|)."""
    weights = tuple(w.detach() for w in weights)
    index = ParamIndex.from_weights(weights)
    tangents = one_hot_tangents(index, cols, weights)
    rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=weights[0].device)

    def loss1(w, xk, yk):
        return loss(forward(plan, w, xk[None]), yk[None]).sum()

    g1 = grad(loss1)

    def example(xk, yk):
        def col(t):
            hv = jvp(lambda w: g1(w, xk, yk), (weights,), (t,))[1]
            return torch.cat([h.reshape(-1) for h in hv])[rows_t]

        return vmap(col)(tangents).T  # (|I|, |J|)

    return vmap(example)(x, y).detach().cpu().double().numpy()

"""Bias-free ReLU networks (MLP and VGG-style CNN) with one output unit T(x).

The network is a *plan* (a list of operations) plus a tuple of weight tensors, and
`forward(plan, weights, x)` is a pure function of both, so `torch.func` transforms it
directly. Two optional hooks serve the measurements:

- `rows`: a `RowSelection` adds, for every example k, a perturbation u[k, r] to the weight
  entry of row r (only for example k). The gradient of the summed loss in u is then the
  per-example gradient at those rows; this is how per-example Hessian entries are read
  out of one batched pass (see `adaptsym.curvature.per_example`).
- `trace`: a list that receives every operation's input (for basis circuits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelSpec
from .indexing import ParamIndex


def build_plan(spec: ModelSpec, input_shape: tuple[int, ...]) -> tuple[list[tuple], list[tuple[int, ...]]]:
    """Operations and weight shapes for `spec` on inputs of `input_shape` (C, H, W) or (D,)."""
    plan: list[tuple] = []
    shapes: list[tuple[int, ...]] = []
    conv = spec.conv_widths()
    if conv:
        if len(input_shape) != 3:
            raise ValueError(f"a cnn needs image inputs (C, H, W); data has shape {input_shape}")
        c, h, w = input_shape
        for item in conv:
            if item == "M":
                if h < 2 or w < 2:
                    raise ValueError(f"max-pool on a {h}x{w} feature map: too many 'M' for this input")
                plan.append(("pool",))
                h, w = h // 2, w // 2
            else:
                plan.append(("conv", len(shapes)))
                plan.append(("relu",))
                shapes.append((item, c, 3, 3))
                c = item
        features = c * h * w
    else:
        features = int(np.prod(input_shape))
    plan.append(("flatten",))
    for width in spec.hidden_widths() + [1]:
        plan.append(("linear", len(shapes)))
        plan.append(("relu",))
        shapes.append((width, features))
        features = width
    plan.pop()  # no gate after the output unit
    return plan, shapes


def he_init(shapes, generator: torch.Generator | None = None, dtype=torch.float32) -> list[torch.Tensor]:
    """He normal init, variance 2/fan_in (the ReLU edge of chaos, chi_1 = 1)."""
    out = []
    for shape in shapes:
        fan_in = int(np.prod(shape[1:]))
        out.append(torch.randn(shape, generator=generator, dtype=dtype) * (2.0 / fan_in) ** 0.5)
    return out


@dataclass
class RowSelection:
    """Weight entries ("rows" of the Hessian) whose per-example gradients are wanted.

    Built once from global indices; `layers[l]` is None or a dict of index tensors for
    layer l and the slice of the u columns that belong to it. Column r of u is row
    `order[r]` of the indices given to `build` (rows are regrouped by layer).
    """

    n_rows: int
    layers: list
    order: np.ndarray  # position in the caller's row list of each u column

    @classmethod
    def build(cls, global_rows, index: ParamIndex, shapes, device=None) -> "RowSelection":
        global_rows = np.asarray(global_rows, dtype=np.int64)
        layer, flat = index.to_local(global_rows)
        layers: list = [None] * index.n_layers
        order = []
        start = 0
        for li in range(index.n_layers):
            pos = np.nonzero(layer == li)[0]
            if pos.size == 0:
                continue
            order.append(pos)
            idx = np.unravel_index(flat[pos], shapes[li])
            entry = {"cols": slice(start, start + pos.size)}
            as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)
            entry["out"] = as_t(idx[0])
            entry["inp"] = as_t(idx[1])
            if len(shapes[li]) == 4:  # conv: group rows by kernel offset (kh, kw)
                offs = idx[2] * 3 + idx[3]
                groups = []
                for off in np.unique(offs):
                    m = np.nonzero(offs == off)[0]
                    groups.append((int(off) // 3, int(off) % 3, as_t(idx[1][m])))
                perm = np.concatenate([np.nonzero(offs == off)[0] for off in np.unique(offs)])
                entry["groups"] = groups
                entry["inv"] = as_t(np.argsort(perm))
            layers[li] = entry
            start += pos.size
        return cls(int(global_rows.size), layers, np.concatenate(order) if order else np.zeros(0, np.int64))


def _linear(a, w, li, rows, u):
    z = a @ w.T
    if rows is not None and rows.layers[li] is not None:
        e = rows.layers[li]
        z = z.index_add(1, e["out"], u[:, e["cols"]] * a[:, e["inp"]])
    return z


def _conv(a, w, li, rows, u):
    z = F.conv2d(a, w, padding=1)
    if rows is not None and rows.layers[li] is not None:
        e = rows.layers[li]
        h, wd = a.shape[-2:]
        ap = F.pad(a, (1, 1, 1, 1))
        parts = [ap[:, ci, kh : kh + h, kw : kw + wd] for kh, kw, ci in e["groups"]]
        patches = torch.cat(parts, dim=1)[:, e["inv"]]
        z = z.index_add(1, e["out"], u[:, e["cols"], None, None] * patches)
    return z


def forward(plan, weights, x, rows: RowSelection | None = None, u=None, trace: list | None = None):
    """T(x) for a batch: shape (n,). Pure in `weights`, `x` and `u`.

    With `trace`, appends (op, input tensor of that op) for every op, then (("output",), T).
    """
    a = x
    for op in plan:
        if trace is not None:
            trace.append((op, a))
        kind = op[0]
        if kind == "conv":
            a = _conv(a, weights[op[1]], op[1], rows, u)
        elif kind == "linear":
            a = _linear(a, weights[op[1]], op[1], rows, u)
        elif kind == "relu":
            a = torch.relu(a)
        elif kind == "pool":
            a = F.max_pool2d(a, 2)
        elif kind == "flatten":
            a = a.reshape(a.shape[0], -1)
    if trace is not None:
        trace.append((("output",), a))
    return a[:, 0]


class BiasFreeNet(nn.Module):
    """A bias-free ReLU network built from a `ModelSpec` for a given input shape."""

    def __init__(self, spec: ModelSpec, input_shape, seed: int | None = 0, dtype=torch.float32):
        super().__init__()
        self.spec = spec
        self.input_shape = tuple(int(s) for s in input_shape)
        self.plan, shapes = build_plan(spec, self.input_shape)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.weights = nn.ParameterList([nn.Parameter(w) for w in he_init(shapes, gen, dtype)])

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(w.shape) for w in self.weights]

    @property
    def index(self) -> ParamIndex:
        return ParamIndex(tuple(self.shapes))

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def n_params(self) -> int:
        return sum(w.numel() for w in self.weights)

    def layer_names(self) -> list[str]:
        names = []
        for op in self.plan:
            if op[0] in ("conv", "linear"):
                names.append(f"{op[0]}{op[1]}")
        return names

    def params(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.plan, self.params(), x)


def flatten_params(weights) -> torch.Tensor:
    return torch.cat([w.reshape(-1) for w in weights])


def unflatten_params(vec: torch.Tensor, shapes) -> tuple[torch.Tensor, ...]:
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(vec[start : start + n].reshape(s))
        start += n
    return tuple(out)

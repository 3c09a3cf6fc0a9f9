"""Hessian-vector products of the pool risk R = mean_k l_k (one operator, chunked).

`PoolHessian` holds a model (plan + weights) and a pool (x, y). Products are computed chunk
by chunk over the pool (memory bounded by `chunk` examples) and summed with weight
|chunk|/n. Two methods:

- `fwd-rev` (default): forward-over-reverse, `torch.func.jvp` of `torch.func.grad`;
- `double-backward`: reverse-over-reverse with `torch.autograd.grad(create_graph=True)`.

Vectors are tuples of tensors shaped like the weights; `matvec` takes flat vectors and
`columns` returns H[:, J] for global indices J (several columns per pass via `vmap`).
The same code runs on CPU and CUDA: everything follows the weights' device and dtype.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from .indexing import ParamIndex
from .losses import hinge
from .models import flatten_params, forward, unflatten_params

Vec = tuple[torch.Tensor, ...]


def _sum_loss(plan):
    def f(weights, x, y):
        return hinge(forward(plan, weights, x), y).sum()

    return f


def one_hot_tangents(index: ParamIndex, cols: Sequence[int], like: Sequence[torch.Tensor]) -> Vec:
    """Batched tangents e_q for global indices `cols`: per layer a (len(cols), *shape) tensor."""
    cols = np.asarray(cols, dtype=np.int64)
    layer, flat = index.to_local(cols)
    out = []
    for li, w in enumerate(like):
        t = torch.zeros((len(cols), w.numel()), dtype=w.dtype, device=w.device)
        sel = np.nonzero(layer == li)[0]
        if sel.size:
            t[torch.as_tensor(sel, device=w.device), torch.as_tensor(flat[sel], device=w.device)] = 1.0
        out.append(t.reshape((len(cols),) + tuple(w.shape)))
    return tuple(out)


class PoolHessian:
    """Gradient and Hessian-vector products of the mean hinge risk over a pool."""

    def __init__(self, plan, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 chunk: int | None = None, method: str = "fwd-rev"):
        if method not in ("fwd-rev", "double-backward"):
            raise ValueError(f"method must be 'fwd-rev' or 'double-backward', got {method!r}")
        self.plan = plan
        self.weights = tuple(w.detach() for w in weights)
        self.x, self.y = x, y
        self.n = len(x)
        self.chunk = chunk or self.n
        self.method = method
        self.index = ParamIndex.from_weights(self.weights)
        self.shapes = [tuple(w.shape) for w in self.weights]
        self._loss = _sum_loss(plan)
        self._grad = grad(self._loss)

    @property
    def n_params(self) -> int:
        return self.index.n_params

    def _chunks(self):
        for i in range(0, self.n, self.chunk):
            yield self.x[i : i + self.chunk], self.y[i : i + self.chunk]

    def _accumulate(self, fn: Callable) -> Vec:
        total = None
        for xb, yb in self._chunks():
            part = fn(xb, yb)
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        return tuple(t / self.n for t in total)

    def gradient(self) -> Vec:
        return self._accumulate(lambda xb, yb: self._grad(self.weights, xb, yb))

    def hvp(self, v: Vec) -> Vec:
        v = tuple(t.to(dtype=w.dtype) for t, w in zip(v, self.weights))
        if self.method == "fwd-rev":
            def fn(xb, yb):
                return jvp(lambda w: self._grad(w, xb, yb), (self.weights,), (v,))[1]
        else:
            def fn(xb, yb):
                w = tuple(t.detach().requires_grad_(True) for t in self.weights)
                g = torch.autograd.grad(self._loss(w, xb, yb), w, create_graph=True)
                dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
                return tuple(t.detach() for t in torch.autograd.grad(dot, w))
        return self._accumulate(fn)

    def hvp_batch(self, vs: Vec) -> Vec:
        """H v for a batch of vectors (leading dimension m on every tensor), fwd-rev via vmap."""
        def fn(xb, yb):
            one = lambda v: jvp(lambda w: self._grad(w, xb, yb), (self.weights,), (v,))[1]
            return vmap(one)(vs)

        return self._accumulate(fn)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length N."""
        return flatten_params(self.hvp(unflatten_params(v.to(self.weights[0]), self.shapes)))

    def columns(self, cols: Sequence[int], per_pass: int = 8) -> torch.Tensor:
        """Dense H[:, cols] as an (N, len(cols)) tensor."""
        cols = np.asarray(cols, dtype=np.int64)
        out = []
        for i in range(0, len(cols), per_pass):
            t = one_hot_tangents(self.index, cols[i : i + per_pass], self.weights)
            hv = self.hvp_batch(t)
            out.append(torch.cat([h.reshape(h.shape[0], -1) for h in hv], dim=1).T)
        return torch.cat(out, dim=1)

    def dense(self) -> torch.Tensor:
        """The whole N x N Hessian (small models only)."""
        return self.columns(np.arange(self.n_params))

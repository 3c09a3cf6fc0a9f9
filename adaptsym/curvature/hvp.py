"""Hessian-vector products of the pool risk R = mean_k l_k (one operator, chunked).

`PoolHessian` holds a model (plan + weights) and a pool (x, y). Products are computed chunk
by chunk over the pool (memory bounded by `chunk` examples) and summed with weight
|chunk|/n. The loss is an argument (`losses.Loss`, hinge by default). For the hinge only the
examples with loss > 0 or on the hinge (margin <= 1) take part: the others have zero gradient
and zero Hessian, exactly, so dropping them changes nothing but the cost. Methods:

- `fwd-rev`: forward-over-reverse, `torch.func.jvp` of `torch.func.grad`; recomputes the
  forward pass and the gradient for every product, holds no graph;
- `double-backward`: reverse-over-reverse with `torch.autograd.grad(create_graph=True)`,
  also rebuilt for every product;
- `graph`: builds each chunk's first-order graph (the gradient with `create_graph=True`) once
  and does every product as one backward pass through it (`retain_graph=True`), as PyHessian
  does. Fastest for many products (Lanczos), but holds the graphs of the whole pool;
- `auto` (default): `graph` while the graphs' saved tensors fit `graph_budget_bytes`, else
  `fwd-rev` (the graphs are dropped as soon as the budget is exceeded).

The one product hook is `_matmat` (a batch of vectors, each a tuple of tensors shaped like the
weights); `matvec`, `matmat` (flat vectors), `columns` (H[:, J] for global indices J, several per
pass) and `dense` derive from it (`operator.HessianOperator`).
The same code runs on CPU and CUDA: everything follows the weights' device and dtype.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import grad, jvp, vmap

from ..nets.indexing import ParamIndex
from ..nets.losses import HINGE, Loss
from ..nets.models import forward
from .operator import HessianOperator

Vec = tuple[torch.Tensor, ...]


def _sum_loss(plan, loss: Loss):
    def f(weights, x, y):
        return loss(forward(plan, weights, x), y).sum()

    return f


METHODS = ("auto", "graph", "fwd-rev", "double-backward")
GRAPH_BUDGET_BYTES = 2**30


def active_examples(plan, weights, x: torch.Tensor, y: torch.Tensor, chunk: int, loss: Loss = HINGE) -> torch.Tensor:
    """Indices of the examples that can have a non-zero gradient or Hessian of `loss` (hinge:
    margin y T(x) <= 1, `losses.hinge_active`); all of them for a loss without such a test."""
    if loss.active is None:
        return torch.arange(len(x), device=x.device)
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    with torch.no_grad():
        out = torch.cat([forward(plan, weights, x[i : i + chunk]) for i in range(0, len(x), chunk)])
    return torch.nonzero(loss.active(out, y)).flatten()


class SavedBytes:
    """Counts the bytes of the distinct storages autograd saves while active (a tensor saved by
    several graph nodes, e.g. a ReLU output that the next layer also keeps, counts once), leaving
    out those of `exclude` (the weights, which a layer saves but which exist anyway)."""

    def __init__(self, exclude=()):
        self.storages: dict = {}
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t):
        st = t.untyped_storage()
        if st.data_ptr() not in self.exclude:
            self.storages[(st.data_ptr(), t.device)] = st.nbytes()
        return t

    @property
    def total(self) -> int:
        return int(sum(self.storages.values()))

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


class PoolHessian(HessianOperator):
    """Gradient and Hessian products of the mean risk over a pool (`loss`: hinge by default).

    The one product hook is `_matmat` (`operator.HessianOperator`): the strategy (`method`) is
    fixed once, at the first product, and a batch of one vector takes the unbatched path of that
    strategy, several vectors its batched one."""

    def __init__(self, plan, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 chunk: int | None = None, method: str = "auto", graph_budget_bytes: float | None = None,
                 loss: Loss = HINGE):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.plan = plan
        self.weights = tuple(w.detach() for w in weights)
        self.n = len(x)
        self.chunk = chunk or max(1, self.n)
        self.loss = loss
        keep = active_examples(plan, self.weights, x, y, self.chunk, loss)
        self.x, self.y = x[keep], y[keep]
        self.n_active = len(keep)
        self.method = method
        self.graph_budget_bytes = GRAPH_BUDGET_BYTES if graph_budget_bytes is None else graph_budget_bytes
        self._graphs: list | None = None
        self.graph_bytes = 0
        self.index = ParamIndex.from_weights(self.weights)
        self._loss = _sum_loss(plan, loss)
        self._grad = grad(self._loss)
        self._single: Callable | None = None  # the strategy's product with one vector, fixed at the first product
        self._batched: Callable | None = None  # and with a batch of vectors

    def _chunks(self):
        for i in range(0, self.n_active, self.chunk):
            yield self.x[i : i + self.chunk], self.y[i : i + self.chunk]

    def _accumulate(self, fn: Callable, parts=None) -> Vec:
        total = None
        for part in (parts if parts is not None else (fn(xb, yb) for xb, yb in self._chunks())):
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        if total is None:  # no active example: R is flat here
            return tuple(torch.zeros_like(w) for w in self.weights)
        return tuple(t / self.n for t in total)

    @property
    def uses_graph(self) -> bool:
        """Whether products go through stored first-order graphs (fixes the strategy on first use)."""
        self._choose()
        return self._graphs is not None

    def _choose(self) -> None:
        """Fix the product strategy: stored graphs (`graph`, or `auto` while they fit the budget),
        else forward-over-reverse, or double-backward for one vector when asked for."""
        if self._single is not None:
            return
        if self.method in ("auto", "graph"):
            self._build_graphs()  # under `auto`, falls back to fwd-rev above the budget
        if self._graphs is not None:
            self._single = lambda v: self._through_graphs(v, batched=False)
            self._batched = lambda vs: self._through_graphs(vs, batched=True)
        else:
            self._single = self._double_backward if self.method == "double-backward" else self._fwd_rev
            self._batched = self._vmap_fwd_rev

    def _build_graphs(self) -> None:
        """First-order graphs of every chunk, counting their saved tensors' bytes; under `auto`
        they are dropped (and fwd-rev used from then on) once the count passes the budget."""
        graphs, counter = [], SavedBytes(exclude=self.weights)
        for xb, yb in self._chunks():
            w = tuple(t.detach().requires_grad_(True) for t in self.weights)
            with torch.enable_grad(), counter:
                g = torch.autograd.grad(self._loss(w, xb, yb), w, create_graph=True)
            graphs.append((w, g))
            if self.method == "auto" and counter.total > self.graph_budget_bytes:
                self.method, self.graph_bytes = "fwd-rev", 0
                return
        self._graphs, self.graph_bytes = graphs, counter.total

    def _through_graphs(self, vs: Vec, batched: bool) -> Vec:
        return self._accumulate(None, (
            torch.autograd.grad(g, w, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                materialize_grads=True, is_grads_batched=batched)
            for w, g in self._graphs))

    def gradient(self) -> Vec:
        return self._accumulate(lambda xb, yb: self._grad(self.weights, xb, yb))

    def _matmat(self, vs: Vec) -> Vec:
        """H V for a batch of m vectors (one tensor per weight tensor, leading dimension m)."""
        self._choose()
        vs = tuple(t.to(dtype=w.dtype) for t, w in zip(vs, self.weights))
        if vs[0].shape[0] == 1:
            return tuple(t[None] for t in self._single(tuple(t[0] for t in vs)))
        return self._batched(vs)

    # ------------------------------------------------------------------ the strategies
    def _fwd_rev(self, v: Vec) -> Vec:
        return self._accumulate(lambda xb, yb: jvp(lambda w: self._grad(w, xb, yb), (self.weights,), (v,))[1])

    def _double_backward(self, v: Vec) -> Vec:
        def fn(xb, yb):
            w = tuple(t.detach().requires_grad_(True) for t in self.weights)
            g = torch.autograd.grad(self._loss(w, xb, yb), w, create_graph=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
            return tuple(t.detach() for t in torch.autograd.grad(dot, w))

        return self._accumulate(fn)

    def _vmap_fwd_rev(self, vs: Vec) -> Vec:
        def fn(xb, yb):
            one = lambda v: jvp(lambda w: self._grad(w, xb, yb), (self.weights,), (v,))[1]  # noqa: E731
            return vmap(one)(vs)

        return self._accumulate(fn)

"""The curvature operator as a small base class, `HessianOperator`: one product hook, `_matmat`.

A subclass says how to multiply its operator into a batch of m vectors, each given as one tensor
per weight tensor with a leading dimension m (`_matmat(V) -> H V`), and what the risk's gradient
is. Every other product derives from that hook here, the same for every implementation:
`matmat` (flat (N, m) matrices), `matvec` (one flat vector), `columns` (dense columns of H) and
`dense` (all of H, small models only). `curvature.hvp.PoolHessian` implements the hook in this
process, `services.executor.ShardedHessian` by summing the shards of its actors; both satisfy the
`protocols.CurvatureOperator` interface the observables are written against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..nets.indexing import ParamIndex

Vec = tuple  # one tensor per weight tensor


def one_hot_tangents(index: ParamIndex, cols, weights) -> Vec:
    """Per-weight-tensor batches of one-hot tangent vectors e_q for the global indices `cols`."""
    layer, flat = index.to_local(np.asarray(cols, dtype=np.int64))
    out = []
    for li, w in enumerate(weights):
        t = torch.zeros((len(cols), w.numel()), dtype=w.dtype, device=w.device)
        sel = np.nonzero(layer == li)[0]
        if sel.size:
            t[torch.as_tensor(sel, device=w.device), torch.as_tensor(flat[sel], device=w.device)] = 1.0
        out.append(t.reshape((len(cols),) + tuple(w.shape)))
    return tuple(out)


class HessianOperator:
    """H (N x N) on the weights `weights` of a pool of `n` examples, known only by its products."""

    weights: tuple[torch.Tensor, ...]
    n: int

    # ------------------------------------------------------------------ what a subclass provides
    def _matmat(self, vs: Vec) -> Vec:
        """H V for a batch of m vectors: one tensor per weight tensor, leading dimension m."""
        raise NotImplementedError

    def gradient(self) -> Vec:
        """The pool risk's gradient, one tensor per weight tensor."""
        raise NotImplementedError

    # ------------------------------------------------------------------ derived from the hook
    @property
    def n_params(self) -> int:
        return int(sum(w.numel() for w in self.weights))

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(w.shape) for w in self.weights]

    def matmat(self, M: torch.Tensor) -> torch.Tensor:
        """H M for a flat (N, m) matrix."""
        M = M.to(self.weights[0])
        vs, i = [], 0
        for w in self.weights:
            vs.append(M[i : i + w.numel()].T.reshape((M.shape[1],) + tuple(w.shape)))
            i += w.numel()
        out = self._matmat(tuple(vs))
        return torch.cat([t.reshape(t.shape[0], -1) for t in out], dim=1).T

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector of length N."""
        return self.matmat(v.reshape(-1, 1))[:, 0]

    def columns(self, cols: Sequence[int], per_pass: int = 8) -> torch.Tensor:
        """Dense H[:, cols] as an (N, len(cols)) tensor, `per_pass` columns per product."""
        cols = np.asarray(cols, dtype=np.int64)
        index = ParamIndex.from_weights(self.weights)
        out = []
        for i in range(0, len(cols), per_pass):
            hv = self._matmat(one_hot_tangents(index, cols[i : i + per_pass], self.weights))
            out.append(torch.cat([h.reshape(h.shape[0], -1) for h in hv], dim=1).T)
        return torch.cat(out, dim=1)

    def dense(self) -> torch.Tensor:
        """The whole N x N matrix (small models only)."""
        return self.columns(np.arange(self.n_params))

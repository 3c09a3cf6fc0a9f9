"""Bootstrap replicates of minibatch Hessian entries (SPEC section 4).

The random variable is H_a(S) = (1/s) sum_{k in S} h[k, a], S drawn from the pool with
replacement. With C the (B, n) multinomial count matrix (each row sums to s), all B
replicates are one matrix product X = C h / s. `replicates_direct` recomputes each
replicate from the network (verification only). The exact moments over S that the
replicates must reproduce are `entry_stats.predicted_moments`.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import ConfigError
from .hvp import PoolHessian


def multinomial_counts(n: int, s: int, n_rep: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) counts: replicate b draws s pool examples with replacement."""
    return rng.multinomial(s, np.full(n, 1.0 / n), size=n_rep).astype(np.float64)


def check_pool(n: int, s: int) -> None:
    if s > n:
        raise ConfigError(f"minibatch size s={s} exceeds the pool size n={n}; raise measure.pool_size "
                         f"or lower measure.minibatch")


def replicates(h: np.ndarray, counts: np.ndarray, s: int) -> np.ndarray:
    """X = C h / s: (B, K) replicates of the minibatch entries, one matrix product."""
    return counts @ h / s


def replicates_direct(plan, weights, x, y, rows, cols, row_pos, col_pos, counts: np.ndarray) -> np.ndarray:
    """Each replicate recomputed: the minibatch Hessian on S (duplicates kept), entries read out."""
    out = np.empty((len(counts), len(row_pos)))
    rows_t = torch.as_tensor(np.asarray(rows), device=x.device)
    for b, c in enumerate(counts):
        idx = torch.as_tensor(np.repeat(np.arange(len(c)), c.astype(np.int64)), device=x.device)
        cols_h = PoolHessian(plan, weights, x[idx], y[idx]).columns(cols)  # (N, |J|)
        block = cols_h[rows_t].detach().cpu().double().numpy()
        out[b] = block[row_pos, col_pos]
    return out

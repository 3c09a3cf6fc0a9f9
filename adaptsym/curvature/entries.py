"""Entry designs: which Hessian entries a = (p_a, q_a) to sample (SPEC section 4).

- `block`: rows I and columns J, entries I x J (K = |I||J|; |J| column HVPs). Entries are
  column-major, entry a = (I[a % |I|], J[a // |I|]), so a chunk of columns is a contiguous
  range of entries (the work tiles and the zarr chunks of `h` line up).
- `pairs`: K independent uniform pairs (p, q) (K columns), sorted by column.
With `stratify`, rows and columns are spread evenly over the weight layers (so small layers
are represented), otherwise they are uniform over all N parameters. Entries whose two
indices lie in the same layer are structurally zero (the network is linear in each layer)
and are flagged, to be reported apart from the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DesignSpec
from ..errors import UserFacingError
from ..nets.indexing import ParamIndex


class DesignError(UserFacingError, ValueError):
    """A design that asks for something impossible; the message says what is available."""


@dataclass
class EntryDesign:
    kind: str
    rows: np.ndarray  # distinct global row indices (I)
    cols: np.ndarray  # distinct global column indices (J)
    row_pos: np.ndarray  # (K,) position of p_a in rows
    col_pos: np.ndarray  # (K,) position of q_a in cols
    layer_p: np.ndarray  # (K,)
    layer_q: np.ndarray  # (K,)

    @property
    def p(self) -> np.ndarray:
        return self.rows[self.row_pos]

    @property
    def q(self) -> np.ndarray:
        return self.cols[self.col_pos]

    @property
    def n_entries(self) -> int:
        return len(self.row_pos)

    @property
    def structural_zero(self) -> np.ndarray:
        return self.layer_p == self.layer_q

    def gather(self, h_block: np.ndarray) -> np.ndarray:
        """(n, |I|, |J|) per-example block -> (n, K) per-example entries."""
        return h_block[:, self.row_pos, self.col_pos]

    def entry_chunk(self, column_chunk: int) -> int:
        """Entries per work tile: `column_chunk` columns' worth (block: times |I|)."""
        return column_chunk * len(self.rows) if self.kind == "block" else column_chunk


def _uniform_distinct(rng: np.random.Generator, index: ParamIndex, k: int, stratify: bool, what: str) -> np.ndarray:
    n = index.n_params
    if k > n:
        raise DesignError(f"design asks for {k} distinct {what} but the network has only {n} parameters")
    if not stratify:
        return np.sort(rng.choice(n, size=k, replace=False))
    sizes = index.sizes
    # as even a share per layer as the layer sizes allow
    share = np.zeros(index.n_layers, dtype=np.int64)
    left = k
    while left > 0:
        open_layers = np.nonzero(share < sizes)[0]
        per = max(1, left // len(open_layers))
        for li in open_layers:
            take = min(per, sizes[li] - share[li], left)
            share[li] += take
            left -= take
            if left == 0:
                break
    picks = [index.offsets[li] + rng.choice(sizes[li], size=share[li], replace=False)
             for li in range(index.n_layers) if share[li]]
    return np.sort(np.concatenate(picks))


def block_entries(index: ParamIndex, rows, cols) -> EntryDesign:
    """All entries of rows x columns (given global indices, kept in their order), column-major."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    cp, rp = np.meshgrid(np.arange(len(cols)), np.arange(len(rows)), indexing="ij")
    rp, cp = rp.ravel(), cp.ravel()
    return EntryDesign("block", rows, cols, rp, cp, index.layer_of(rows[rp]), index.layer_of(cols[cp]))


def block_design(index: ParamIndex, n_rows: int, n_cols: int, rng: np.random.Generator,
                 stratify: bool = True) -> EntryDesign:
    rows = _uniform_distinct(rng, index, n_rows, stratify, "rows")
    cols = _uniform_distinct(rng, index, n_cols, stratify, "columns")
    return block_entries(index, rows, cols)


def pairs_design(index: ParamIndex, n_pairs: int, rng: np.random.Generator, stratify: bool = True) -> EntryDesign:
    n = index.n_params
    if n_pairs > n * n:
        raise DesignError(f"design asks for {n_pairs} entries but the Hessian has only {n * n}")
    if stratify:  # a uniform layer pair, then a uniform entry inside it
        lp = rng.integers(0, index.n_layers, n_pairs)
        lq = rng.integers(0, index.n_layers, n_pairs)
        p = index.offsets[lp] + (rng.random(n_pairs) * index.sizes[lp]).astype(np.int64)
        q = index.offsets[lq] + (rng.random(n_pairs) * index.sizes[lq]).astype(np.int64)
    else:
        p, q = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    order = np.lexsort((p, q))  # by column, so column chunks are contiguous entry ranges
    p, q = p[order], q[order]
    rows, row_pos = np.unique(p, return_inverse=True)
    cols, col_pos = np.unique(q, return_inverse=True)
    return EntryDesign("pairs", rows, cols, row_pos, col_pos, index.layer_of(p), index.layer_of(q))


def make_design(spec: DesignSpec, index: ParamIndex, seed: int) -> EntryDesign:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE17]))
    if spec.kind == "block":
        return block_design(index, spec.rows, spec.cols, rng, spec.stratify)
    return pairs_design(index, spec.n_pairs, rng, spec.stratify)

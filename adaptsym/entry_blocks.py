"""The block-level work of the Hessian-entry measurement, done by one worker at a time.

`EntryWork` is everything a worker needs for one checkpoint (picklable: it travels to Ray
actors once per checkpoint). `EntryBlocks` does one unit of work per call and reads and writes
the run's zarr store itself, so no worker or driver ever holds more than a block of h:

- `h_tile(ei, ai)`: per-example entries of example chunk ei x entry chunk ai, written into
  exactly one zarr chunk of `h` (no two tiles share a chunk);
- `entry_block(ai)`: bootstrap replicates and per-entry statistics of entry chunk ai, written
  into chunk ai of the per-entry arrays, plus small aggregates for the driver;
- `corr_threshold_tile`, `corr_histogram_tile`, `corr_decision_tile`: one tile of the correlation
  matrix, for the fixed-threshold rule, or the first (histogram) or second (decision) pass of
  the FDR rule;
- `comoment_tile(tuples)`: co-skewness / co-kurtosis statistics of a block of tuples.

The same class serves the single-process path (`LocalExecutor`) and the Ray actors
(`services.actors`), which is why both give the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import zarr

from .bootstrap import multinomial_counts, replicates
from .comoments import tuple_active, tuple_statistics
from .config import HessianEntriesSpec, MeasureSpec
from .correlation import pair_mask, standardise
from .entries import EntryDesign
from .entry_stats import (batch_cuts, moment_intervals, moments, predicted_moments, scaling_deviations,
                          valid_entries, z_resample_counts)
from .fdr import StreamingBH
from .indexing import ParamIndex
from .nonzero import product_t
from .store import checked
from .util import ceil_div, torch_dtype
from .checkpoint import model_from_checkpoint
from .per_example import design_tile

# seeds of the independent random streams of one checkpoint's measurement
STREAM_COUNTS, STREAM_RESAMPLE, STREAM_SUB, STREAM_TUPLES, STREAM_COUPLING, STREAM_MARDIA = range(1, 7)
PER_ENTRY = ("mean", "std", "skew", "exkurt", "z", "pred_mean", "pred_std", "pred_skew", "pred_exkurt")
# 95% intervals of each entry's moments of H_a(S), over resamples of the pool examples
PER_ENTRY_CI = tuple(f"{m}_ci_{end}" for m in ("mean", "std", "skew", "exkurt") for end in ("low", "high"))
# per-entry integer arrays: pool examples on which the entry is non-zero (behind each of its tests)
PER_ENTRY_INT = ("n_active",)


def stream(seed: int, epoch: int, which: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xB007, which]))


# ---------------------------------------------------------------- units of work and their results
# Each method of `EntryBlocks` takes one task (a NamedTuple: it pickles, unpacks into the method's
# arguments, and a tile task indexes the `tile_done` array) and returns one frozen result.


class HTileTask(NamedTuple):
    ei: int  # example chunk
    ai: int  # entry chunk


class EntryBlockTask(NamedTuple):
    ai: int  # entry chunk


class CorrTask(NamedTuple):
    bi: int  # block of valid entries (rows)
    bj: int  # block (columns), bj >= bi
    ei: np.ndarray  # the entries of block bi
    ej: np.ndarray


class CorrDecisionTask(NamedTuple):
    bi: int
    bj: int
    ei: np.ndarray
    ej: np.ndarray
    window: tuple[float, float]  # the streaming BH window of |T| (z_low, z_high)


class ComomentTask(NamedTuple):
    index: int  # block of tuples
    tuples: np.ndarray  # (tuples, order) entry indices


@dataclass(frozen=True)
class HTileResult:
    # (example, entry, value, count) of the first non-finite value; the tile is then not written
    nonfinite: tuple[int, int, float, int] | None = None
    max_structural: float = 0.0  # largest |h| among same-layer entries (exactly 0 for a correct HVP)


@dataclass(frozen=True)
class EntryBlockResult:
    valid: np.ndarray  # (entries,) bool
    z: np.ndarray  # mean / std of the valid entries
    devs: dict  # scaling deviations of the valid entries, by moment
    active: np.ndarray  # (n,) bool: examples with a non-zero entry in the block
    resample: np.ndarray  # z-fraction counts, pool then resamples (see `z_resample_counts`)


@dataclass(frozen=True)
class ThresholdTileResult:
    rows: np.ndarray  # per row entry: pairs with |rho| >= threshold
    cols: np.ndarray
    abs_sum: float  # sum of |rho| over the tile's pairs
    m: int  # pairs in the tile


@dataclass(frozen=True)
class HistogramTileResult:
    hist: np.ndarray  # histogram of |T| on StreamingBH's bins
    abs_sum: float


@dataclass(frozen=True)
class DecisionTileResult:
    rows: np.ndarray  # per row entry: pairs surely above the window
    cols: np.ndarray
    und_r: np.ndarray  # the pairs inside the window: row, column and |T|
    und_c: np.ndarray
    und_v: np.ndarray


@dataclass(frozen=True)
class ComomentTileResult:
    value: np.ndarray  # per tuple: co-moment of the bootstrap replicates
    pool: np.ndarray  # the same over the pool
    tstat: np.ndarray  # studentised statistic of the non-zero test
    active: np.ndarray  # bool: every member active on a shared example


@dataclass(frozen=True, kw_only=True)
class EntryWork:
    """One checkpoint's Hessian-entry work, built with keyword arguments; it pickles (the
    validated `MeasureSpec` included) and travels to each Ray actor once."""

    store_path: str
    group: str  # e.g. 'epoch_0010/hessian_entries'
    design: EntryDesign
    mcfg: MeasureSpec
    s: int  # minibatch size
    seed: int
    epoch: int
    model_spec: dict
    input_shape: tuple
    weights: list  # CPU tensors
    x: torch.Tensor  # the pool (CPU)
    y: torch.Tensor

    @property
    def entries(self) -> HessianEntriesSpec:
        """The `measure.hessian_entries` section."""
        return self.mcfg.hessian_entries

    @property
    def key(self) -> tuple:
        return (self.store_path, self.group, self.epoch)

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def example_chunk(self) -> int:
        return min(self.mcfg.example_chunk, self.n)

    @property
    def entry_chunk(self) -> int:
        return min(self.design.entry_chunk(self.entries.column_chunk), self.design.n_entries)

    def tiles(self) -> list[HTileTask]:
        ne = ceil_div(self.n, self.example_chunk)
        na = ceil_div(self.design.n_entries, self.entry_chunk)
        return [HTileTask(ei, ai) for ei in range(ne) for ai in range(na)]

    def entry_range(self, ai: int) -> tuple[int, int]:
        return ai * self.entry_chunk, min((ai + 1) * self.entry_chunk, self.design.n_entries)


class EntryBlocks:
    def __init__(self, work: EntryWork, device: str | torch.device | None = None, max_cached_blocks: int = 8):
        self.work = work
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = torch_dtype(work.mcfg.dtype)
        self.group = zarr.open_group(work.store_path, mode="a", zarr_format=3)[work.group]
        self._model = None
        self._counts = None
        self._z = OrderedDict()
        self._max_cached = max_cached_blocks
        self._cols: dict = {}  # entry -> (standardised bootstrap column, standardised pool column, h != 0)
        self._max_cols = max(1024, int(256e6 / 8 / (work.n + work.entries.replicates)))  # ~256 MB

    # ------------------------------------------------------------------ shared state
    @property
    def model(self):
        if self._model is None:
            m = model_from_checkpoint({"model_spec": self.work.model_spec, "input_shape": self.work.input_shape,
                                       "weights": self.work.weights}, dtype=self.dtype, device=self.device)
            self._model = (m, self.work.x.to(self.device, self.dtype), self.work.y.to(self.device, self.dtype))
        return self._model

    @property
    def counts(self) -> np.ndarray:
        """The (B, n) multinomial count matrix, the same in every worker (seeded)."""
        if self._counts is None:
            w = self.work
            self._counts = multinomial_counts(w.n, w.s, w.entries.replicates, stream(w.seed, w.epoch, STREAM_COUNTS))
        return self._counts

    def columns(self, entries: np.ndarray) -> np.ndarray:
        """h[:, entries] read from zarr (only the chunks that hold them)."""
        return checked(self.work.store_path, self.group["h"], (slice(None), np.asarray(entries, dtype=np.int64)),
                       orthogonal=True)

    def _zblock(self, block_id: int, entries: np.ndarray) -> np.ndarray:
        if block_id not in self._z:
            self._z[block_id] = standardise(self.columns(entries))
            if len(self._z) > self._max_cached:
                self._z.popitem(last=False)
        self._z.move_to_end(block_id)
        return self._z[block_id]

    # ------------------------------------------------------------------ tiles
    def h_tile(self, ei: int, ai: int) -> HTileResult:
        w = self.work
        model, x, y = self.model
        e0, e1 = ei * w.example_chunk, min((ei + 1) * w.example_chunk, w.n)
        a0, a1 = w.entry_range(ai)
        tile = design_tile(model.plan, model.params(), ParamIndex.from_weights(model.params()), w.design,
                           x[e0:e1], y[e0:e1], a0, a1)
        bad = ~np.isfinite(tile)
        if bad.any():
            k, a = np.argwhere(bad)[0]  # nothing written: the tile stays unfinished
            return HTileResult(nonfinite=(int(e0 + k), int(a0 + a), float(tile[k, a]), int(bad.sum())))
        sz = w.design.structural_zero[a0:a1]
        self.group["h"][e0:e1, a0:a1] = tile
        return HTileResult(max_structural=float(np.abs(tile[:, sz]).max()) if sz.any() else 0.0)

    def entry_block(self, ai: int) -> EntryBlockResult:
        w = self.work
        a0, a1 = w.entry_range(ai)
        hb = checked(self.work.store_path, self.group["h"], (slice(None), slice(a0, a1)))
        sz = w.design.structural_zero[a0:a1]
        valid = valid_entries(hb, sz)
        X = replicates(hb, self.counts, w.s)
        est, pred = moments(X), predicted_moments(hb, w.s)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = est["mean"] / est["std"]
        vals = {"mean": est["mean"], "std": est["std"], "skew": est["skew"], "exkurt": est["exkurt"], "z": z,
                "pred_mean": pred["mean"], "pred_std": np.sqrt(pred["var"]), "pred_skew": pred["skew"],
                "pred_exkurt": pred["exkurt"]}
        for name in PER_ENTRY:
            self.group[name][a0:a1] = np.where(valid, vals[name], 0.0)
        self.group["valid"][a0:a1] = valid
        self.group["n_active"][a0:a1] = np.count_nonzero(hb, axis=0)
        devs = scaling_deviations(X[:, valid], hb[:, valid], w.s)
        idx = stream(w.seed, w.epoch, STREAM_RESAMPLE).integers(0, w.n, (w.entries.uncertainty_resamples, w.n))
        cut = w.entries.z_cut
        whole = np.arange(w.n)[None]  # row 0: the pool itself, then the resamples
        res = z_resample_counts(hb, w.s, np.concatenate([[cut], batch_cuts(cut, w.s)]), np.vstack([whole, idx]),
                                exclude=sz)
        for stat, (lo, hi) in moment_intervals(hb, w.s, idx).items():
            self.group[f"{stat}_ci_low"][a0:a1] = np.where(valid, lo, np.nan)
            self.group[f"{stat}_ci_high"][a0:a1] = np.where(valid, hi, np.nan)
        return EntryBlockResult(valid=valid, z=z[valid], devs=devs, active=np.any(hb != 0, axis=1), resample=res)

    def _corr(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray):
        R, T = product_t(self._zblock(bi, ei), self._zblock(bj, ej))
        return R, T, pair_mask(R.shape, bi == bj)

    def corr_threshold_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray) -> ThresholdTileResult:
        """The fixed-threshold rule: per-row and per-column counts of |rho| >= threshold."""
        R, _, mask = self._corr(bi, bj, ei, ej)
        hit = mask & (np.abs(R) >= self.work.entries.threshold)
        return ThresholdTileResult(rows=hit.sum(axis=1), cols=hit.sum(axis=0), abs_sum=float(np.abs(R[mask]).sum()),
                                   m=int(mask.sum()))

    def corr_histogram_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray) -> HistogramTileResult:
        """FDR pass 1: the histogram of |T| of the tile's pairs (for the streaming BH window)."""
        R, T, mask = self._corr(bi, bj, ei, ej)
        return HistogramTileResult(hist=StreamingBH(self.work.entries.fdr_q).histogram(np.abs(T[mask])),
                                   abs_sum=float(np.abs(R[mask]).sum()))

    def corr_decision_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray,
                           window: tuple[float, float]) -> DecisionTileResult:
        """FDR pass 2: pairs surely above the window (counted) and those inside it (returned)."""
        _, T, mask = self._corr(bi, bj, ei, ej)
        az = np.where(mask, np.abs(T), -1.0)
        z_low, z_high = window
        sure = mask & (az >= z_high)
        und = mask & (az >= z_low) & ~sure
        r, c = np.nonzero(und)
        return DecisionTileResult(rows=sure.sum(axis=1), cols=sure.sum(axis=0), und_r=r, und_c=c, und_v=az[r, c])

    def comoment_tile(self, index: int, tuples: np.ndarray) -> ComomentTileResult:
        """Statistics of block `index` of tuples of *entry* indices (order 3 or 4)."""
        u, local = np.unique(tuples, return_inverse=True)
        missing = [e for e in u if e not in self._cols]
        if missing:
            if len(self._cols) + len(missing) > self._max_cols:
                self._cols = {}
                missing = list(u)
            hcols = self.columns(np.array(missing))
            zx = standardise(replicates(hcols, self.counts, self.work.s))
            zh = standardise(hcols)
            for j, e in enumerate(missing):
                self._cols[e] = (zx[:, j], zh[:, j], hcols[:, j] != 0)
        Zx, Zh, act = (np.stack([self._cols[e][i] for e in u], axis=1) for i in range(3))
        tup = local.reshape(tuples.shape)
        value, pool, tstat = tuple_statistics(Zx, Zh, tup)
        return ComomentTileResult(value=value, pool=pool, tstat=tstat, active=tuple_active(act, tup))

    # ------------------------------------------------------------------ dispatch
    def call(self, method: str, task: tuple):
        """Run one unit of work named by `method` (one of METHODS) on the arguments `task`."""
        try:
            fn = _METHODS[method]
        except KeyError:
            raise ValueError(f"unknown block method {method!r}; one of {', '.join(_METHODS)}") from None
        return fn(self, *task)


# The units of work a worker does, by name (executors send the name and the arguments).
_METHODS = {"h_tile": EntryBlocks.h_tile, "entry_block": EntryBlocks.entry_block,
            "corr_threshold_tile": EntryBlocks.corr_threshold_tile,
            "corr_histogram_tile": EntryBlocks.corr_histogram_tile,
            "corr_decision_tile": EntryBlocks.corr_decision_tile, "comoment_tile": EntryBlocks.comoment_tile}
METHODS = tuple(_METHODS)

"""The block-level work of the Hessian-entry measurement, done by one worker at a time.

`EntryWork` is everything a worker needs for one checkpoint (picklable: it travels to Ray
actors once per checkpoint). `EntryBlocks` does one unit of work per call and reads and writes
the run's zarr store itself, so no worker or driver ever holds more than a block of h:

- `h_tile(ei, ai)`: per-example entries of example chunk ei x entry chunk ai, written into
  exactly one zarr chunk of `h` (no two tiles share a chunk);
- `entry_block(ai)`: bootstrap replicates and per-entry statistics of entry chunk ai in both
  readings (over the pool, and over its active examples), written into chunk ai of the per-entry
  arrays, plus small aggregates for the driver;
- `corr_threshold_tile`, `corr_histogram_tile`, `corr_decision_tile`, `corr_union_tile`: one tile
  of the correlation matrix, for the fixed-threshold rule, or the first (histogram) and second
  (decision) pass of the FDR rule of one test family, then the counts of both readings;
- `comoment_tile(tuples)`: co-skewness / co-kurtosis statistics of a block of tuples, both readings.

The same class serves the single-process path (`LocalExecutor`) and the Ray actors
(`services.actors`), which is why both give the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..stats.bootstrap import multinomial_counts, replicates
from ..stats.comoments import at_minibatch, pool_statistics, rows_all_nonzero, tuple_statistics
from ..config import HessianEntriesSpec, MeasureSpec
from ..stats.correlation import pair_mask, standardise, standardise_over
from ..curvature.entries import EntryDesign
from ..stats.entry_stats import (Z_BATCHES, batch_cuts, forced, moment_intervals, moments, predicted_moments,
                          scaling_deviations, valid_entries, z_resample_counts)
from ..stats.fdr import StreamingBH
from ..nets.indexing import ParamIndex
from ..stats.nonzero import READINGS, differences, mild, pair_rows, product_t
from ..storage.store import checked, open_group
from ..util import ceil_div, torch_dtype
from ..nets.checkpoint import model_from_checkpoint
from ..curvature.per_example import design_tile

# seeds of the independent random streams of one checkpoint's measurement
(STREAM_COUNTS, STREAM_RESAMPLE, STREAM_SUB, STREAM_TUPLES, STREAM_COUPLING, STREAM_MARDIA,
 STREAM_RESAMPLE_ACTIVE, STREAM_PAIRS) = range(1, 9)
# the marginal reading (over the pool): moments of the bootstrap replicates, then the exact ones over S
PER_ENTRY = ("mean", "std", "skew", "exkurt", "z", "pred_mean", "pred_std", "pred_skew", "pred_exkurt")
# 95% intervals of each entry's moments of H_a(S), over resamples of the pool examples
PER_ENTRY_CI = tuple(f"{m}_ci_{end}" for m in ("mean", "std", "skew", "exkurt") for end in ("low", "high"))
# the active reading: exact moments of a minibatch of s active examples, and its z
PER_ENTRY_ACTIVE = ("active_mean", "active_std", "active_skew", "active_exkurt", "active_z")
# the share of the pool (of its active examples) where the entry is non-zero: p in sqrt(p / (1 - p))
PER_ENTRY_SPARSITY = ("p_nonzero", "p_nonzero_active")
# per-entry integer arrays: pool examples on which the entry is non-zero
PER_ENTRY_INT = ("n_nonzero",)
# the z-fraction normalisations whose sparsity-forced counts an entry block returns, per reading
FORCED_KEYS = ("s", "per_example")


def stream(seed: int, epoch: int, which: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xB007, which]))


# ---------------------------------------------------------------- units of work and their results
# Each unit of work is a task (a NamedTuple: it pickles, and a tile task indexes the `tile_done`
# array) whose `run(blocks)` calls the one `EntryBlocks` method it stands for and returns that
# method's frozen result: the type of the task says which work it is and what comes back, and an
# executor needs nothing else (`protocols.Task`, `protocols.Executor`).


class HTileTask(NamedTuple):
    ei: int  # example chunk
    ai: int  # entry chunk

    def run(self, blocks: "EntryBlocks") -> "HTileResult":
        return blocks.h_tile(self.ei, self.ai)


class EntryBlockTask(NamedTuple):
    ai: int  # entry chunk

    def run(self, blocks: "EntryBlocks") -> "EntryBlockResult":
        return blocks.entry_block(self.ai)


class _CorrTile(NamedTuple):
    """The fields of a correlation tile: a pair of blocks of valid entries and a reading."""

    bi: int  # block of valid entries (rows)
    bj: int  # block (columns), bj >= bi
    ei: np.ndarray  # the entries of block bi
    ej: np.ndarray
    # one of nonzero.READINGS: the rows the correlations are over, and the test family (active: the
    # active reading's test over every pair; marginal: the pool test over the pairs of mild entries)
    reading: str = "marginal"


class CorrThresholdTask(_CorrTile):
    __slots__ = ()

    def run(self, blocks: "EntryBlocks") -> "ThresholdTileResult":
        return blocks.corr_threshold_tile(self.bi, self.bj, self.ei, self.ej, self.reading)


class CorrHistogramTask(_CorrTile):
    __slots__ = ()

    def run(self, blocks: "EntryBlocks") -> "HistogramTileResult":
        return blocks.corr_histogram_tile(self.bi, self.bj, self.ei, self.ej, self.reading)


class CorrDecisionTask(NamedTuple):
    bi: int
    bj: int
    ei: np.ndarray
    ej: np.ndarray
    window: tuple[float, float]  # the streaming BH window of |T| (z_low, z_high)
    reading: str = "marginal"

    def run(self, blocks: "EntryBlocks") -> "DecisionTileResult":
        return blocks.corr_decision_tile(self.bi, self.bj, self.ei, self.ej, self.window, self.reading)


class CorrUnionTask(NamedTuple):
    bi: int
    bj: int
    ei: np.ndarray
    ej: np.ndarray
    # BH thresholds on |T|: the active family at q, the active family at q / 2 and the pool family at
    # q / 2 (the two halves of the marginal union)
    thresholds: tuple[float, float, float]

    def run(self, blocks: "EntryBlocks") -> "UnionTileResult":
        return blocks.corr_union_tile(self.bi, self.bj, self.ei, self.ej, self.thresholds)


class ComomentTask(NamedTuple):
    index: int  # block of tuples
    tuples: np.ndarray  # (tuples, order) entry indices

    def run(self, blocks: "EntryBlocks") -> "ComomentTileResult":
        return blocks.comoment_tile(self.index, self.tuples)


TASKS = (HTileTask, EntryBlockTask, CorrThresholdTask, CorrHistogramTask, CorrDecisionTask, CorrUnionTask,
         ComomentTask)


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
    active_valid: np.ndarray  # (entries,) bool: entries that vary over the active examples
    resample_active: np.ndarray  # the same counts over the active examples (cuts: s, per example)
    # per reading and normalisation (FORCED_KEYS, then Z_BATCHES for the marginal reading): counts of
    # (entries forced below the cut by sqrt(p / (1 - p)), unforced ones, unforced ones below the cut)
    forced: dict
    inactive_nonzero: int = 0  # non-zero values on inactive examples (exactly 0 for a correct measurement)


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
class UnionTileResult:
    active_rows: np.ndarray  # per row entry: partners declared in the active reading
    active_cols: np.ndarray
    rows: np.ndarray  # the marginal reading: declared given activity, or by the pool test among mild entries
    cols: np.ndarray


@dataclass(frozen=True)
class ComomentTileResult:
    value: np.ndarray  # per tuple: co-moment of the bootstrap replicates (marginal)
    pool: np.ndarray  # the same over the pool
    tstat: np.ndarray  # studentised statistic of the marginal non-zero test
    n_nonzero: np.ndarray  # pool examples on which every member is non-zero
    active_value: np.ndarray  # the active reading: exact co-moment of a minibatch of s active examples
    active_tstat: np.ndarray  # its test statistic (over the active examples)
    mild: np.ndarray  # bool: every member mildly skewed over the active examples (the pool test applies)


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
    # (n,) bool: the pool examples where the loss is active (hinge: margin <= 1); None: all of them
    active_rows: np.ndarray | None = None

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

    @property
    def active(self) -> np.ndarray:
        """(n,) bool: the rows of the active reading."""
        return np.ones(self.n, dtype=bool) if self.active_rows is None else np.asarray(self.active_rows, dtype=bool)

    def rows(self, reading: str) -> np.ndarray | None:
        """The rows a reading standardises and tests over (None: the whole pool)."""
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        return None if reading == "marginal" else self.active


class EntryBlocks:
    def __init__(self, work: EntryWork, device: str | torch.device | None = None, max_cached_blocks: int = 8):
        self.work = work
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = torch_dtype(work.mcfg.dtype)
        self.group = open_group(work.store_path, mode="a")[work.group]
        self._model = None
        self._counts = None
        self._pairs = None
        self._z = OrderedDict()
        self._max_cached = max_cached_blocks
        # entry -> (standardised bootstrap column, standardised pool column, column standardised over the
        # active examples, h != 0)
        self._cols: dict = {}
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

    def _zblock(self, block_id: int, entries: np.ndarray) -> dict:
        """A block of columns, cached: standardised over the pool ('marginal') and over the active
        examples ('active'), the differences of the seeded pairs of active examples ('pairs'), and
        the columns whose values over the active examples are mildly skewed ('mild')."""
        if block_id not in self._z:
            cols = self.columns(entries)
            za = standardise_over(cols, self.work.active)
            self._z[block_id] = {"marginal": standardise(cols), "active": za, "pairs": differences(za, self.pairs),
                                 "mild": mild(za, self.work.entries.mild_skew)}
            if len(self._z) > self._max_cached:
                self._z.popitem(last=False)
        self._z.move_to_end(block_id)
        return self._z[block_id]

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The seeded pairing of the active examples (positions among them) of the pairs test."""
        if self._pairs is None:
            w = self.work
            self._pairs = pair_rows(np.nonzero(w.active)[0], stream(w.seed, w.epoch, STREAM_PAIRS))
        return self._pairs

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
        nnz = np.count_nonzero(hb, axis=0)
        self.group["n_nonzero"][a0:a1] = nnz
        devs = scaling_deviations(X[:, valid], hb[:, valid], w.s)
        idx = stream(w.seed, w.epoch, STREAM_RESAMPLE).integers(0, w.n, (w.entries.uncertainty_resamples, w.n))
        cut = w.entries.z_cut
        whole = np.arange(w.n)[None]  # row 0: the pool itself, then the resamples
        res = z_resample_counts(hb, w.s, np.concatenate([[cut], batch_cuts(cut, w.s)]), np.vstack([whole, idx]),
                                exclude=sz)
        for stat, (lo, hi) in moment_intervals(hb, w.s, idx).items():
            self.group[f"{stat}_ci_low"][a0:a1] = np.where(valid, lo, np.nan)
            self.group[f"{stat}_ci_high"][a0:a1] = np.where(valid, hi, np.nan)
        act = w.active
        A = int(act.sum())
        active_valid, res_active, z_exact = self._active_reading(hb, sz, act, a0, a1)
        p = nnz / w.n
        p_act = nnz / A if A else np.zeros_like(p)
        self.group["p_nonzero"][a0:a1] = p
        self.group["p_nonzero_active"][a0:a1] = p_act
        forced_counts = {}
        for reading, ok, pp in (("marginal", valid, p), ("active", active_valid, p_act)):
            norms = dict(zip(FORCED_KEYS, (w.s, 1)))
            if reading == "marginal":
                norms.update({f"s{b}": b for b in Z_BATCHES})
            for key, b in norms.items():
                f = forced(pp, b, cut) & ok
                free = ok & ~f
                below = free & (np.abs(z_exact[reading] * np.sqrt(b / w.s)) < cut)
                forced_counts[(reading, key)] = np.array([f.sum(), free.sum(), below.sum()], dtype=np.int64)
        return EntryBlockResult(valid=valid, z=z[valid], devs=devs, active=np.any(hb != 0, axis=1), resample=res,
                                active_valid=active_valid, resample_active=res_active, forced=forced_counts,
                                inactive_nonzero=int(np.count_nonzero(hb[~act])))

    def _active_reading(self, hb: np.ndarray, sz: np.ndarray, act: np.ndarray, a0: int, a1: int):
        """The per-entry arrays of the active reading (exact moments of a minibatch of s active
        examples), its pool-resampled |z| < cut counts (resampling the active examples), and the
        exact z at s of both readings (for the sparsity-forced counts)."""
        w = self.work
        A = int(act.sum())
        ha = hb[act]
        with np.errstate(divide="ignore", invalid="ignore"):
            z_marg = np.sqrt(w.s) * hb.mean(axis=0) / hb.std(axis=0)
        active_valid = ~sz & (ha.std(axis=0) > 0) if A >= 2 else np.zeros(hb.shape[1], dtype=bool)
        cut = w.entries.z_cut
        if A >= 2:
            pred = predicted_moments(ha, w.s)
            std = np.sqrt(pred["var"])
            with np.errstate(divide="ignore", invalid="ignore"):
                z_act = pred["mean"] / std
            vals = {"active_mean": pred["mean"], "active_std": std, "active_skew": pred["skew"],
                    "active_exkurt": pred["exkurt"], "active_z": z_act}
            rows = np.nonzero(act)[0]
            idx = rows[stream(w.seed, w.epoch, STREAM_RESAMPLE_ACTIVE).integers(0, A, (w.entries.uncertainty_resamples, A))]
            res = z_resample_counts(hb, w.s, [cut, cut * np.sqrt(w.s)], np.vstack([rows[None], idx]), exclude=sz)
        else:  # fewer than two active examples: nothing varies over them
            z_act = np.full(hb.shape[1], np.nan)
            vals = {name: np.zeros(hb.shape[1]) for name in PER_ENTRY_ACTIVE}
            res = np.zeros((1 + w.entries.uncertainty_resamples, 3), dtype=np.int64)
        for name in PER_ENTRY_ACTIVE:
            self.group[name][a0:a1] = np.where(active_valid, vals[name], 0.0)
        self.group["active_valid"][a0:a1] = active_valid
        return active_valid, res, {"marginal": z_marg, "active": z_act}

    def _family(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray, family: str):
        """(correlations, |T| statistics, tested pairs) of one tile for one test family:
        'active': the active reading's test (pairs or studentised, `active_test`) on every pair a < b,
        correlations over the active examples; 'marginal': the pool test on the pairs of mild entries,
        correlations over the pool."""
        if family not in READINGS:
            raise ValueError(f"test family must be one of {READINGS}, got {family!r}")
        zi, zj = self._zblock(bi, ei), self._zblock(bj, ej)
        pairs = pair_mask((len(ei), len(ej)), bi == bj)
        if family == "active":
            R = zi["active"].T @ zj["active"] / max(zi["active"].shape[0], 1)
            key = "pairs" if self.work.entries.active_test == "pairs" else "active"
            T = product_t(zi[key], zj[key])[1]
            return R, np.abs(T), pairs
        R, T = product_t(zi["marginal"], zj["marginal"])
        return R, np.abs(T), pairs & np.outer(zi["mild"], zj["mild"])

    def corr_threshold_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray,
                            reading: str = "marginal") -> ThresholdTileResult:
        """The fixed-threshold rule: per-row and per-column counts of |rho| >= threshold, rho over the
        reading's rows."""
        zi, zj = self._zblock(bi, ei)[reading], self._zblock(bj, ej)[reading]
        R = zi.T @ zj / max(zi.shape[0], 1)
        mask = pair_mask(R.shape, bi == bj)
        hit = mask & (np.abs(R) >= self.work.entries.threshold)
        return ThresholdTileResult(rows=hit.sum(axis=1), cols=hit.sum(axis=0), abs_sum=float(np.abs(R[mask]).sum()),
                                   m=int(mask.sum()))

    def corr_histogram_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray,
                            reading: str = "marginal") -> HistogramTileResult:
        """FDR pass 1: the histogram of |T| of the tile's tested pairs of one family (for the streaming
        BH window), and the sum of |rho| over all its pairs."""
        R, T, tested = self._family(bi, bj, ei, ej, reading)
        return HistogramTileResult(hist=StreamingBH(self.work.entries.fdr_q).histogram(T[tested]),
                                   abs_sum=float(np.abs(R[pair_mask(R.shape, bi == bj)]).sum()))

    def corr_decision_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray,
                           window: tuple[float, float], reading: str = "marginal") -> DecisionTileResult:
        """FDR pass 2: tested pairs surely above the window (counted) and those inside it (returned)."""
        _, T, tested = self._family(bi, bj, ei, ej, reading)
        az = np.where(tested, T, -1.0)
        z_low, z_high = window
        sure = tested & (az >= z_high)
        und = tested & (az >= z_low) & ~sure
        r, c = np.nonzero(und)
        return DecisionTileResult(rows=sure.sum(axis=1), cols=sure.sum(axis=0), und_r=r, und_c=c, und_v=az[r, c])

    def corr_union_tile(self, bi: int, bj: int, ei: np.ndarray, ej: np.ndarray,
                        thresholds: tuple[float, float]) -> UnionTileResult:
        """The decisions of both readings, once the BH thresholds are known: active, the active
        family's at q; marginal, the active family's at q / 2 or the pool test's among mild entries
        at q / 2."""
        t_active, t_half, t_pool = thresholds
        _, Ta, tested_a = self._family(bi, bj, ei, ej, "active")
        _, Tm, tested_m = self._family(bi, bj, ei, ej, "marginal")
        act = tested_a & (Ta >= t_active)
        marg = (tested_a & (Ta >= t_half)) | (tested_m & (Tm >= t_pool))
        return UnionTileResult(active_rows=act.sum(axis=1), active_cols=act.sum(axis=0), rows=marg.sum(axis=1),
                               cols=marg.sum(axis=0))

    def comoment_tile(self, index: int, tuples: np.ndarray) -> ComomentTileResult:
        """Statistics of block `index` of tuples of *entry* indices (order 3 or 4), both readings."""
        u, local = np.unique(tuples, return_inverse=True)
        missing = [e for e in u if e not in self._cols]
        if missing:
            if len(self._cols) + len(missing) > self._max_cols:
                self._cols = {}
                missing = list(u)
            hcols = self.columns(np.array(missing))
            zx = standardise(replicates(hcols, self.counts, self.work.s))
            zh = standardise(hcols)
            za = standardise_over(hcols, self.work.active)
            calm = mild(za, self.work.entries.mild_skew)
            for j, e in enumerate(missing):
                self._cols[e] = (zx[:, j], zh[:, j], za[:, j], hcols[:, j] != 0, calm[j])
        Zx, Zh, Za, nz = (np.stack([self._cols[e][i] for e in u], axis=1) for i in range(4))
        calm = np.array([self._cols[e][4] for e in u])
        tup = local.reshape(tuples.shape)
        value, pool, tstat = tuple_statistics(Zx, Zh, tup)
        a_pool, a_tstat = pool_statistics(Za, tup)
        return ComomentTileResult(value=value, pool=pool, tstat=tstat, n_nonzero=rows_all_nonzero(nz, tup),
                                  active_value=at_minibatch(a_pool, tuples.shape[1], self.work.s), active_tstat=a_tstat,
                                  mild=np.all(calm[tup], axis=1))

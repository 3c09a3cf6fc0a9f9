"""Hessian entries and their bootstrap statistics at one checkpoint (SPEC section 4, Figs 6, 7).

The driver of the measurement. The work itself is block-level (`entry_blocks.EntryBlocks`) and
runs on an executor, in this process or on Ray actors; the driver keeps only O(K) vectors and a
few columns of h, never a block of the K x K statistics nor the whole of h:

1. h tiles (example chunk x entry chunk) are written into their own zarr chunk; the driver marks
   each tile done (`tile_done`) after the write, so a restarted run computes only missing tiles.
2. Entry blocks: bootstrap replicates X = C h / s and per-entry moments, z, exact predictions,
   the scaling check and the pool-resampled |z| < cut counts.
3. Correlations of the valid entries, tile by tile, two passes (streaming BH on studentised
   product sums), coupling counts.
4. Co-skewness and co-kurtosis on sampled tuples (blocks of tuples), BH over all of one order.
   Every statistic records the active examples behind it and its detectability
   (`nonzero.detectability`); one that cannot detect anything at this activity is stored as
   untestable (NaN sizes, the reason in `attrs["untestable"]`), never as a count of 0.
5. In the driver, from a few columns: the correlation submatrix, Fig 6a's replicates, Mardia.
"""

from __future__ import annotations

import numpy as np

from ..stats.bootstrap import replicates
from ..stats.comoments import decide, sample_tuples
from ..stats.correlation import standardise, standardise_over, union_detectability
from ..stats.coupling import coupling_summary
from .entry_blocks import (FORCED_KEYS, PER_ENTRY, PER_ENTRY_ACTIVE, PER_ENTRY_CI, PER_ENTRY_INT, PER_ENTRY_SPARSITY,
                           STREAM_COUPLING, STREAM_MARDIA, STREAM_SUB, STREAM_TUPLES,
                           ComomentTask, CorrDecisionTask, CorrHistogramTask, CorrThresholdTask, CorrUnionTask, EntryBlocks, EntryBlockTask,
                           EntryWork, stream)
from ..stats.entry_stats import Z_BATCHES, fraction_interval, fraction_std, summarise_deviations, z_fraction
from ..config import HessianEntriesSpec
from ..errors import TileError, UserFacingError
from ..stats.fdr import StreamingBH
from ..curvature.hvp import active_examples
from ..stats.mardia import mardia
from ..stats.nonzero import READINGS, Detectability, detectability
from .observation import Context, Observation
from ..registry import Figure, Observable
from .plotting import MissingData, Reader, band, colors, has, ridgeline
from matplotlib.ticker import MaxNLocator
from ..storage.store import chunk_faults
from ..util import ceil_div
from ..protocols import Executor

MIN_VALID = 8  # entries that vary over the pool, below which statistics are skipped
# Li's headline numbers (Figs 7b, 7c): at least 95% of entries with |z| < 0.15, and a relative
# correlation coupling size of 3.39e-4 at the end of training (drawn in the figures, judged in
# `report.verdict`)
PAPER = {"z_fraction": 0.95, "corr_relative": 3.39e-4}
NAME = "hessian_entries"


class NonFiniteEntryError(UserFacingError, FloatingPointError):
    """A Hessian entry came out NaN or infinite; the message names it."""




def prepare(store, work: EntryWork) -> None:
    """Create (or keep, when resuming) the arrays the workers write into."""
    d, g = work.design, work.group
    n, K, ec, ea = work.n, d.n_entries, work.example_chunk, work.entry_chunk
    store.create(g, "h", (n, K), ["example", "entry"], chunks=(ec, ea))
    ne, na = ceil_div(n, ec), ceil_div(K, ea)
    store.create(g, "tile_done", (ne, na), ["example_chunk", "entry_chunk"], chunks=(ne, na), dtype="uint8",
                 fill_value=0)
    # NaN fill: a chunk lost on disk never reads as plausible values
    for name in PER_ENTRY + PER_ENTRY_CI + PER_ENTRY_ACTIVE + PER_ENTRY_SPARSITY:
        store.create(g, name, (K,), ["entry"], chunks=(ea,))
    for name in PER_ENTRY_INT:
        store.create(g, name, (K,), ["entry"], chunks=(ea,), dtype="int64", fill_value=0)
    for name in ("valid", "active_valid"):
        store.create(g, name, (K,), ["entry"], chunks=(ea,), dtype="bool", fill_value=False)
    for name, arr in (("p", d.p), ("q", d.q), ("layer_p", d.layer_p), ("layer_q", d.layer_q),
                      ("structural_zero", d.structural_zero)):
        store.write(g, name, arr, ["entry"])
    store.write(g, "active_example", work.active, ["example"])


def compute_h(store, work: EntryWork, executor: Executor, progress: bool = False, log=print) -> tuple[int, int]:
    """Run the missing h tiles; returns (tiles computed now, tiles in all).

    A tile marked done whose chunk is missing or fails its checksum is recomputed, and said so."""
    done_arr = store.root[work.group]["tile_done"]
    done = np.asarray(done_arr[...])  # a missing tile_done chunk reads as 0: not done
    h = store.root[work.group]["h"]
    for t in work.tiles():
        fault = chunk_faults(store.path, h, [t]) if done[t] else []
        if fault:
            log(f"{work.group}/h: tile {t} was marked done but its {fault[0]}; recomputing it")
            done[t] = done_arr[t] = 0
    pending = [t for t in work.tiles() if not done[t]]

    def on_result(task, res):
        if res.nonfinite is not None:
            k, a, v, cnt = res.nonfinite
            d = work.design
            raise NonFiniteEntryError(
                f"checkpoint epoch {work.epoch}: Hessian entry {a} (p={d.p[a]}, q={d.q[a]}, layers {d.layer_p[a]},"
                f"{d.layer_q[a]}) is {v} for pool example {k} ({cnt} non-finite values in its tile {task}); "
                "the checkpoint is not marked complete")
        if res.max_structural != 0.0:
            raise AssertionError(f"checkpoint epoch {work.epoch}: same-layer Hessian entries are not exactly zero "
                                 f"in tile {task}; the HVP is wrong")
        done_arr[task] = 1  # only after the worker wrote the chunk

    executor.run(work, pending, on_result, desc=f"h tiles (epoch {work.epoch})", progress=progress)
    return len(pending), len(work.tiles())


def analyse(store, work: EntryWork, executor: Executor, n_params: int, progress: bool = False) -> Observation:
    """All statistics of SPEC section 4 from the stored h, block by block on the executor, in the
    phases of the module docstring: entry blocks (2), then, unless too few entries vary, the |z|
    fractions, the driver's columns (5), the couplings (3, 4) and Mardia (5). Every per-entry and
    pairwise statistic comes in both readings (`nonzero.READINGS`): scalars `marginal.*` over the
    pool, `active.*` over its active examples."""
    d = work.design
    obs = Observation(NAME)
    order = _entry_blocks(work, executor, progress)
    valid = np.concatenate([b.valid for b in order])
    vidx = np.nonzero(valid)[0]
    vidx_active = np.nonzero(np.concatenate([b.active_valid for b in order]))[0]
    act = work.active
    inactive_nonzero = sum(b.inactive_nonzero for b in order)
    if inactive_nonzero:
        raise AssertionError(f"checkpoint epoch {work.epoch}: {inactive_nonzero} Hessian entries are non-zero on pool "
                             "examples with margin > 1, whose hinge Hessian is exactly 0; the HVP or the margin is wrong")
    A = int(act.sum())
    obs.scalars.update(n_entries=d.n_entries, n_valid=int(valid.sum()), n_structural_zero=int(d.structural_zero.sum()),
                       n_degenerate=int((~valid & ~d.structural_zero).sum()), pool_size=work.n, minibatch=work.s,
                       replicates=work.entries.replicates, n_params=n_params, n_active_examples=A)
    obs.scalars.update({"marginal.n_rows": work.n, "marginal.n_valid": int(vidx.size), "active.n_rows": A,
                        "active.n_valid": int(vidx_active.size)})
    if vidx.size < MIN_VALID:
        # e.g. zero training loss: every pool example has margin >= 1, so H = 0 exactly
        obs.attrs["skipped"] = (f"only {vidx.size} entries vary over the pool ({A} of {work.n} "
                                f"examples have margin < 1); statistics need at least {MIN_VALID}")
        return obs
    _z_fractions(obs, order, work.entries.z_cut)
    reader = EntryBlocks(work)  # the driver reads a few columns only
    _driver_columns(obs, work, reader, vidx)
    _couplings(obs, work, executor, vidx, A, n_params, progress)
    _mardia(obs, work, reader, vidx)
    return obs


def _entry_blocks(work: EntryWork, executor: Executor, progress: bool) -> list:
    """Phase 2: every entry block's results, in block order."""
    na = ceil_div(work.design.n_entries, work.entry_chunk)
    blocks: dict = {}
    executor.run(work, [EntryBlockTask(ai) for ai in range(na)], lambda t, r: blocks.__setitem__(t.ai, r),
                 desc="entry blocks", progress=progress)
    return [blocks[ai] for ai in range(na)]


def _fraction(counts: np.ndarray, column: int) -> float:
    """counts[column] / counts[-1] of one row of resample counts (NaN when nothing varies)."""
    return float(counts[column] / counts[-1]) if counts[-1] else float("nan")


def _forced(sc: dict, order: list, reading: str, key: str, suffix: str) -> None:
    """The sparsity bound beside a |z| fraction: the share of entries whose |z| is below the cut by
    sqrt(p / (1 - p)) alone, and the |z| < cut fraction among the entries it does not force."""
    f, free, below = np.sum([b.forced[(reading, key)] for b in order], axis=0)
    n = f + free
    sc[f"{reading}.z_forced_fraction{suffix}"] = float(f / n) if n else float("nan")
    sc[f"{reading}.z_fraction_unforced{suffix}"] = float(below / free) if free else float("nan")


def _z_fractions(obs: Observation, order: list, cut: float) -> None:
    """Fig 7b: the |z| < cut fraction with its interval, in both readings, at the minibatch size and
    per example (and, marginal, at other batch sizes), each beside its sparsity-forced share; and
    the scaling check's summary."""
    sc = obs.scalars
    z = np.concatenate([b.z for b in order])
    sc["z_cut"] = cut
    # marginal: z from the B replicates (SPEC), and the exact z over S whose interval the pool resamples give
    sc["marginal.z_fraction"] = z_fraction(z, cut)
    counts = np.sum([b.resample for b in order], axis=0)  # (1 + R, 1 + len(Z_BATCHES) + 1)
    whole, res = counts[0], counts[1:]  # the pool itself, then its resamples
    sc["marginal.z_fraction_exact"] = _fraction(whole, 0)
    sc["marginal.z_fraction_exact_std"] = fraction_std(res)
    sc["marginal.z_fraction_exact_ci_low"], sc["marginal.z_fraction_exact_ci_high"] = fraction_interval(
        res, point=sc["marginal.z_fraction_exact"])
    # the same fraction at other batch sizes; s = 1 is the per-example normalisation mean / std of h
    by_s = [_fraction(whole, 1 + i) for i in range(len(Z_BATCHES))]
    obs.add("z_fraction_batch", np.array(Z_BATCHES), ["zbatch"])
    obs.add("z_fraction_by_batch", np.nan_to_num(np.array(by_s), nan=-1.0), ["zbatch"])
    forced_by_s = []
    for i, b in enumerate(Z_BATCHES):  # intervals as scalars: NaN (no varying entry) is allowed there
        sc[f"marginal.z_fraction_s{b}"] = by_s[i]
        sc[f"marginal.z_fraction_s{b}_ci_low"], sc[f"marginal.z_fraction_s{b}_ci_high"] = fraction_interval(
            res, column=1 + i, point=by_s[i])
        _forced(sc, order, "marginal", f"s{b}", f"_s{b}")
        forced_by_s.append(sc[f"marginal.z_forced_fraction_s{b}"])
    obs.add("z_forced_by_batch", np.nan_to_num(np.array(forced_by_s), nan=-1.0), ["zbatch"])
    sc["marginal.z_fraction_per_example"] = by_s[0]
    sc["marginal.z_fraction_per_example_ci_low"] = sc["marginal.z_fraction_s1_ci_low"]
    sc["marginal.z_fraction_per_example_ci_high"] = sc["marginal.z_fraction_s1_ci_high"]
    # active: exact z of a minibatch of s active examples, the interval from resampling the active examples
    counts_a = np.sum([b.resample_active for b in order], axis=0)  # (1 + R, 3): cut at s, per example, varying
    whole_a, res_a = counts_a[0], counts_a[1:]
    for col, key in ((0, "active.z_fraction_exact"), (1, "active.z_fraction_per_example")):
        sc[key] = _fraction(whole_a, col)
        sc[f"{key}_std"] = fraction_std(res_a, column=col)
        sc[f"{key}_ci_low"], sc[f"{key}_ci_high"] = fraction_interval(res_a, column=col, point=sc[key])
    for reading in READINGS:
        for key, suffix in zip(FORCED_KEYS, ("", "_per_example")):
            _forced(sc, order, reading, key, suffix)
    devs = {key: np.concatenate([b.devs[key] for b in order]) for key in ("mean", "std", "skew", "exkurt")}
    sc.update({f"scaling.{k}": v for k, v in summarise_deviations(devs).items()})


def _driver_columns(obs: Observation, work: EntryWork, reader: EntryBlocks, vidx: np.ndarray) -> None:
    """Fig 6a: the same 16 cross-layer entries' replicates at every checkpoint; Figs 6b/6c: a
    correlation submatrix, bootstrap and exact over the pool, and exact over the active examples."""
    d, s = work.design, work.s
    counts = reader.counts
    cross = np.nonzero(~d.structural_zero)[0]
    shown = np.sort(np.random.default_rng(np.random.SeedSequence([work.seed, 0x6A])).choice(
        cross, size=min(16, cross.size), replace=False))
    obs.add("replicates_entry", shown, ["shown"])
    obs.add("replicates", replicates(reader.columns(shown), counts, s), ["replicate", "shown"])
    sub_idx = np.sort(stream(work.seed, work.epoch, STREAM_SUB).choice(vidx, size=min(work.entries.submatrix, vidx.size),
                                                                        replace=False))
    hsub = reader.columns(sub_idx)
    Zx, Zh = standardise(replicates(hsub, counts, s)), standardise(hsub)
    sub, exact_sub = Zx.T @ Zx / Zx.shape[0], Zh.T @ Zh / work.n
    obs.add("corr_submatrix", sub, ["sub_a", "sub_b"])
    obs.add("corr_submatrix_exact", exact_sub, ["sub_a", "sub_b"])
    Za = standardise_over(hsub, work.active)
    obs.add("active_corr_submatrix", Za.T @ Za / max(Za.shape[0], 1), ["sub_a", "sub_b"])
    obs.add("corr_submatrix_entry", sub_idx, ["sub_a"])
    obs.scalars["corr_bootstrap_max_dev"] = float(np.abs(sub - exact_sub).max())


def _couplings(obs: Observation, work: EntryWork, executor: Executor, vidx: np.ndarray, n_active: int,
               n_params: int, progress: bool) -> None:
    """Phases 3 and 4: correlation, co-skewness and co-kurtosis coupling set sizes in both readings,
    each with its detectability (untestable statistics are NaN, their reasons in
    attrs["untestable"] under '<reading>.<statistic>'). Arrays of the active reading carry the
    prefix `active_`; the entries (those that vary over the pool) and the sampled tuples are the
    same in both.

    The active reading declares what its own test finds over the active examples. The marginal one
    declares that, and what the pool test finds among mildly skewed entries (`mild_skew`): the part
    of a marginal coupling that only the activity mask carries (non-zero means over the active
    examples) is testable only where those means can be trusted (`docs/statistics.md`)."""
    mc, sc, K = work.entries, obs.scalars, work.design.n_entries
    rng_c = stream(work.seed, work.epoch, STREAM_COUPLING)
    paired = mc.active_test == "pairs"
    summaries = {}
    counts, dets = correlations(work, executor, vidx, sc, progress, n_active)
    for reading, tag in (("marginal", ""), ("active", "active_")):
        full = np.zeros(K, dtype=np.int64)
        full[vidx] = counts[reading]
        obs.add(f"{tag}corr_count", full, ["entry"])
        summaries[f"{reading}.corr"] = (coupling_summary(counts[reading], vidx.size - 1, n_params, 2, rng_c,
                                                         mc.uncertainty_resamples), dets[reading])
    rng_t = stream(work.seed, work.epoch, STREAM_TUPLES)
    per = mc.tuples_per_entry
    for order_, name in ((3, "coskew"), (4, "cokurt")):
        if vidx.size <= order_:
            continue
        tup = vidx[sample_tuples(vidx.size, per, order_, rng_t)]
        parts: dict = {}
        step = 32 * per  # small tasks balance the actors; workers cache the columns they read
        tasks = [ComomentTask(k, tup[i : i + step]) for k, i in enumerate(range(0, len(tup), step))]
        executor.run(work, tasks, lambda t, r: parts.__setitem__(t.index, r),
                     desc=name, progress=progress)
        get = lambda key: np.concatenate([getattr(parts[k], key) for k in range(len(tasks))])  # noqa: E731
        obs.add(f"{name}_tuples", tup, [f"{name}_tuple", f"{name}_member"])
        obs.add(f"{name}_n_nonzero", get("n_nonzero"), [f"{name}_tuple"])
        calm = get("mild")
        obs.add(f"{name}_mild", calm, [f"{name}_tuple"])
        decided = {}
        for reading, tag in (("active", "active_"), ("marginal", "")):
            value, tstat = get(f"{tag}value"), get(f"{tag}tstat")
            obs.add(f"{tag}{name}_value", value, [f"{name}_tuple"])
            obs.add(f"{tag}{name}_tstat", tstat, [f"{name}_tuple"])
            if reading == "active":  # at q; and at q / 2 for the marginal union
                for q in (mc.fdr_q, mc.fdr_q / 2):
                    nonzero = decide(value, tstat, mc.nonzero, q, mc.threshold, mc.pvalue, mc.fdr)
                    found = int(nonzero.sum())
                    thr = float(np.abs(tstat[nonzero]).min()) if found and mc.nonzero == "fdr" else np.inf
                    det = _detectability(mc, n_active, len(tup), found, thr, order_, strict=False, q=q)
                    decided[q] = (nonzero & (not det.untestable), det)
                nonzero, det = decided[mc.fdr_q]
            else:  # declared given activity (at q / 2), or by the pool test among mild tuples (at q / 2)
                pool = np.zeros(len(tup), dtype=bool)
                half = mc.fdr_q / 2
                if calm.any():
                    pool[calm] = decide(value[calm], tstat[calm], mc.nonzero, half, mc.threshold, mc.pvalue, mc.fdr)
                found = int(pool.sum())
                thr = float(np.abs(tstat[pool]).min()) if found and mc.nonzero == "fdr" else np.inf
                det_pool = _detectability(mc, n_active, int(calm.sum()), found, thr, order_, strict=True, q=half)
                pool &= not det_pool.untestable
                nonzero = decided[half][0] | pool
                det = union_detectability(decided[half][1], det_pool)
            per_entry = nonzero.reshape(vidx.size, per).sum(axis=1)
            obs.add(f"{tag}{name}_nonzero", nonzero, [f"{name}_tuple"])
            full = np.zeros(K, dtype=np.int64)
            full[vidx] = per_entry
            obs.add(f"{tag}{name}_count", full, ["entry"])
            sc[f"{reading}.{name}_n_tests"], sc[f"{reading}.{name}_n_nonzero"] = len(tup), int(nonzero.sum())
            summaries[f"{reading}.{name}"] = (coupling_summary(per_entry, per, n_params, order_, rng_c,
                                                               mc.uncertainty_resamples), det)
        sc[f"marginal.{name}_n_mild"] = int(calm.sum())
    untestable = {}
    for name, (summ, det) in summaries.items():
        for k, v in summ.items():
            sc[f"{name}.{k}"] = np.nan if det.untestable and k != "mean_count" else float(v)
        sc.update(det.scalars(name))
        if det.untestable:
            untestable[name] = det.reason
    sc["active.corr.paired"] = float(paired)
    if untestable:
        obs.attrs["untestable"] = untestable


def _mardia(obs: Observation, work: EntryWork, reader: EntryBlocks, vidx: np.ndarray) -> None:
    """Mardia's tests on random sets of valid entries of the pool (n samples)."""
    mc, sc = work.entries, obs.scalars
    if not (mc.mardia_sets and vidx.size >= mc.mardia_dim):
        return
    rng_m = stream(work.seed, work.epoch, STREAM_MARDIA)
    rows = []
    for _ in range(mc.mardia_sets):
        m = mardia(reader.columns(np.sort(rng_m.choice(vidx, size=mc.mardia_dim, replace=False))))
        rows.append([m["b1"], m["b2"], m["skew_stat"], m["skew_p"], m["kurt_stat"], m["kurt_p"]])
    rows = np.array(rows)
    obs.add("mardia", rows, ["mardia_set", "mardia_stat"])
    obs.attrs["mardia_stat"] = ["b1", "b2", "skew_stat", "skew_p", "kurt_stat", "kurt_p"]
    sc["mardia.skew_reject_fraction"] = float(np.mean(rows[:, 3] < 0.05))
    sc["mardia.kurt_reject_fraction"] = float(np.mean(rows[:, 5] < 0.05))
    sc["mardia.median_b2_over_gauss"] = float(np.median(rows[:, 1]) / (mc.mardia_dim * (mc.mardia_dim + 2)))


def _detectability(mc: HessianEntriesSpec, n_active: int, m_tests: int, found: int, threshold: float, order: int,
                   strict: bool, paired: bool = False, q: float | None = None) -> Detectability:
    """Detectability of one test family at level q (default `fdr_q`; `nonzero.detectability`); the
    fixed-threshold rule has no test, so it is always testable."""
    if mc.nonzero != "fdr":
        return Detectability(n_active, m_tests, mc.threshold, float(np.sqrt(n_active)), np.nan, False, "", order)
    return detectability(n_active, m_tests, mc.fdr_q if q is None else q, mc.pvalue, mc.fdr, found, threshold, order,
                         strict=strict, paired=paired)


def correlations(work: EntryWork, executor: Executor, vidx: np.ndarray, sc: dict, progress: bool,
                 n_active: int) -> tuple[dict, dict]:
    """Per-entry counts of non-zero correlations among the entries `vidx` in both readings (tile by
    tile), and their detectabilities; the scalars `<reading>.corr_*` go into sc.

    FDR rule: two test families, each with its streaming BH (a histogram pass, a decision pass):
    the active reading's test over every pair, and the pool test over the pairs of mild entries;
    then one pass counts the active decisions and their union with the pool test's (marginal)."""
    mc = work.entries
    bs = mc.corr_block
    blocks = [vidx[i : i + bs] for i in range(0, vidx.size, bs)]
    offs = np.arange(0, vidx.size, bs)
    pairs = [(bi, bj) for bi in range(len(blocks)) for bj in range(bi, len(blocks))]
    m_tests = vidx.size * (vidx.size - 1) // 2
    counts = {r: np.zeros(vidx.size, dtype=np.int64) for r in READINGS}

    def add(count, bi, bj, rows, cols):
        count[offs[bi] : offs[bi] + len(blocks[bi])] += rows
        count[offs[bj] : offs[bj] + len(blocks[bj])] += cols

    if mc.nonzero == "threshold":
        dets = {}
        for reading in READINGS:
            results: dict = {}
            executor.run(work, [CorrThresholdTask(bi, bj, blocks[bi], blocks[bj], reading)
                                                       for bi, bj in pairs],
                         lambda t, r: results.__setitem__((t.bi, t.bj), r), desc=f"correlations ({reading})",
                         progress=progress)
            for (bi, bj), r in sorted(results.items()):
                add(counts[reading], bi, bj, r.rows, r.cols)
            sc.update({f"{reading}.corr_n_tests": m_tests, f"{reading}.corr_threshold": mc.threshold,
                       f"{reading}.corr_n_nonzero": int(counts[reading].sum() // 2),
                       f"{reading}.corr_mean_abs": sum(r.abs_sum for r in results.values()) / max(m_tests, 1)})
            dets[reading] = _detectability(mc, n_active, m_tests, 0, np.inf, 2, strict=False)
        return counts, dets
    # BH at q given activity; the marginal reading is the union of two families, each at q / 2
    families = (("active", mc.fdr_q), ("active", mc.fdr_q / 2), ("marginal", mc.fdr_q / 2))
    hists, thresholds, found, tested = {}, {}, {}, {}
    for reading in ("active", "marginal"):
        results = {}
        label = "correlations" + (" given activity" if reading == "active" else " over the pool (mild entries)")
        executor.run(work, [CorrHistogramTask(bi, bj, blocks[bi], blocks[bj], reading) for bi, bj in pairs],
                     lambda t, r: results.__setitem__((t.bi, t.bj), r), desc=f"{label} (pass 1)", progress=progress)
        hists[reading] = sum(r.hist for _, r in sorted(results.items()))
        sc[f"{reading}.corr_mean_abs"] = sum(r.abs_sum for _, r in sorted(results.items())) / max(m_tests, 1)
    for reading, q in families:
        bh = StreamingBH(q, pvalue=mc.pvalue, method=mc.fdr)
        bh.hist += hists[reading]
        bh.plan()
        results = {}
        executor.run(work, [CorrDecisionTask(bi, bj, blocks[bi], blocks[bj], (bh.z_low, bh.z_high),
                                                                   reading) for bi, bj in pairs],
                     lambda t, r: results.__setitem__((t.bi, t.bj), r), desc=f"correlations ({reading}, q = {q:g})",
                     progress=progress)
        for _, r in sorted(results.items()):
            bh.keep(r.und_v)
        key = (reading, q)
        thresholds[key], tested[key] = bh.resolve(), bh.m
        found[key] = bh.n_high + int(sum(np.sum(r.und_v >= thresholds[key]) for r in results.values()))
    q, half = mc.fdr_q, mc.fdr_q / 2
    results = {}
    executor.run(work, [CorrUnionTask(bi, bj, blocks[bi], blocks[bj],
                                                         (thresholds[("active", q)], thresholds[("active", half)],
                                                          thresholds[("marginal", half)]))
                                           for bi, bj in pairs],
                 lambda t, r: results.__setitem__((t.bi, t.bj), r), desc="correlations (counts)", progress=progress)
    for (bi, bj), r in sorted(results.items()):
        add(counts["active"], bi, bj, r.active_rows, r.active_cols)
        add(counts["marginal"], bi, bj, r.rows, r.cols)
    paired = mc.active_test == "pairs"
    det_a = _detectability(mc, n_active, m_tests, found[("active", q)], thresholds[("active", q)], 2, strict=False,
                           paired=paired)
    det_h = _detectability(mc, n_active, m_tests, found[("active", half)], thresholds[("active", half)], 2,
                           strict=False, paired=paired, q=half)
    det_p = _detectability(mc, n_active, tested[("marginal", half)], found[("marginal", half)],
                           thresholds[("marginal", half)], 2, strict=True, q=half)
    if det_a.untestable:  # nothing found given activity below its power limit: nothing counts there
        counts["active"][:] = 0
    if det_p.untestable:  # the pool test below its strict limit: only what holds given activity counts
        counts["marginal"][:] = 0 if det_h.untestable else counts["marginal"]
        if not det_h.untestable:  # recount without the pool family
            results = {}
            executor.run(work, [CorrUnionTask(bi, bj, blocks[bi], blocks[bj],
                                                                 (thresholds[("active", q)],
                                                                  thresholds[("active", half)], np.inf))
                                                   for bi, bj in pairs],
                         lambda t, r: results.__setitem__((t.bi, t.bj), r), desc="correlations (counts)",
                         progress=progress)
            counts["marginal"][:] = 0
            for (bi, bj), r in sorted(results.items()):
                add(counts["marginal"], bi, bj, r.rows, r.cols)
    for reading in READINGS:
        sc.update({f"{reading}.corr_n_tests": m_tests, f"{reading}.corr_n_nonzero": int(counts[reading].sum() // 2)})
    sc.update({"active.corr_threshold": thresholds[("active", q)], "marginal.corr_threshold": thresholds[("marginal", half)],
               "marginal.corr_n_tests_pool": tested[("marginal", half)],
               "marginal.corr_n_found_pool": found[("marginal", half)]})
    return counts, {"active": det_a, "marginal": union_detectability(det_h, det_p)}


def measure_hessian_entries(store, work: EntryWork, executor: Executor, n_params: int, progress: bool = False) -> Observation:
    prepare(store, work)
    computed, total = compute_h(store, work, executor, progress)
    if not np.asarray(store.root[work.group]["tile_done"][...]).all():
        raise TileError(f"{work.group}: some h tiles are not marked done after the tile phase")
    obs = analyse(store, work, executor, n_params, progress)
    obs.scalars.update(tiles_total=total, tiles_computed=computed)
    return obs



def active_rows(model, x, y, chunk: int) -> np.ndarray:
    """(n,) bool: the pool examples where the hinge loss is active (margin <= 1), the rows of the
    active reading; the others contribute exactly 0 to every Hessian entry (SPEC section 2)."""
    mask = np.zeros(len(x), dtype=bool)
    mask[active_examples(model.plan, model.params(), x, y, chunk).cpu().numpy()] = True
    return mask


def measure(ctx: Context) -> Observation:
    """The registry's entry point: the Hessian-entry statistics of the checkpoint, or a skip (with
    its reason) when the pool is smaller than max(s, 20)."""
    n = len(ctx.x)
    if n < max(ctx.s, 20):
        obs = Observation("hessian_entries", scalars={"pool_size": n, "minibatch": ctx.s})
        obs.attrs["skipped"] = (f"only {n} training examples have margin < 1 (measure.pool: active); the "
                                f"statistics need at least max(s, 20) = {max(ctx.s, 20)}")
        return obs
    ck = ctx.ckpt
    work = EntryWork(store_path=ctx.store.url, group=f"{ctx.group}/hessian_entries", design=ctx.design,
                     mcfg=ctx.cfg.measure, s=ctx.s, seed=ctx.cfg.seed, epoch=ctx.epoch, model_spec=ck["model_spec"],
                     input_shape=tuple(ck["input_shape"]), weights=[w.detach().cpu() for w in ck["weights"]],
                     x=ctx.x.detach().cpu(), y=ctx.y.detach().cpu(),
                     active_rows=active_rows(ctx.model, ctx.x, ctx.y, ctx.cfg.measure.example_chunk))
    return measure_hessian_entries(ctx.store, work, ctx.executor, ctx.model.n_params, ctx.progress)


# ------------------------------------------------------------------ report figures


def fig6a(r: Reader, fig):
    eps, reps = r.series("hessian_entries", "replicates")
    _, idx = r.series("hessian_entries", "replicates_entry")
    varying = np.array([[rep[:, j].std() > 0 for j in range(rep.shape[1])] for rep in reps]).sum(axis=0)
    pick = np.argsort(-varying, kind="stable")[:3]
    axes = fig.subplots(1, 3, squeeze=False)[0]
    for ax, j in zip(axes, pick):
        curves, centers = [], np.linspace(-6, 6, 80)
        for rep in reps:
            v = rep[:, j]
            sd = v.std()
            hist = np.histogram((v - v.mean()) / sd, bins=np.linspace(-6, 6, 81), density=True)[0] if sd > 0 \
                else np.zeros(80)
            curves.append(hist)
        ridgeline(ax, centers, curves, eps, "(H_a(S) - mean) / std")
        ax.set_title(f"entry {int(idx[0][j])}", fontsize=8)
    fig.suptitle("Fig 6a: bootstrap densities of three Hessian entries over epochs")


def fig6bc(r: Reader, fig):
    eps, subs = r.series("hessian_entries", "corr_submatrix")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, e, m, tag in zip(axes, [eps[0], eps[-1]], [subs[0], subs[-1]], ["6b", "6c"]):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"Fig {tag}: epoch {e}", fontsize=9)
        ax.set_xlabel("sampled entry (index in the design)")
        ax.set_ylabel("sampled entry (index in the design)")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="bootstrap correlation rho")
    fig.suptitle("Correlation submatrices of Hessian entries (bootstrap)")


def fig7ab(r: Reader, fig):
    eps, zs = r.series("hessian_entries", "z")
    _, valid = r.series("hessian_entries", "valid")
    ax1, ax2 = fig.subplots(1, 2)
    active_z = dict(zip(*r.series("hessian_entries", "active_z"))) if has(r, "active_z") else {}
    active_valid = dict(zip(*r.series("hessian_entries", "active_valid"))) if has(r, "active_valid") else {}
    for e, z, v, col in zip(eps, zs, valid, colors(len(eps))):
        if v.any():
            ax1.hist(z[v.astype(bool)], bins=60, range=(-3, 3), density=True, histtype="step", color=col,
                     label=f"epoch {e}")
        if e in active_z and active_valid[e].any():
            ax1.hist(active_z[e][active_valid[e].astype(bool)], bins=60, range=(-3, 3), density=True,
                     histtype="step", color=col, ls="--")
    ax1.set_xlabel("z = mean / std at the minibatch size (solid: marginal; dashed: given activity)")
    ax1.set_ylabel("density of entries")
    ax1.legend(fontsize=6, loc="upper left", bbox_to_anchor=(-0.02, -0.12), ncol=4, frameon=False)  # below
    ax1.set_title("Fig 7a: normalised means", fontsize=9)
    lines = [("marginal.z_fraction_exact", "o-", "marginal, at s (the paper's definition)"),
             ("active.z_fraction_exact", "o--", "given activity, at s"),
             ("marginal.z_fraction_per_example", "s-", "marginal, per example (z / sqrt(s))"),
             ("active.z_fraction_per_example", "s--", "given activity, per example")]
    drawn = 0
    for key, style, label in lines:
        try:
            ep, f = r.scalar("hessian_entries", key)
        except MissingData:
            continue
        line = ax2.plot(ep, f, style, ms=4, label=label)[0]
        band(r, ax2, ep, key, f, color=line.get_color())
        forced = key.replace("z_fraction_exact", "z_forced_fraction").replace("z_fraction_per", "z_forced_fraction_per")
        try:
            epf, ff = r.scalar("hessian_entries", forced)
            ax2.plot(epf, ff, "x:", color=line.get_color(), ms=5, lw=0.8)
        except MissingData:
            pass
        drawn += 1
    if not drawn:  # a store from before the exact fraction
        ep, frac = r.scalar("hessian_entries", "marginal.z_fraction")
        ax2.plot(ep, frac, "o:", label="z at the minibatch size s, from the B replicates (SPEC)")
        band(r, ax2, ep, "marginal.z_fraction", frac)
    ax2.axhline(PAPER["z_fraction"], color="k", lw=0.8, ls=":", label=f"paper: >= {PAPER['z_fraction']}")
    ax2.plot([], [], "kx:", lw=0.8, label="forced below the cut by sqrt(p / (1 - p)) (same colour)")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylabel("fraction of entries with |z| < cut")
    ax2.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, off the data
    ax2.set_title("Fig 7b: fraction |z| < cut (band: 95% interval over resamples of the examples)", fontsize=9)


def fig7c(r: Reader, fig):
    ax = fig.subplots()
    found = False
    for name, label, reading, style in [(n, lab, rd, st) for n, lab in (("corr", "correlation"), ("coskew", "co-skewness"),
                                                                       ("cokurt", "excess co-kurtosis"))
                                         for rd, st in (("marginal", "o-"), ("active", "o--"))]:
        name = f"{reading}.{name}"
        label = f"{label}, {'marginal' if reading == 'marginal' else 'given activity'}"
        try:
            ep, ex = r.scalar("hessian_entries", f"{name}.exponent")
            _, rel = r.scalar("hessian_entries", f"{name}.relative")
        except MissingData:
            continue
        found = True
        line = ax.plot(ep, ex, style, label=label)[0]
        try:
            ub_ep, ub = r.scalar("hessian_entries", f"{name}.exponent_is_upper_bound")
            ub_pts = [(e, x) for e, x, u in zip(ep, ex, ub) if u > 0]
            if ub_pts:
                ax.plot(*zip(*ub_pts), "v", ms=10, mfc="white", color=line.get_color())
        except MissingData:
            pass
        band(r, ax, ep, f"{name}.exponent", ex, color=line.get_color())
        live = [(e, x, v) for e, x, v in zip(ep, ex, rel) if np.isfinite(x) and v > 0]
        if live:
            ax.annotate(f"{live[-1][2]:.2g}", live[-1][:2], fontsize=7, xytext=(4, 0), textcoords="offset points")
        try:  # untestable: too few active examples for the non-zero test (sizes NaN, flag 1)
            uep, flag = r.scalar("hessian_entries", f"{name}.untestable")
            gone = [e for e, u in zip(uep, flag) if u > 0]
        except MissingData:
            gone = []
        if gone:
            ax.plot(gone, [0.02] * len(gone), "x", ms=8, color=line.get_color(), transform=ax.get_xaxis_transform())
    if not found:
        raise MissingData("scalars hessian_entries.{marginal,active}.{corr,coskew,cokurt}.exponent")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("exponent of N in the coupling set size")
    ax.plot([], [], "v", ms=8, mfc="white", color="grey", label="nothing detected: upper bound")
    ax.plot([], [], "x", ms=8, color="grey", label="untestable (too few active examples)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Fig 7c: coupling set sizes (label: relative size at the last\nepoch with a detection)", fontsize=9)


# The registration (`adaptsym.registry`): name, measure function, settings section, report figures.
OBSERVABLE = Observable("hessian_entries", measure, settings=HessianEntriesSpec, figures=(Figure("fig6a_entries", fig6a, (12, 4)), Figure("fig6bc_correlations", fig6bc, (10, 4.5)),
                     Figure("fig7ab_normalised_means", fig7ab, (14, 5)), Figure("fig7c_coupling", fig7c, (9, 4.5))),
                        default=True, order=30)

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

from .bootstrap import replicates
from .comoments import decide, sample_tuples
from .correlation import standardise
from .coupling import coupling_summary
from .entry_blocks import (PER_ENTRY, PER_ENTRY_CI, PER_ENTRY_INT, STREAM_COUPLING, STREAM_MARDIA, STREAM_SUB, STREAM_TUPLES,
                           ComomentTask, CorrDecisionTask, CorrTask, EntryBlocks, EntryBlockTask, EntryWork, stream)
from .entry_stats import Z_BATCHES, fraction_interval, fraction_std, summarise_deviations, z_fraction
from .config import HessianEntriesSpec
from .errors import TileError, UserFacingError
from .fdr import StreamingBH
from .mardia import mardia
from .nonzero import Detectability, detectability
from .observation import Context, Observation
from .store import chunk_faults
from .util import ceil_div
from .protocols import Executor

MIN_VALID = 8  # entries that vary over the pool, below which statistics are skipped
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
    for name in PER_ENTRY + PER_ENTRY_CI:  # NaN fill: a chunk lost on disk never reads as plausible values
        store.create(g, name, (K,), ["entry"], chunks=(ea,))
    for name in PER_ENTRY_INT:
        store.create(g, name, (K,), ["entry"], chunks=(ea,), dtype="int64", fill_value=0)
    store.create(g, "valid", (K,), ["entry"], chunks=(ea,), dtype="bool", fill_value=False)
    for name, arr in (("p", d.p), ("q", d.q), ("layer_p", d.layer_p), ("layer_q", d.layer_q),
                      ("structural_zero", d.structural_zero)):
        store.write(g, name, arr, ["entry"])


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

    executor.run(work, "h_tile", pending, on_result, desc=f"h tiles (epoch {work.epoch})", progress=progress)
    return len(pending), len(work.tiles())


def analyse(store, work: EntryWork, executor: Executor, n_params: int, progress: bool = False) -> Observation:
    """All statistics of SPEC section 4 from the stored h, block by block on the executor, in the
    phases of the module docstring: entry blocks (2), then, unless too few entries vary, the |z|
    fractions, the driver's columns (5), the couplings (3, 4) and Mardia (5)."""
    d = work.design
    obs = Observation(NAME)
    order = _entry_blocks(work, executor, progress)
    valid = np.concatenate([b.valid for b in order])
    vidx = np.nonzero(valid)[0]
    active = np.any(np.stack([b.active for b in order]), axis=0)
    obs.scalars.update(n_entries=d.n_entries, n_valid=int(valid.sum()), n_structural_zero=int(d.structural_zero.sum()),
                       n_degenerate=int((~valid & ~d.structural_zero).sum()), pool_size=work.n, minibatch=work.s,
                       replicates=work.entries.replicates, n_params=n_params, n_active_examples=int(active.sum()))
    if vidx.size < MIN_VALID:
        # e.g. zero training loss: every pool example has margin >= 1, so H = 0 exactly
        obs.attrs["skipped"] = (f"only {vidx.size} entries vary over the pool ({int(active.sum())} of {work.n} "
                                f"examples have margin < 1); statistics need at least {MIN_VALID}")
        return obs
    _z_fractions(obs, order, work.entries.z_cut)
    reader = EntryBlocks(work)  # the driver reads a few columns only
    _driver_columns(obs, work, reader, vidx)
    _couplings(obs, work, executor, vidx, int(active.sum()), n_params, progress)
    _mardia(obs, work, reader, vidx)
    return obs


def _entry_blocks(work: EntryWork, executor: Executor, progress: bool) -> list[dict]:
    """Phase 2: every entry block's results, in block order."""
    na = ceil_div(work.design.n_entries, work.entry_chunk)
    blocks: dict = {}
    executor.run(work, "entry_block", [EntryBlockTask(ai) for ai in range(na)], lambda t, r: blocks.__setitem__(t.ai, r),
                 desc="entry blocks", progress=progress)
    return [blocks[ai] for ai in range(na)]


def _z_fractions(obs: Observation, order: list[dict], cut: float) -> None:
    """Fig 7b: the |z| < cut fraction with its interval, at the minibatch size and at other batch
    sizes (s = 1: per example), and the scaling check's summary."""
    sc = obs.scalars
    z = np.concatenate([b.z for b in order])
    sc["z_fraction"] = z_fraction(z, cut)
    counts = np.sum([b.resample for b in order], axis=0)  # (1 + R, 1 + len(Z_BATCHES) + 1)
    whole, res = counts[0], counts[1:]  # the pool itself, then its resamples
    exact = lambda c: float(whole[c] / whole[-1]) if whole[-1] else float("nan")  # noqa: E731
    sc["z_fraction_std"] = fraction_std(res)
    # the interval is that of the exact-z fraction (sqrt(s) mean / std of h over the pool), the
    # statistic the resamples recompute; z_fraction (from the B replicates) adds Monte Carlo noise
    sc["z_fraction_exact"] = exact(0)
    sc["z_fraction_ci_low"], sc["z_fraction_ci_high"] = fraction_interval(res, point=sc["z_fraction_exact"])
    sc["z_cut"] = cut
    # the same fraction at other batch sizes; s = 1 is the per-example normalisation mean / std of h
    by_s = [exact(1 + i) for i in range(len(Z_BATCHES))]
    obs.add("z_fraction_batch", np.array(Z_BATCHES), ["zbatch"])
    obs.add("z_fraction_by_batch", np.nan_to_num(np.array(by_s), nan=-1.0), ["zbatch"])
    for i, b in enumerate(Z_BATCHES):  # intervals as scalars: NaN (no varying entry) is allowed there
        sc[f"z_fraction_s{b}"] = by_s[i]
        sc[f"z_fraction_s{b}_ci_low"], sc[f"z_fraction_s{b}_ci_high"] = fraction_interval(res, column=1 + i,
                                                                                         point=by_s[i])
    sc["z_fraction_per_example"] = by_s[0]
    sc["z_fraction_per_example_ci_low"] = sc["z_fraction_s1_ci_low"]
    sc["z_fraction_per_example_ci_high"] = sc["z_fraction_s1_ci_high"]
    devs = {key: np.concatenate([b.devs[key] for b in order]) for key in ("mean", "std", "skew", "exkurt")}
    sc.update({f"scaling.{k}": v for k, v in summarise_deviations(devs).items()})


def _driver_columns(obs: Observation, work: EntryWork, reader: EntryBlocks, vidx: np.ndarray) -> None:
    """Fig 6a: the same 16 cross-layer entries' replicates at every checkpoint; Figs 6b/6c: a
    correlation submatrix, bootstrap and exact."""
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
    obs.add("corr_submatrix_entry", sub_idx, ["sub_a"])
    obs.scalars["corr_bootstrap_max_dev"] = float(np.abs(sub - exact_sub).max())


def _couplings(obs: Observation, work: EntryWork, executor: Executor, vidx: np.ndarray, n_active: int,
               n_params: int, progress: bool) -> None:
    """Phases 3 and 4: correlation, co-skewness and co-kurtosis coupling set sizes, each with its
    detectability (untestable statistics are NaN, their reason in attrs["untestable"])."""
    mc, sc, K = work.entries, obs.scalars, work.design.n_entries
    rng_c = stream(work.seed, work.epoch, STREAM_COUPLING)
    ccounts = correlations(work, executor, vidx, sc, progress)
    full = np.zeros(K, dtype=np.int64)
    full[vidx] = ccounts
    obs.add("corr_count", full, ["entry"])
    det = _detectability(mc, n_active, sc["corr_n_tests"], sc["corr_n_nonzero"], sc["corr_threshold"], 2)
    summaries = {"corr": (coupling_summary(ccounts, vidx.size - 1, n_params, 2, rng_c, mc.uncertainty_resamples),
                          det)}
    rng_t = stream(work.seed, work.epoch, STREAM_TUPLES)
    per = mc.tuples_per_entry
    for order_, name in ((3, "coskew"), (4, "cokurt")):
        if vidx.size <= order_:
            continue
        tup = vidx[sample_tuples(vidx.size, per, order_, rng_t)]
        parts: dict = {}
        step = 32 * per  # small tasks balance the actors; workers cache the columns they read
        tasks = [ComomentTask(k, tup[i : i + step]) for k, i in enumerate(range(0, len(tup), step))]
        executor.run(work, "comoment_tile", tasks, lambda t, r: parts.__setitem__(t.index, r),
                     desc=name, progress=progress)
        get = lambda key: np.concatenate([getattr(parts[k], key) for k in range(len(tasks))])  # noqa: E731
        value, tstat = get("value"), get("tstat")
        nonzero = decide(value, tstat, mc.nonzero, mc.fdr_q, mc.threshold, mc.pvalue, mc.fdr)
        per_entry = nonzero.reshape(vidx.size, per).sum(axis=1)
        obs.add(f"{name}_tuples", tup, [f"{name}_tuple", f"{name}_member"])
        obs.add(f"{name}_value", value, [f"{name}_tuple"])
        obs.add(f"{name}_tstat", tstat, [f"{name}_tuple"])
        obs.add(f"{name}_active", get("active"), [f"{name}_tuple"])
        obs.add(f"{name}_nonzero", nonzero, [f"{name}_tuple"])
        full = np.zeros(K, dtype=np.int64)
        full[vidx] = per_entry
        obs.add(f"{name}_count", full, ["entry"])
        found = int(nonzero.sum())
        thr = float(np.abs(tstat[nonzero]).min()) if found and mc.nonzero == "fdr" else np.inf
        summaries[name] = (coupling_summary(per_entry, per, n_params, order_, rng_c, mc.uncertainty_resamples),
                           _detectability(mc, n_active, len(tup), found, thr, order_))
    untestable = {}
    for name, (summ, det) in summaries.items():
        for k, v in summ.items():
            sc[f"{name}.{k}"] = np.nan if det.untestable and k != "mean_count" else float(v)
        sc.update(det.scalars(name))
        if det.untestable:
            untestable[name] = det.reason
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


def _detectability(mc: HessianEntriesSpec, n_active: int, m_tests: int, found: int, threshold: float, order: int) -> Detectability:
    """Detectability of one statistic; the fixed-threshold rule has no test, so it is always testable."""
    if mc.nonzero != "fdr":
        return Detectability(n_active, m_tests, mc.threshold, float(np.sqrt(n_active)), np.nan, False, "", order)
    return detectability(n_active, m_tests, mc.fdr_q, mc.pvalue, mc.fdr, found, threshold, order)


def correlations(work: EntryWork, executor: Executor, vidx: np.ndarray, sc: dict, progress: bool) -> np.ndarray:
    """Per-entry counts of non-zero correlations among the valid entries (tile by tile)."""
    mc = work.entries
    bs = mc.corr_block
    blocks = [vidx[i : i + bs] for i in range(0, vidx.size, bs)]
    offs = np.arange(0, vidx.size, bs)
    pairs = [(bi, bj) for bi in range(len(blocks)) for bj in range(bi, len(blocks))]
    counts = np.zeros(vidx.size, dtype=np.int64)
    results: dict = {}

    def collect(task, res):
        results[(task.bi, task.bj)] = res

    def add_rows(task_res):
        for (bi, bj), r in sorted(task_res.items()):
            counts[offs[bi] : offs[bi] + len(blocks[bi])] += r.rows
            counts[offs[bj] : offs[bj] + len(blocks[bj])] += r.cols

    m_tests = vidx.size * (vidx.size - 1) // 2
    if mc.nonzero == "threshold":
        executor.run(work, "corr_threshold_tile", [CorrTask(bi, bj, blocks[bi], blocks[bj]) for bi, bj in pairs], collect,
                     desc="correlations", progress=progress)
        add_rows(results)
        abs_sum = sum(r.abs_sum for _, r in sorted(results.items()))
        threshold = mc.threshold
    else:
        bh = StreamingBH(mc.fdr_q, pvalue=mc.pvalue, method=mc.fdr)
        executor.run(work, "corr_histogram_tile", [CorrTask(bi, bj, blocks[bi], blocks[bj]) for bi, bj in pairs], collect,
                     desc="correlations (pass 1)", progress=progress)
        for _, r in sorted(results.items()):
            bh.hist += r.hist
        abs_sum = sum(r.abs_sum for _, r in sorted(results.items()))
        bh.plan()
        results = {}
        executor.run(work, "corr_decision_tile", [CorrDecisionTask(bi, bj, blocks[bi], blocks[bj], (bh.z_low, bh.z_high))
                                                  for bi, bj in pairs], collect, desc="correlations (pass 2)",
                     progress=progress)
        add_rows(results)
        for _, r in sorted(results.items()):
            bh.keep(r.und_v)
        threshold = bh.resolve()
        for (bi, bj), r in sorted(results.items()):
            hit = r.und_v >= threshold
            np.add.at(counts, offs[bi] + r.und_r[hit], 1)
            np.add.at(counts, offs[bj] + r.und_c[hit], 1)
    sc.update(corr_n_tests=m_tests, corr_n_nonzero=int(counts.sum() // 2), corr_threshold=float(threshold),
              corr_mean_abs=abs_sum / max(m_tests, 1))
    return counts


def measure_hessian_entries(store, work: EntryWork, executor: Executor, n_params: int, progress: bool = False) -> Observation:
    prepare(store, work)
    computed, total = compute_h(store, work, executor, progress)
    if not np.asarray(store.root[work.group]["tile_done"][...]).all():
        raise TileError(f"{work.group}: some h tiles are not marked done after the tile phase")
    obs = analyse(store, work, executor, n_params, progress)
    obs.scalars.update(tiles_total=total, tiles_computed=computed)
    return obs


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
    work = EntryWork(store_path=str(ctx.store.path), group=f"{ctx.group}/hessian_entries", design=ctx.design,
                     mcfg=ctx.cfg.measure, s=ctx.s, seed=ctx.cfg.seed, epoch=ctx.epoch, model_spec=ck["model_spec"],
                     input_shape=tuple(ck["input_shape"]), weights=[w.detach().cpu() for w in ck["weights"]],
                     x=ctx.x.detach().cpu(), y=ctx.y.detach().cpu())
    return measure_hessian_entries(ctx.store, work, ctx.executor, ctx.model.n_params, ctx.progress)

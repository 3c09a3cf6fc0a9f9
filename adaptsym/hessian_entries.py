"""Hessian entries and their bootstrap statistics at one checkpoint (SPEC section 4, Figs 6, 7).

Steps: the design's per-example entries h (n, K) (the one expensive step); the bootstrap
replicates X = C h / s; per-entry moments and the normalised mean z with the |z| < cut
fraction; the exact-scaling check; streaming correlations with their coupling counts and a
random submatrix; co-skewness and co-kurtosis on sampled tuples; Mardia's tests on random
sets of entries; coupling set sizes for all three statistics.
"""

from __future__ import annotations

import numpy as np

from .bootstrap import check_pool, multinomial_counts, predicted_moments, replicates
from .comoments import comoment
from .config import MeasureSpec
from .correlation import coupling_counts, standardise, submatrix
from .coupling import coupling_summary
from .entries import EntryDesign
from .entry_stats import moments, scaling_check, valid_entries, z_fraction, z_fraction_uncertainty
from .mardia import mardia
from .observation import Observation
from .per_example import design_entries


MIN_VALID = 8  # entries that vary over the pool, below which statistics are skipped


class NonFiniteEntryError(FloatingPointError):
    """A Hessian entry came out NaN or infinite; the message names it."""


def check_finite(h: np.ndarray, design: EntryDesign, where: str) -> None:
    bad = ~np.isfinite(h)
    if bad.any():
        k, a = np.argwhere(bad)[0]
        raise NonFiniteEntryError(
            f"{where}: Hessian entry {a} (p={design.p[a]}, q={design.q[a]}, layers {design.layer_p[a]},"
            f"{design.layer_q[a]}) is {h[k, a]} for pool example {k} ({int(bad.sum())} non-finite values in all); "
            "nothing was written for this checkpoint")


def compute_h(model_plan, weights, x, y, design: EntryDesign, mcfg: MeasureSpec, where: str,
              progress: bool = False) -> np.ndarray:
    h = design_entries(model_plan, weights, x, y, design, mcfg.example_chunk, mcfg.column_chunk, progress)
    check_finite(h, design, where)
    sz = design.structural_zero
    if sz.any() and np.abs(h[:, sz]).max() != 0.0:
        raise AssertionError(f"{where}: same-layer Hessian entries are not exactly zero; the HVP is wrong")
    return h


def analyse(h: np.ndarray, design: EntryDesign, mcfg: MeasureSpec, s: int, n_params: int,
            seed: int, epoch: int) -> Observation:
    """All statistics of SPEC section 4 from the per-example entries h (n, K)."""
    n, K = h.shape
    check_pool(n, s)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xB007]))
    obs = Observation("hessian_entries")
    valid = valid_entries(h, design.structural_zero)
    vidx = np.nonzero(valid)[0]
    obs.add("p", design.p, ["entry"])
    obs.add("q", design.q, ["entry"])
    obs.add("layer_p", design.layer_p, ["entry"])
    obs.add("layer_q", design.layer_q, ["entry"])
    obs.add("structural_zero", design.structural_zero, ["entry"])
    obs.add("valid", valid, ["entry"])
    obs.add("h", h, ["example", "entry"], chunks=(min(n, mcfg.example_chunk), min(K, 4096)))
    sc = obs.scalars
    sc.update(n_entries=K, n_valid=int(valid.sum()), n_structural_zero=int(design.structural_zero.sum()),
              n_degenerate=int((~valid & ~design.structural_zero).sum()), pool_size=n, minibatch=s,
              replicates=mcfg.replicates, n_params=n_params)
    sc["n_active_examples"] = int(np.any(h != 0, axis=1).sum())
    if vidx.size < MIN_VALID:
        # e.g. zero training loss: every pool example has margin >= 1, so H = 0 exactly
        obs.attrs["skipped"] = (f"only {vidx.size} entries vary over the pool ({sc['n_active_examples']} of {n} "
                                f"examples have margin < 1); statistics need at least {MIN_VALID}")
        return obs

    counts = multinomial_counts(n, s, mcfg.replicates, rng)
    hv = h[:, vidx]
    X = replicates(hv, counts, s)

    # per-entry moments (stored for all entries; zeros where not valid)
    est, pred = moments(X), predicted_moments(hv, s)
    for key in ("mean", "std", "skew", "exkurt"):
        full = np.zeros(K)
        full[vidx] = est[key]
        obs.add(key, full, ["entry"])
    for key in ("mean", "skew", "exkurt"):
        full = np.zeros(K)
        full[vidx] = pred[key]
        obs.add(f"pred_{key}", full, ["entry"])
    full = np.zeros(K)
    full[vidx] = np.sqrt(pred["var"])
    obs.add("pred_std", full, ["entry"])
    z = est["mean"] / est["std"]
    zfull = np.zeros(K)
    zfull[vidx] = z
    obs.add("z", zfull, ["entry"])
    sc["z_fraction"] = z_fraction(z, mcfg.z_cut)
    sc["z_fraction_std"] = z_fraction_uncertainty(hv, s, mcfg.z_cut, mcfg.uncertainty_resamples, rng)
    sc["z_cut"] = mcfg.z_cut
    sc.update({f"scaling.{k}": v for k, v in scaling_check(X, hv, s).items()})

    # the same 16 cross-layer entries at every checkpoint (Fig 6a follows them through training)
    cross = np.nonzero(~design.structural_zero)[0]
    shown = np.sort(np.random.default_rng(np.random.SeedSequence([seed, 0x6A])).choice(
        cross, size=min(16, cross.size), replace=False))
    obs.add("replicates_entry", shown, ["shown"])
    obs.add("replicates", replicates(h[:, shown], counts, s), ["replicate", "shown"])

    # correlations: decided on the exact correlation over S (the pool's, the B -> infinity limit
    # of the bootstrap; the bootstrap's Monte Carlo noise would inflate Fisher's z), streaming
    Zh = standardise(hv)
    corr = coupling_counts(Zh, n, mcfg.nonzero, mcfg.fdr_q, mcfg.threshold, mcfg.corr_block)
    sub, sub_idx = submatrix(standardise(X), mcfg.submatrix, rng)  # Figs 6b/6c: bootstrap estimate
    exact_sub = Zh[:, sub_idx].T @ Zh[:, sub_idx] / n
    obs.add("corr_submatrix", sub, ["sub_a", "sub_b"])
    obs.add("corr_submatrix_exact", exact_sub, ["sub_a", "sub_b"])
    obs.add("corr_submatrix_entry", vidx[sub_idx], ["sub_a"])
    cfull = np.zeros(K, dtype=np.int64)
    cfull[vidx] = corr.counts
    obs.add("corr_count", cfull, ["entry"])
    sc.update(corr_n_tests=corr.n_tests, corr_n_nonzero=corr.n_nonzero, corr_threshold=corr.threshold,
              corr_mean_abs=corr.mean_abs, corr_bootstrap_max_dev=float(np.abs(sub - exact_sub).max()))
    summaries = {"corr": coupling_summary(corr.counts, vidx.size - 1, n_params, 2, rng, mcfg.uncertainty_resamples)}

    # co-skewness and co-kurtosis on sampled tuples
    for order, name in ((3, "coskew"), (4, "cokurt")):
        if vidx.size <= order:
            continue
        res = comoment(X, hv, order, mcfg.tuples_per_entry, rng, mcfg.nonzero, mcfg.fdr_q, mcfg.threshold)
        obs.add(f"{name}_tuples", vidx[res.tuples], [f"{name}_tuple", f"{name}_member"])
        obs.add(f"{name}_value", res.value, [f"{name}_tuple"])
        obs.add(f"{name}_tstat", res.tstat, [f"{name}_tuple"])
        obs.add(f"{name}_nonzero", res.nonzero, [f"{name}_tuple"])
        full = np.zeros(K, dtype=np.int64)
        full[vidx] = res.counts
        obs.add(f"{name}_count", full, ["entry"])
        summaries[name] = coupling_summary(res.counts, mcfg.tuples_per_entry, n_params, order, rng,
                                           mcfg.uncertainty_resamples)
    for name, summ in summaries.items():
        for k, v in summ.items():
            sc[f"{name}.{k}"] = float(v)

    # Mardia on random sets of entries of the pool (n samples)
    if mcfg.mardia_sets and vidx.size >= mcfg.mardia_dim:
        rows = []
        for _ in range(mcfg.mardia_sets):
            pick = rng.choice(vidx.size, size=mcfg.mardia_dim, replace=False)
            m = mardia(hv[:, pick])
            rows.append([m["b1"], m["b2"], m["skew_stat"], m["skew_p"], m["kurt_stat"], m["kurt_p"]])
        rows = np.array(rows)
        obs.add("mardia", rows, ["mardia_set", "mardia_stat"])
        obs.attrs["mardia_stat"] = ["b1", "b2", "skew_stat", "skew_p", "kurt_stat", "kurt_p"]
        sc["mardia.skew_reject_fraction"] = float(np.mean(rows[:, 3] < 0.05))
        sc["mardia.kurt_reject_fraction"] = float(np.mean(rows[:, 5] < 0.05))
        sc["mardia.median_b2_over_gauss"] = float(np.median(rows[:, 1]) / (mcfg.mardia_dim * (mcfg.mardia_dim + 2)))
    return obs


def measure_hessian_entries(plan, weights, x, y, design: EntryDesign, mcfg: MeasureSpec, s: int,
                            seed: int, epoch: int, progress: bool = False) -> Observation:
    h = compute_h(plan, weights, x, y, design, mcfg, f"checkpoint epoch {epoch}", progress)
    return analyse(h, design, mcfg, s, sum(w.numel() for w in weights), seed, epoch)

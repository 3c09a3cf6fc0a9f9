"""The effective-model analysis of one scenario's ensemble: an Ising model per part of the
network, the energy of every configuration, and entropy landscapes around references.

Parts (Zou & Huang, Fig. 1): `full` (all weights), `LB` (the first weight layer), `ITR` (the
layers in between) and `RB` (the last layer). Each part gets its own model, fitted to the
marginal moments of its weights: the maximum-entropy model of that part alone. A network with
two weight layers has LB and RB only; one with a single layer only `full`.

References: configurations of the ensemble drawn from the lowest, middle and highest tenth of
the full model's energy E(s)/N (`references` from each, seeded). A part's reference is the
reference configuration's weights in that part.

Written to `effective/<scenario>/<part>/` in the run's zarr store:
    J (weight, weight_b), h, m_data, C_data, m_model, C_model, delta (step), delta_bp (bp_step)
    energy_density (configuration)            full part only: E(s)/N of every configuration
    sampled/                                  with landscape.sampled: the same landscape by parallel
        tempering (`tempering`): x, q, d, entropy, free_energy, energy (+ _se), rhat (reference, x),
        d_histogram (reference, x, d_index), swap_rate; gaps and verdicts (`gap_verdict`)
    x (x), d / q / entropy / free_energy / energy / converged / residual / stable
        (reference, direction, x): direction 0 sweeps x from +x_max down, 1 back up; `stable`:
        the BP fixed point attracts its iteration (`unstable_points` counts those that do not)
with the fit's `steps`, `converged`, `delta`, `rank_deficient` and the references in attributes,
and the BP fit's final model checked from several starts (`model.bp_solve`): `bp_stable`,
and `bp_fixed_points` (distinct stable ones; more than 1: several phases).

Fit (`fit.moments`): Boltzmann learning on BP moments (`delta_bp` its Delta per step); with
`gibbs`, then persistent-contrastive-divergence steps from the BP fit on Gibbs-sampled moments
(`adaptsym.effective.gibbs`), and `delta` ends with the Delta of a long sampled estimate, whose sampling
noise is `delta_noise` and whose chains' largest R-hat is `gibbs_rhat` (`gibbs_mixed`: below 1.1;
above, `delta_noise` understates the error). With `bp`, `delta` is `delta_bp`.
"""

from __future__ import annotations

import warnings

import numpy as np

from .model import UnstableFixedPointWarning, boltzmann_learning, bp_solve, data_moments, s_upper, sweep
from .config import EffectiveConfig
from .gibbs import RHAT_BOUND, pcd_learning
from .tempering import GAP_LEVEL, tempered_landscape
from ..storage.store import RunStore

ENERGY_CLASSES = ("low", "medium", "high")
LANDSCAPE_FIELDS = ("q", "d", "entropy", "free_energy", "energy", "residual")


def parts(widths: list[int]) -> dict[str, np.ndarray]:
    """Weight indices of each part of a network with these layer widths."""
    bounds = np.cumsum([0] + [a * b for a, b in zip(widths[:-1], widths[1:])])
    n_layers = len(widths) - 1
    out = {"full": np.arange(bounds[-1])}
    if n_layers >= 2:
        out["LB"] = np.arange(bounds[0], bounds[1])
        if n_layers >= 3:
            out["ITR"] = np.arange(bounds[1], bounds[-2])
        out["RB"] = np.arange(bounds[-2], bounds[-1])
    return out


def pick_references(energy: np.ndarray, per_class: int, seed: int) -> dict[str, list[int]]:
    """Configuration indices from the lowest, middle and highest tenth of the energies."""
    order = np.argsort(energy, kind="stable")
    k = len(order)
    tenth = max(1, k // 10)
    windows = {"low": order[:tenth], "medium": order[k // 2 - tenth // 2: k // 2 - tenth // 2 + tenth],
               "high": order[k - tenth:]}
    rng = np.random.default_rng(seed)
    return {c: sorted(int(i) for i in rng.choice(w, size=min(per_class, len(w)), replace=False))
            for c, w in windows.items()}


def group(scenario: str, part: str) -> str:
    return f"effective/{scenario}/{part}"


def fit_part(store: RunStore, cfg: EffectiveConfig, scenario: str, part: str, configs: np.ndarray, log=None) -> dict:
    """Fit the part's model and store it; returns its summary. `log(step, delta)` sees every step."""
    f = cfg.fit
    m, C = data_moments(configs)
    fit = boltzmann_learning(m, C, eta=f.eta, target=f.target, max_steps=f.max_steps, damping=f.damping,
                             bp_tol=f.bp_tol, bp_max_iter=f.bp_max_iter,
                             on_step=None if log is None else (lambda i, d, r: log(i, d)))
    bp_fit = fit
    if f.moments == "gibbs":  # refine the BP fit on sampled moments; its steps continue the step count
        gs, first = f.gibbs, bp_fit.steps
        fit = pcd_learning(m, C, configs, J0=bp_fit.J, h0=bp_fit.h, chains=gs.chains, eta=gs.eta, decay=gs.decay,
                           steps=gs.steps, eval_sweeps=gs.eval_sweeps, target=f.target, average=gs.average, seed=cfg.seed,
                           on_step=None if log is None else (lambda i, d, r: log(first + i, d)))
    g = group(scenario, part)
    store.reset_group(g)
    n = m.shape[0]
    for name, arr, dims in (("J", fit.J, ("weight", "weight_b")), ("h", fit.h, ("weight",)),
                            ("m_data", m, ("weight",)), ("C_data", C, ("weight", "weight_b")),
                            ("m_model", fit.m_model, ("weight",)), ("C_model", fit.C_model, ("weight", "weight_b")),
                            ("delta", np.array(fit.deltas), ("step",)), ("delta_bp", np.array(bp_fit.deltas), ("bp_step",))):
        store.write(g, name, arr, dims)
    k = configs.shape[0]
    # the BP fit's final model from several starts: is its fixed point stable and the only one?
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableFixedPointWarning)
        ms = bp_solve(bp_fit.J, bp_fit.h, damping=f.damping, tol=f.bp_tol, max_iter=f.bp_max_iter, seed=cfg.seed)
    summary = {"bp_stable": ms.best_attracts, "bp_fixed_points": ms.n_stable_points,
               "n_weights": n, "configurations": k, "moments": f.moments, "steps": bp_fit.steps - 1,
               "delta_bp": bp_fit.deltas[-1], "delta": fit.deltas[-1], "converged": bool(fit.converged),
               "target": f.target, "bp_iterations_last": bp_fit.bp_iterations[-1], "rank_deficient": bool(k <= n)}
    if f.moments == "gibbs":
        # the reported Delta is of sampled moments: its sampling noise adds in quadrature (`gibbs`)
        summary.update(gibbs_steps=f.gibbs.steps, delta_noise=fit.noise, samples=f.gibbs.chains * f.gibbs.eval_sweeps,
                       gibbs_rhat=fit.rhat, gibbs_mixed=bool(fit.rhat is not None and fit.rhat < 1.1))
    store.set_attrs(summary, group=g)
    return {"fit": fit, **summary}


def landscape_part(store: RunStore, cfg: EffectiveConfig, scenario: str, part: str, J, h,
                   references: np.ndarray, progress=None) -> dict:
    """Both sweeps around each reference (rows of `references`, +-1); stores and summarises them."""
    ls = cfg.landscape
    xs = np.linspace(ls.x_max, -ls.x_max, ls.x_steps)
    shape = (len(references), 2, len(xs))
    out = {k: np.zeros(shape) for k in LANDSCAPE_FIELDS}
    conv = np.zeros(shape, dtype=bool)
    stable = np.zeros(shape, dtype=bool)
    bp = {"damping": cfg.fit.damping, "tol": cfg.fit.bp_tol, "max_iter": cfg.fit.bp_max_iter}
    for r, ref in enumerate(references):
        down, M = sweep(J, h, ref, xs, **bp)
        up, _ = sweep(J, h, ref, xs[::-1], messages=M, **bp)  # back from where the way down ended
        for direction, pts in ((0, down), (1, up[::-1])):
            for i, p in enumerate(pts):
                for key in LANDSCAPE_FIELDS:
                    out[key][r, direction, i] = getattr(p, key)
                conv[r, direction, i] = p.converged
                stable[r, direction, i] = p.stable
        if progress is not None:
            progress(1)
    g = group(scenario, part)
    store.write(g, "x", xs, ("x",))
    for key, arr in out.items():
        store.write(g, key, arr, ("reference", "direction", "x"))
    store.write(g, "converged", conv, ("reference", "direction", "x"))
    store.write(g, "stable", stable, ("reference", "direction", "x"))  # BP fixed point attracts its iteration
    s, d = out["entropy"], out["d"]
    inside = conv & (d > 1e-3) & (d < 1 - 1e-3)
    ratio = np.where(inside, s / np.maximum(s_upper(d), 1e-300), np.nan)
    gap = np.abs(out["d"][:, 0] - out["d"][:, 1])
    summary = {"hysteresis_max_gap": float(gap.max()), "max_d_jump": float(np.abs(np.diff(d, axis=-1)).max()),
               "entropy_over_bound_mean": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else float("nan"),
               "entropy_excess_max": float(np.max(np.where(conv, s - s_upper(d), -np.inf))),
               "nonconverged_points": int((~conv).sum()), "max_residual": float(out["residual"].max()),
               "unstable_points": int((conv & ~stable).sum())}
    store.set_attrs(summary, group=g)
    return summary


def shared_unit(widths: list[int], idx: np.ndarray) -> np.ndarray:
    """(len(idx), len(idx)) bool: weights idx[a] and idx[b] (a != b) touch a common unit (the
    same input or output neuron), e.g. two weights into one hidden unit."""
    ends = []
    offset, unit0 = 0, 0
    for a, b in zip(widths[:-1], widths[1:]):
        i, j = np.divmod(np.arange(a * b), b)  # weight (i, j) of this layer: unit i below, unit j above
        ends.append(np.stack([unit0 + i, unit0 + a + j], axis=1))
        offset += a * b
        unit0 += a
    e = np.concatenate(ends)[idx]
    inc = np.zeros((len(idx), sum(widths)), dtype=np.float32)
    inc[np.arange(len(idx)), e[:, 0]] = 1
    inc[np.arange(len(idx)), e[:, 1]] = 1
    out = (inc @ inc.T) > 0
    np.fill_diagonal(out, False)
    return out


def correlation_diagnostics(widths, idx, m_data, C_data, C_model) -> dict:
    """Where the correlations are and where the fit misses them: the root mean square of the
    connected data correlation C_ij - m_i m_j and of the fit error C_model - C_data, over pairs
    that share a unit and over the rest."""
    sh = shared_unit(widths, idx)
    other = ~sh
    np.fill_diagonal(other, False)
    conn = C_data - np.outer(m_data, m_data)
    err = C_model - C_data
    rms = lambda a, mask: float(np.sqrt(np.mean(a[mask] ** 2))) if mask.any() else float("nan")  # noqa: E731
    return {"rms_connected_shared_unit": rms(conn, sh), "rms_connected_other": rms(conn, other),
            "rms_C_error_shared_unit": rms(err, sh), "rms_C_error_other": rms(err, other),
            "pairs_shared_unit": int(sh.sum() // 2), "pairs_other": int(other.sum() // 2)}


SAMPLED_FIELDS = ("q", "q_se", "d", "d_se", "entropy", "entropy_se", "free_energy", "free_energy_se", "energy",
                  "energy_se", "rhat")


def gap_verdict(width: float, low: float, d_min: float, n: int, unresolved: float = 0.0) -> str:
    """The sampled landscape's reading of "shattered" for one reference, from its widest gap (a band
    of d that no x reaches with probability above GAP_LEVEL, while one x reaches both sides:
    `SampledLandscape.gap`). `isolated reference`: the gap starts right after the smallest d
    reached, so below it nothing is reached but that one distance (Zou & Huang's shattered space:
    the reference alone). With a tolerance of 2/N the strongly ordered phase of a 10-14-spin
    ferromagnet (d = 0 and 1/N reached, then the gap) read as isolated; at such N a phase and a
    point cannot be told apart by more than that one bin. `gap between states`: a band inside the range, between two regions that are
    each reached (phase coexistence, as in a two-phase ferromagnet). Without a gap wider than 2/N:
    `x grid too coarse` when a band that no single x straddles is wider than 2/N (neighbouring x
    whose distributions of d do not overlap), else `connected`."""
    if width > 2.0 / n:
        return "isolated reference" if low <= d_min + 1.0 / n + 1e-12 else "gap between states"
    return "x grid too coarse" if unresolved > 2.0 / n else "connected"


def sampled_landscape_part(store: RunStore, cfg: EffectiveConfig, scenario: str, part: str, J, h,
                           references: np.ndarray, progress=None) -> dict:
    """The landscape around each reference by parallel tempering (`tempering`), beside BP's: the
    arrays under `<part>/sampled`, and the part's verdict from the sampled gaps."""
    ls, sp = cfg.landscape, cfg.landscape.sampled
    xs = np.linspace(-ls.x_max, ls.x_max, ls.x_steps)
    n = h.shape[0]
    g = group(scenario, part)
    res = [tempered_landscape(J, h, ref, xs, lambda_steps=sp.lambda_steps, chains=sp.chains, sweeps=sp.sweeps,
                              burn=sp.burn, seed=cfg.seed + r, progress=progress) for r, ref in enumerate(references)]
    gs = f"{g}/sampled"
    store.reset_group(gs)
    store.write(gs, "x", res[0].x, ("x",))
    for key in SAMPLED_FIELDS:
        store.write(gs, key, np.array([getattr(r, key) for r in res]), ("reference", "x"))
    store.write(gs, "d_histogram", np.array([r.d_histogram for r in res]), ("reference", "x", "d_index"))
    store.write(gs, "swap_rate", np.array([r.swap_rate for r in res]), ("reference", "edge"))
    gaps = [r.gap() for r in res]
    verdicts = [gap_verdict(w, lo, float(np.flatnonzero(r.coverage() > GAP_LEVEL)[0]) / n, n, r.unresolved())
                for (w, lo, _), r in zip(gaps, res)]
    # BP against sampling on the same x: BP's lower-free-energy branch at each x (its sweeps are
    # stored from +x_max down, the sampled grid ascends)
    if store.has(g, "d") and np.allclose(store.read(g, "x")[::-1], res[0].x):
        d_bp, f_bp, s_bp = (store.read(g, k)[..., ::-1] for k in ("d", "free_energy", "entropy"))
        pick = np.argmin(f_bp, axis=1)[:, None, :]
        d_eq = np.take_along_axis(d_bp, pick, 1)[:, 0]
        s_eq = np.take_along_axis(s_bp, pick, 1)[:, 0]
        d_s, s_s = np.array([r.d for r in res]), np.array([r.entropy for r in res])
        vs_bp = {"bp_vs_sampled_d_max": float(np.abs(d_eq - d_s).max()),
                 "bp_vs_sampled_entropy_max": float(np.abs(s_eq - s_s).max())}
    else:
        vs_bp = {}
    summary = {"sampled_gap_max": float(max(w for w, _, _ in gaps)),
               "sampled_verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
               "sampled_verdict": max(set(verdicts), key=lambda v: (verdicts.count(v), v)),
               "sampled_rhat_max": float(max(r.rhat.max() for r in res)),
               "sampled_mixed": bool(max(r.rhat.max() for r in res) < RHAT_BOUND),
               "sampled_swap_rate_min": float(min(r.swap_rate.min() for r in res)),
               "sampled_entropy_se_max": float(max(r.entropy_se.max() for r in res)), **vs_bp}
    store.set_attrs({"gaps": [list(map(float, gp)) for gp in gaps], "verdicts": verdicts, **summary}, group=gs)
    store.set_attrs(summary, group=g)
    return summary

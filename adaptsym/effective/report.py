"""The effective model's report, from the zarr store alone: `<run>/effective_report.html`.

Per scenario, figures named after the paper's (Zou & Huang):
  effective_<scenario>_fig3a.png  histograms of J and h, full model
  effective_<scenario>_fig3b.png  model against data: C_ij and m_i (full model)
  effective_<scenario>_fig3c.png  energy density E(s)/N of every configuration against its test accuracy
  effective_<scenario>_fig3d.png  histograms of J and h per part (LB, ITR, RB)
  effective_<scenario>_fig4.png   s(d) per part against s_ub(d) (sweep down), and d against x both ways
and a table per part: configurations, weights, fit steps, final Delta (eq. 6) and whether it
met the target, rank deficiency (ensemble no larger than the part), the mean of s / s_ub, the
largest excess of s over s_ub, the largest gap between the two sweeps and the largest jump of
d between neighbouring x, non-converged landscape points, and where the correlations are: the
rms connected correlation of the data and the rms error of the fitted C, over pairs of weights
that share a unit and over the other pairs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import correlation_diagnostics, parts  # noqa: E402
from .model import s_upper  # noqa: E402
from ..storage.store import RunStore  # noqa: E402
from ..util import save_figure  # noqa: E402
from ..errors import UserFacingError

PART_ORDER = ("full", "LB", "ITR", "RB")
FIT_COLUMNS = (("configurations", "configurations"), ("n_weights", "weights"), ("moments", "model moments"),
               ("steps", "BP fit steps"), ("delta_bp", "Delta (BP)"), ("gibbs_steps", "Gibbs fit steps"),
               ("delta", "Delta"), ("delta_noise", "sampling noise of Delta"), ("converged", "Delta < target"),
               ("gibbs_rhat", "R-hat of the fit's samples"), ("rank_deficient", "rank-deficient"),
               ("bp_stable", "fit's BP point stable"), ("bp_fixed_points", "BP stable fixed points"),
               ("seconds", "seconds (fit and landscapes)"))
LANDSCAPE_COLUMNS = (("entropy_over_bound_mean", "mean s/s_ub"), ("entropy_excess_max", "max s - s_ub"),
                     ("hysteresis_max_gap", "max |d_down - d_up|"), ("max_d_jump", "max jump of d"),
                     ("nonconverged_points", "BP not converged"), ("unstable_points", "BP points unstable"),
                     ("sampled_verdict", "sampled landscape"), ("sampled_gap_max", "sampled: widest gap in d"),
                     ("sampled_rhat_max", "sampled: max R-hat"), ("bp_vs_sampled_d_max", "max |d BP - d sampled|"),
                     ("bp_vs_sampled_entropy_max", "max |s BP - s sampled|"),
                     ("sampled_entropy_se_max", "sampled: max s.e. of s"))
DIAG_COLUMNS = (("mean_abs_m", "data: mean |m_i|"),
                ("rms_connected_shared_unit", "data: rms C_ij - m_i m_j, pairs sharing a unit"),
                ("rms_connected_other", "data: same, other pairs"),
                ("rms_C_error_shared_unit", "fit: rms C error, pairs sharing a unit"),
                ("rms_C_error_other", "fit: same, other pairs"))


def _parts(store: RunStore, scenario: str) -> list[str]:
    g = store.root[f"effective/{scenario}"]
    names = [k for k, _ in g.groups()]
    return [p for p in PART_ORDER if p in names]


def _offdiag(a: np.ndarray) -> np.ndarray:
    return a[np.triu_indices(a.shape[0], 1)]


def figures(store: RunStore, scenario: str, out: Path) -> list[Path]:
    base = f"effective/{scenario}"
    parts = _parts(store, scenario)
    files = []
    J, h = store.read(f"{base}/full", "J"), store.read(f"{base}/full", "h")
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    ax[0].hist(_offdiag(J), bins=100, log=True)
    ax[0].set_xlabel("J_ij")
    ax[1].hist(h, bins=50)
    ax[1].set_xlabel("h_i")
    fig.suptitle(f"{scenario}: couplings and fields of the full model (Fig. 3a)")
    files.append(save_figure(fig, out / f"effective_{scenario}_fig3a.png", dpi=100))

    fig, ax = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    Cd, Cm = _offdiag(store.read(f"{base}/full", "C_data")), _offdiag(store.read(f"{base}/full", "C_model"))
    md, mm = store.read(f"{base}/full", "m_data"), store.read(f"{base}/full", "m_model")
    for a, (x, y, lab) in zip(ax, ((Cd, Cm, "C_ij"), (md, mm, "m_i"))):
        a.plot(x, y, ".", ms=1, alpha=0.4)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        a.plot(lim, lim, "k-", lw=0.8)
        a.set_xlabel(f"{lab} measured")
        a.set_ylabel(f"{lab} model (belief propagation)")
    fig.suptitle(f"{scenario}: reconstruction, Delta = {store.attrs(f'{base}/full')['delta']:.4f} (Fig. 3b)")
    files.append(save_figure(fig, out / f"effective_{scenario}_fig3b.png", dpi=100))

    e, acc = store.read(f"{base}/full", "energy_density"), store.read(f"{base}/full", "test_accuracy")
    fig, ax = plt.subplots(figsize=(5, 3.6), constrained_layout=True)
    levels = np.unique(acc)
    means = np.array([e[acc == a].mean() for a in levels])
    stds = np.array([e[acc == a].std() for a in levels])
    ax.plot(levels, means, "-", color="C0")
    ax.fill_between(levels, means - stds, means + stds, alpha=0.25, color="C0")
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("energy density E/N")
    ax.set_title(f"{scenario}: energy against accuracy, mean +- sd (Fig. 3c)", fontsize=9)
    files.append(save_figure(fig, out / f"effective_{scenario}_fig3c.png", dpi=100))

    sub = [p for p in parts if p != "full"]
    if sub:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
        for p in sub:
            ax[0].hist(_offdiag(store.read(f"{base}/{p}", "J")), bins=80, histtype="step", density=True, label=p)
            ax[1].hist(store.read(f"{base}/{p}", "h"), bins=40, histtype="step", density=True, label=p)
        ax[0].set_yscale("log")
        ax[0].set_xlabel("J_ij")
        ax[1].set_xlabel("h_i")
        ax[0].legend()
        fig.suptitle(f"{scenario}: parameters per part (Fig. 3d)")
        files.append(save_figure(fig, out / f"effective_{scenario}_fig3d.png", dpi=100))

    if store.has(f"{base}/full", "entropy"):
        fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        dd = np.linspace(0, 1, 201)
        ax[0].plot(dd, s_upper(dd), "k--", lw=1, label="s_ub(d)")
        for i, p in enumerate(parts):
            g = f"{base}/{p}"
            d, s, x = store.read(g, "d"), store.read(g, "entropy"), store.read(g, "x")
            conv = store.read(g, "converged")
            for r in range(d.shape[0]):
                ok = conv[r, 0]
                ax[0].plot(d[r, 0][ok], s[r, 0][ok], "-", color=f"C{i}", alpha=0.6, lw=1, label=p if r == 0 else None)
                ax[1].plot(x, d[r, 0], "-", color=f"C{i}", alpha=0.6, lw=1, label=f"{p} down" if r == 0 else None)
                ax[1].plot(x, d[r, 1], ":", color=f"C{i}", alpha=0.9, lw=1, label=f"{p} up" if r == 0 else None)
        ax[0].set_xlabel("d (Hamming distance per weight)")
        ax[0].set_ylabel("entropy density s(d)")
        ax[0].legend(fontsize=7)
        ax[1].set_xlabel("coupling field x")
        ax[1].set_ylabel("d")
        ax[1].legend(fontsize=6, ncol=2)
        fig.suptitle(f"{scenario}: entropy landscape, every reference (Fig. 4); dotted: the sweep back up")
        files.append(save_figure(fig, out / f"effective_{scenario}_fig4.png", dpi=100))
    if store.has_group(f"{base}/full/sampled"):
        files.append(sampled_figure(store, scenario, parts, out))
    return files


def sampled_figure(store: RunStore, scenario: str, parts: list[str], out: Path) -> Path:
    """BP's landscape (lines) against the sampled one (points, +- 2 standard errors), and how
    often the tilted measures reach each d (below the dashed level: a gap)."""
    from .tempering import GAP_LEVEL

    base = f"effective/{scenario}"
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    dd = np.linspace(0, 1, 201)
    ax[0].plot(dd, s_upper(dd), "k--", lw=1, label="s_ub(d)")
    for i, p in enumerate(parts):
        g, gs = f"{base}/{p}", f"{base}/{p}/sampled"
        if not store.has_group(gs):
            continue
        d_bp, s_bp, x_bp = store.read(g, "d"), store.read(g, "entropy"), store.read(g, "x")
        d, d_se, s, s_se, x = (store.read(gs, k) for k in ("d", "d_se", "entropy", "entropy_se", "x"))
        hist = store.read(gs, "d_histogram")
        for r in range(d.shape[0]):
            first = r == 0
            ax[0].plot(d_bp[r, 0], s_bp[r, 0], "-", color=f"C{i}", alpha=0.35, lw=1)
            ax[0].errorbar(d[r], s[r], xerr=2 * d_se[r], yerr=2 * s_se[r], fmt=".", ms=3, color=f"C{i}",
                           alpha=0.8, lw=0.6, label=f"{p} sampled" if first else None)
            ax[1].plot(x_bp, d_bp[r, 0], "-", color=f"C{i}", alpha=0.35, lw=1, label=f"{p} BP" if first else None)
            ax[1].errorbar(x, d[r], yerr=2 * d_se[r], fmt=".", ms=3, color=f"C{i}", alpha=0.8, lw=0.6,
                           label=f"{p} sampled" if first else None)
            cov = hist[r].max(0)
            ax[2].semilogy(np.arange(len(cov)) / (len(cov) - 1), np.maximum(cov, 1e-7), "-", color=f"C{i}",
                           alpha=0.6, lw=1, label=p if first else None)
    ax[2].axhline(GAP_LEVEL, color="k", ls="--", lw=0.8, label="gap level")
    ax[0].set(xlabel="d", ylabel="entropy density s(d)")
    ax[1].set(xlabel="coupling field x", ylabel="d")
    ax[2].set(xlabel="d", ylabel="largest probability over x", ylim=(1e-7, 1.5))
    for a in ax:
        a.legend(fontsize=7)
    fig.suptitle(f"{scenario}: landscape by parallel tempering (points, 2 s.e.) against BP (lines), every "
                 "reference; right: how often any x reaches each d")
    return save_figure(fig, out / f"effective_{scenario}_fig4_sampled.png", dpi=100)


def diagnostics(store: RunStore, group: str, widths: list[int], idx: np.ndarray) -> dict:
    """`effective_analysis.correlation_diagnostics` of one part, from its stored moments, and the
    mean |m| of its weights."""
    m = store.read(group, "m_data")
    return {**correlation_diagnostics(widths, idx, m, store.read(group, "C_data"), store.read(group, "C_model")),
            "mean_abs_m": float(np.mean(np.abs(m)))}


def energy_accuracy_correlation(store: RunStore, scenario: str) -> float:
    """Pearson correlation of E(s)/N under the full model with test accuracy over the ensemble
    (Fig. 3c: the paper finds low energy with high accuracy, a negative correlation)."""
    g = f"effective/{scenario}/full"
    e, acc = store.read(g, "energy_density"), store.read(g, "test_accuracy")
    return float(np.corrcoef(e, acc)[0, 1]) if e.std() > 0 and acc.std() > 0 else float("nan")


def _cell(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_report(store: RunStore, run_dir: Path) -> Path:
    """Figures and `effective_report.html` for every scenario with a complete analysis."""
    run_dir = Path(run_dir)
    if not store.has_group("effective"):
        raise UserFacingError(f"{store.path} has no effective-model results; run `python -m jobs.effective_model`")
    body = ["<h1>Effective model of the weight space (Zou &amp; Huang)</h1>",
            "<p>Pairwise maximum-entropy (Ising) models of ensembles of binary-weight networks, fitted by Boltzmann "
            "learning with belief-propagation (and, with fit.moments: gibbs, Gibbs-sampled) moments; entropy density s(d) at Hamming distance d from reference "
            "configurations, against the bound s_ub(d) = -d ln d - (1-d) ln(1-d), by belief propagation and, with "
            "landscape.sampled, by parallel tempering (error bars, R-hat, and the gap in d that no x reaches). "
            "Definitions: docs/observables.md.</p>"]
    for scenario, _ in sorted(store.root["effective"].groups()):
        attrs = store.attrs(f"effective/{scenario}")
        if not attrs.get("complete"):
            body.append(f"<h2>{html.escape(scenario)}</h2><p>analysis unfinished: rerun jobs.effective_model</p>")
            continue
        ens = store.attrs(f"ensemble/{scenario}") if store.has_group(f"ensemble/{scenario}") else {}
        body.append(f"<h2>{html.escape(scenario)}: widths {attrs.get('widths')}, {ens.get('committed', '?')} "
                    f"configurations ({ens.get('networks_passed', '?')} of {ens.get('networks_trained', '?')} "
                    "trained networks passed)</h2>")
        tables = (("The fits", FIT_COLUMNS), ("Entropy landscapes: belief propagation and, where sampled, "
                                               "parallel tempering", LANDSCAPE_COLUMNS),
                  ("Correlations of the data and the fit's errors", DIAG_COLUMNS))
        rows = {title: ["<tr><th>part</th>" + "".join(f"<th>{html.escape(t)}</th>" for _, t in cols) + "</tr>"]
                for title, cols in tables}
        notes = []
        index = parts(list(attrs["widths"]))
        for p in _parts(store, scenario):
            g = f"effective/{scenario}/{p}"
            a = store.attrs(g)
            a.update(diagnostics(store, g, list(attrs["widths"]), index[p]))
            for title, cols in tables:
                rows[title].append(f"<tr><td>{p}</td>" + "".join(f"<td>{_cell(a.get(k, '-'))}</td>" for k, _ in cols)
                                   + "</tr>")
            if a.get("gibbs_rhat") is not None and not a.get("gibbs_mixed", True):
                notes.append(f"{p}: the fit's Gibbs chains disagree (R-hat {a['gibbs_rhat']:.2f} > 1.1): its Delta and "
                             "sampling noise understate the error")
            if a.get("rank_deficient"):
                notes.append(f"{p}: {a['configurations']} configurations for {a['n_weights']} weights: the measured "
                             "correlation matrix is rank-deficient, and the fitted couplings are not determined by it")
            if not a.get("converged"):
                notes.append(f"{p}: Delta = {a['delta']:.4f} ({a.get('moments', 'bp')} moments) has not reached the target "
                             f"{a['target']}; its landscape describes that model, not a fit of the ensemble")
        for title, _ in tables:
            body.append(f"<h3>{html.escape(title)}</h3><table border=1 cellspacing=0 cellpadding=3>"
                        + "".join(rows[title]) + "</table>")
        body.append(f"<p>Pearson correlation of E(s)/N with test accuracy over the ensemble: "
                    f"{energy_accuracy_correlation(store, scenario):+.3f} (Fig. 3c)</p>")
        if notes:
            body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
        for f in figures(store, scenario, run_dir):
            b64 = base64.b64encode(f.read_bytes()).decode()
            body.append(f"<h3>{f.stem}</h3><img src='data:image/png;base64,{b64}'/>")
    path = run_dir / "effective_report.html"
    path.write_text("<html><head><meta charset='utf-8'><title>effective model</title></head><body>"
                    + "\n".join(body) + "</body></html>")
    return path

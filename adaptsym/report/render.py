"""`adaptsym report RUN_DIR`: the paper's figures from a run's zarr store alone, plus one HTML file.

Figures (PNG, in RUN_DIR/report/): 3a weight ridgelines, 3b circuit histograms, 4a gradient
distributions, 4b Omega and loss, 6a bootstrap densities of three entries, 6b/6c correlation
submatrices (first and last checkpoint), 7a/7b normalised means and the |z| < cut fraction,
7c coupling-set exponents, 8a spectral densities, 8b loss and accuracy. A figure whose arrays
are missing is skipped with a message naming them; the rest still render. `report.html`
embeds every PNG (base64) and a table of the scalars per checkpoint.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..storage.store import RunStore  # noqa: E402
from .verdict import PAPER, READING_LABEL, judge, legacy_key  # noqa: E402
from ..observables.block_spectra import figure as block_figure
from ..observables.spectrum import smoothed_density, symlog


class MissingData(LookupError):
    pass


class _Reader:
    """Arrays of a run's store by (observable, name) per checkpoint; raises MissingData."""

    def __init__(self, store: RunStore):
        self.store = store
        self.groups = [g for g in store.checkpoint_groups() if store.is_complete(g)]
        self.epochs = [int(g.split("_")[1]) for g in self.groups]

    def series(self, obs: str, name: str) -> tuple[list[int], list[np.ndarray]]:
        eps, vals = [], []
        for e, g in zip(self.epochs, self.groups):
            if self.store.has(f"{g}/{obs}", name):
                eps.append(e)
                vals.append(self.store.read(f"{g}/{obs}", name))
        if not vals:
            raise MissingData(f"{obs}/{name} (in no complete checkpoint group)")
        return eps, vals

    def scalar(self, obs: str, key: str) -> tuple[list[int], np.ndarray]:
        """One scalar per checkpoint; a `marginal.` key falls back to its name before the two readings."""
        eps, vals = [], []
        for e, g in zip(self.epochs, self.groups):
            sc = self.store.attrs(g).get("scalars", {})
            v = sc.get(f"{obs}.{key}")
            if v is None and legacy_key(key) is not None:
                v = sc.get(f"{obs}.{legacy_key(key)}")
            if v is not None and not isinstance(v, str) and np.isfinite(v):
                eps.append(e)
                vals.append(float(v))
        if not vals:
            raise MissingData(f"scalar {obs}.{key}")
        return eps, np.array(vals)

    def training(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.store.has("training", name):
            raise MissingData(f"training/{name}")
        return self.store.read("training", "epoch"), self.store.read("training", name)


def _colors(n):
    return plt.cm.viridis(np.linspace(0.05, 0.95, max(n, 1)))


def _ridgeline(ax, centers, curves, epochs, xlabel):
    for i, (c, e, col) in enumerate(zip(curves, epochs, _colors(len(curves)))):
        c = c / c.max() if c.max() > 0 else c
        ax.fill_between(centers, i, i + 0.9 * c, color=col, alpha=0.7, lw=0.5)
        ax.text(centers[0], i + 0.1, str(e), fontsize=7, va="bottom")
    ax.set_yticks([])
    ax.set_xlabel(xlabel)


def fig3a(r: _Reader, fig):
    eps, hists = r.series("weights", "hist")
    _, edges = r.series("weights", "edges")
    L = hists[0].shape[0]
    axes = fig.subplots(1, L, squeeze=False)[0]
    for li, ax in enumerate(axes):
        e = edges[0][li]
        centers = 0.5 * (e[1:] + e[:-1])
        _ridgeline(ax, centers, [h[li][1:-1].astype(float) for h in hists], eps, "weight")
        ax.set_title(f"layer {li}", fontsize=8)
    fig.suptitle("Fig 3a: weight distributions per layer over epochs (bottom = first)")


def fig3b(r: _Reader, fig):
    axes = fig.subplots(2, 3, squeeze=False)
    for row, mode in enumerate(("uniform", "active")):
        for o, order in enumerate(("order0", "order1", "order2")):
            ep, series = r.series("circuits", f"{mode}_{order}")
            ax = axes[row][o]
            pair = [(ep[0], series[0], "tab:blue"), (ep[-1], series[-1], "tab:red")]
            nz_all = np.concatenate([np.abs(v[v != 0]) for _, v, _ in pair])
            scale = 10 ** np.floor(np.log10(nz_all.min())) if nz_all.size else 1.0
            for e, v, col in pair:
                nz = v[v != 0]
                ax.hist(np.sign(nz) * np.log10(1 + np.abs(nz) / scale), bins=60, density=nz.size > 0,
                        histtype="step", color=col, label=f"epoch {e} ({nz.size}/{v.size} non-zero)")
            ax.set_xlabel(f"sign(v) log10(1 + |v| / {scale:.0e})", fontsize=7)
            ax.set_title(f"{mode}, {order}", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle("Fig 3b: basis-circuit values, orders 0-2 (uniform and active-gate paths)")


def fig4a(r: _Reader, fig):
    eps, hists = r.series("gradients", "hist")
    _, edges = r.series("gradients", "edges")
    e = edges[0]
    centers = np.sign(0.5 * (e[1:] + e[:-1])) * np.log10(np.abs(0.5 * (e[1:] + e[:-1])) / 1e-12 + 1)
    L = hists[0].shape[0]
    axes = fig.subplots(1, L, squeeze=False)[0]
    for li, ax in enumerate(axes):
        _ridgeline(ax, centers, [h[li][1:-1].astype(float) for h in hists], eps, "symlog gradient")
        ax.set_title(f"layer {li}", fontsize=8)
    fig.suptitle("Fig 4a: gradient distributions per layer over epochs")


def fig4b(r: _Reader, fig):
    ep, omega = r.training("omega")
    _, loss = r.training("train_loss")
    ax = fig.subplots()
    ax.semilogy(ep, np.maximum(omega, 1e-30), "o-", label="Omega = lr ||grad R||^2")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Omega")
    ax2 = ax.twinx()
    ax2.plot(ep, loss, "s--", color="tab:red", label="train hinge loss")
    ax2.set_ylabel("loss")
    fig.legend(loc="upper right", fontsize=8)
    fig.suptitle("Fig 4b: plasticity order parameter and loss")


def fig6a(r: _Reader, fig):
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
        _ridgeline(ax, centers, curves, eps, "(H_a(S) - mean) / std")
        ax.set_title(f"entry {int(idx[0][j])}", fontsize=8)
    fig.suptitle("Fig 6a: bootstrap densities of three Hessian entries over epochs")


def fig6bc(r: _Reader, fig):
    eps, subs = r.series("hessian_entries", "corr_submatrix")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, e, m, tag in zip(axes, [eps[0], eps[-1]], [subs[0], subs[-1]], ["6b", "6c"]):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"Fig {tag}: epoch {e}", fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle("Correlation submatrices of Hessian entries (bootstrap)")


def fig7ab(r: _Reader, fig):
    eps, zs = r.series("hessian_entries", "z")
    _, valid = r.series("hessian_entries", "valid")
    ax1, ax2 = fig.subplots(1, 2)
    active_z = dict(zip(*r.series("hessian_entries", "active_z"))) if _has(r, "active_z") else {}
    active_valid = dict(zip(*r.series("hessian_entries", "active_valid"))) if _has(r, "active_valid") else {}
    for e, z, v, col in zip(eps, zs, valid, _colors(len(eps))):
        if v.any():
            ax1.hist(z[v.astype(bool)], bins=60, range=(-3, 3), density=True, histtype="step", color=col,
                     label=f"epoch {e}")
        if e in active_z and active_valid[e].any():
            ax1.hist(active_z[e][active_valid[e].astype(bool)], bins=60, range=(-3, 3), density=True,
                     histtype="step", color=col, ls="--")
    ax1.set_xlabel("z = mean / std at the minibatch size (solid: marginal; dashed: given activity)")
    ax1.set_ylabel("density of entries")
    ax1.legend(fontsize=6)
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
        _band(r, ax2, ep, key, f, color=line.get_color())
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
        _band(r, ax2, ep, "marginal.z_fraction", frac)
    ax2.axhline(PAPER["z_fraction"], color="k", lw=0.8, ls=":", label=f"paper: >= {PAPER['z_fraction']}")
    ax2.plot([], [], "kx:", lw=0.8, label="forced below the cut by sqrt(p / (1 - p)) (same colour)")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylabel("fraction of entries with |z| < cut")
    ax2.legend(fontsize=6)
    ax2.set_title("Fig 7b: fraction |z| < cut (band: 95% interval over resamples of the examples)", fontsize=9)


def _has(r: _Reader, name: str) -> bool:
    try:
        r.series("hessian_entries", name)
        return True
    except MissingData:
        return False


def _band(r: _Reader, ax, ep, key: str, values, **kw) -> None:
    """A shaded 95% interval from the scalars `<key>_ci_low/high` (a +-std band from
    `<key>_std` for stores written before intervals existed)."""
    try:
        _, lo = r.scalar("hessian_entries", f"{key}_ci_low")
        _, hi = r.scalar("hessian_entries", f"{key}_ci_high")
    except MissingData:
        try:
            _, sd = r.scalar("hessian_entries", f"{key}_std")
        except MissingData:
            return
        lo, hi = values - sd, values + sd
    if len(lo) == len(ep):
        ax.fill_between(ep, lo, hi, alpha=0.25, **kw)


def fig7c(r: _Reader, fig):
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
        _band(r, ax, ep, f"{name}.exponent", ex, color=line.get_color())
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


def fig8a(r: _Reader, fig):
    eps, nodes = r.series("spectrum", "ritz_values")
    _, wts = r.series("spectrum", "ritz_weights")
    live = [(e, n, w) for e, n, w in zip(eps, nodes, wts) if np.abs(n[w > 0]).max() > 0]
    if not live:
        raise MissingData("spectrum/ritz_values with a non-zero eigenvalue (H = 0 at every checkpoint)")
    scale = 1e-3 * max(np.abs(n[w > 0]).max() for _, n, w in live)  # one scale for all epochs
    edge = max(np.abs(symlog(n[w > 0], scale)).max() for _, n, w in live) * 1.05
    u = np.linspace(-edge, edge, 600)
    ax = fig.subplots()
    for (e, n, w), col in zip(live, _colors(len(live))):
        d = smoothed_density(symlog(n, scale), w, u, 0.01 * 2 * edge)
        ax.semilogy(u, np.maximum(d, 1e-6), color=col, label=f"epoch {e}")
    dead = sorted(set(eps) - {e for e, _, _ in live})
    ax.set_xlabel(f"sign(l) log10(1 + |l| / {scale:.2g})")
    ax.set_ylabel("density")
    ax.legend(fontsize=6, title=f"H = 0 at epochs {dead}" if dead else None, title_fontsize=6)
    fig.suptitle("Fig 8a: Hessian eigenvalue density (stochastic Lanczos quadrature)")


def fig8b(r: _Reader, fig):
    ep, tl = r.training("train_loss")
    _, vl = r.training("test_loss")
    _, ta = r.training("train_acc")
    _, va = r.training("test_acc")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, tl, label="train")
    ax1.plot(ep, vl, label="held-out")
    ax1.set_title("hinge loss", fontsize=9)
    ax2.plot(ep, ta, label="train")
    ax2.plot(ep, va, label="held-out")
    ax2.set_title("accuracy", fontsize=9)
    for a in (ax1, ax2):
        a.set_xlabel("epoch")
        a.legend(fontsize=8)
    fig.suptitle("Fig 8b: loss and accuracy")


FIGURES = [("fig3a_weights", fig3a, (12, 3.5)), ("fig3b_circuits", fig3b, (12, 6)),
           ("fig4a_gradients", fig4a, (12, 3.5)), ("fig4b_plasticity", fig4b, (7, 4)),
           ("fig6a_entries", fig6a, (12, 4)), ("fig6bc_correlations", fig6bc, (10, 4.5)),
           ("fig7ab_normalised_means", fig7ab, (12, 4.5)), ("fig7c_coupling", fig7c, (9, 4.5)),
           ("fig8a_spectrum", fig8a, (8, 4.5)), ("fig8b_loss_accuracy", fig8b, (10, 4))]


@dataclass
class Report:
    directory: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    verdicts: dict[int, list] = field(default_factory=dict)  # epoch -> [verdict.Verdict]


# The scalars the report's table shows, by the last part of their name: meaning, unit, the paper's value.
GLOSSARY = {
    "z_fraction": ("fraction of sampled Hessian entries with |mean / std| < 0.15, the mean and std of the "
                   "minibatch entry at batch size s (Fig. 7b)", "fraction of entries", "at least 0.95, about 0.98"),
    "z_fraction_exact": ("the same fraction from the exact z over the examples (the statistic the intervals "
                         "belong to; marginal: over the pool, active: over the examples with margin < 1)",
                         "fraction of entries", "at least 0.95"),
    "z_fraction_per_example": ("the same fraction for the per-example entry (z / sqrt(s))", "fraction of entries",
                               "at least 0.95 in this reading of Fig 7a"),
    "z_forced_fraction": ("entries whose |z| is below the cut by the sparsity bound sqrt(p / (1 - p)) alone, p the "
                          "share of the examples where the entry is non-zero", "fraction of entries", ""),
    "relative": ("coupling set size: the fraction of the other sampled entries an entry is significantly "
                 "correlated with (corr), or of the tuples it is in with a non-zero co-moment (coskew, cokurt) "
                 "(Fig. 7c)", "fraction", "3.39e-4 (correlations, end of training)"),
    "exponent": ("log(coupling set size x N^2) / log N: the coupling set size as a power of the number of weights N",
                 "dimensionless", ""),
    "min_detectable_rho": ("the smallest |correlation| the non-zero test can detect with the pool's active "
                           "examples", "correlation", ""),
    "n_valid": ("sampled entries that vary over the pool (the others are constant, mostly 0)", "entries", ""),
    "n_active_examples": ("pool examples with hinge margin < 1, the only ones with a non-zero Hessian", "examples", ""),
    "symmetry_score": ("0.5 x integral |rho(l) - rho(-l)| of the spectral density: 0 symmetric, 1 one-sided (Fig. 8a)",
                       "dimensionless", ""),
    "trace_estimate": ("Hutchinson estimate of tr H (exactly 0 for these bias-free ReLU networks)", "loss units", "0"),
    "lambda_max": ("largest Ritz value of the pool Hessian", "loss units", ""),
    "grad_norm2": ("squared norm of the pool risk's gradient (Fig. 4b)", "loss units squared", ""),
}


def _glossary() -> str:
    rows = ["<tr><th>scalar (name ends in)</th><th>meaning</th><th>unit</th><th>paper</th></tr>"]
    rows += [f"<tr><td>{k}</td><td>{html.escape(m)}</td><td>{html.escape(u)}</td><td>{html.escape(p) or '-'}</td></tr>"
             for k, (m, u, p) in GLOSSARY.items()]
    return "<table>" + "".join(rows) + "</table>"


def skipped_statistics(store: RunStore) -> list[tuple[int, str, str]]:
    """(epoch, observable, reason) of every observable a complete checkpoint skipped, and why."""
    out = []
    for g in store.checkpoint_groups():
        if not store.is_complete(g):
            continue
        for obs, _ in sorted(store.root[g].groups()):
            why = store.attrs(f"{g}/{obs}").get("skipped")
            if why:
                out.append((int(g.split("_")[1]), obs, str(why)))
    return out


def _scalar_table(r: _Reader) -> str:
    keys = sorted({k for g in r.groups for k in r.store.attrs(g).get("scalars", {}) if k.split(".")[-1] in GLOSSARY})
    rows = ["<tr><th>scalar</th>" + "".join(f"<th>epoch {e}</th>" for e in r.epochs) + "</tr>"]
    for k in keys:
        cells = []
        for g in r.groups:
            sc = r.store.attrs(g).get("scalars", {})
            v = sc.get(k)
            stat = k.rsplit(".", 1)[0]  # e.g. hessian_entries.corr
            if isinstance(v, (int, float)) and not np.isfinite(v) and sc.get(f"{stat}.untestable"):
                obs, name = stat.split(".", 1)
                why = r.store.attrs(f"{g}/{obs}").get("untestable", {}).get(name, "")
                cells.append(f"<td title='{html.escape(why)}'>untestable</td>")
            elif not isinstance(v, (int, float)) and r.store.has_group(f"{g}/{k.split('.', 1)[0]}") and \
                    r.store.attrs(f"{g}/{k.split('.', 1)[0]}").get("skipped"):
                why = r.store.attrs(f"{g}/{k.split('.', 1)[0]}")["skipped"]
                cells.append(f"<td class='skip' title='{html.escape(why)}'>skipped</td>")
            else:
                cells.append(f"<td>{v:.4g}</td>" if isinstance(v, (int, float)) else "<td>-</td>")
        rows.append(f"<tr><td>{html.escape(k)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _verdicts(r: _Reader) -> dict[int, list]:
    attrs = r.store.attrs()
    config, name = attrs.get("config", {}), attrs.get("model_name", "")
    out = {}
    for e, g in zip(r.epochs, r.groups):
        sc = r.store.attrs(g).get("scalars", {})
        if "hessian_entries.n_entries" in sc:
            out[e] = judge(sc, config, name, e)
    return out


def _verdict_table(verdicts: dict[int, list]) -> str:
    if not verdicts:
        return "<p class='skip'>no Hessian-entry statistics: no verdict</p>"
    head = ("<tr><th>epoch</th><th>claim</th><th>reading</th><th>paper</th><th>ours [95% interval]</th>"
            "<th>forced by sparsity</th><th>verdict</th><th>at face value</th><th>why</th></tr>")
    rows = []
    for e, vs in verdicts.items():
        for v in vs:
            ours = "n/a" if not np.isfinite(v.ours) else f"{v.ours:.4g} [{v.ci_low:.4g}, {v.ci_high:.4g}]"
            reading = READING_LABEL.get(v.reading, v.reading) + (" (paper's definition)" if v.paper_definition else "")
            forced = f"{v.forced:.0%}" if np.isfinite(v.forced) else ""
            rows.append(f"<tr><td>{e}</td><td>{html.escape(v.claim)}</td><td>{html.escape(reading)}</td>"
                        f"<td>{html.escape(v.paper)}</td><td>{ours}</td><td>{forced}</td>"
                        f"<td><b>{html.escape(v.verdict)}</b></td><td>{html.escape(v.face_value)}</td>"
                        f"<td>{html.escape(v.why)}</td></tr>")
    regime = next((v.regime for vs in verdicts.values() for v in vs), "")
    return (f"<p>Regime of the last checkpoint: {html.escape(regime)}. The two readings (docs/statistics.md): "
            "<i>marginal</i>, over the whole measurement pool, and <i>given activity</i>, over the pool examples "
            "with hinge margin below 1.</p><table>" + head + "".join(rows) + "</table>")


def _skipped_list(store: RunStore) -> str:
    rows = skipped_statistics(store)
    if not rows:
        return ""
    return ("<h3>Skipped statistics</h3><ul>" + "".join(
        f"<li class='skip'>epoch {e}, {html.escape(obs)}: {html.escape(why)}</li>" for e, obs, why in rows) + "</ul>")


def render_report(run_dir: str | Path, out_dir: str | Path | None = None, log=print) -> Report:
    run_dir = Path(run_dir)
    store = RunStore.for_run(run_dir, mode="r")
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    r = _Reader(store)
    rep = Report(out, out / "report.html")
    parts = []
    figures = list(FIGURES)
    if any(store.has_group(f"{g}/block_spectra") for g in r.groups):  # opt-in observable: its figure when measured
        figures.append(("block_spectra", block_figure, (8, 4.5)))
    for name, fn, size in figures:
        fig = plt.figure(figsize=size, constrained_layout=True)
        try:
            fn(r, fig)
        except MissingData as exc:
            plt.close(fig)
            rep.skipped[name] = f"missing {exc.args[0]}"
            log(f"report: skipped {name}: missing {exc.args[0]}")
            parts.append(f"<h2>{name}</h2><p class='skip'>skipped: missing {html.escape(exc.args[0])}</p>")
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        rep.figures[name] = path
        b64 = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{name}</h2><img src='data:image/png;base64,{b64}' alt='{name}'>")
    plt.close("all")
    rep.verdicts = _verdicts(r)
    attrs = store.attrs()
    title = f"adaptsym report: {html.escape(run_dir.name)}"
    meta = (f"<p>model {html.escape(str(attrs.get('model_name')))}, N = {attrs.get('n_params')}, "
            f"git {html.escape(str(attrs.get('git_commit')))}, checkpoints {r.epochs}</p>")
    rep.html.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;max-width:1300px;margin:auto}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        ".skip{color:#a00}</style></head><body>"
        f"<h1>{title}</h1>{meta}<h2>Verdict on the paper's headline numbers</h2>{_verdict_table(rep.verdicts)}"
        f"<h2>Scalars</h2>{_scalar_table(r)}{_skipped_list(store)}<h3>Glossary</h3>{_glossary()}"
        f"{''.join(parts)}</body></html>")
    return rep

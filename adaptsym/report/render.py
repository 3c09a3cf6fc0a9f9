"""`adaptsym report RUN_DIR`: the paper's figures from a run's zarr store alone, plus one HTML file.

Figures (PNG, in RUN_DIR/report/), each drawn by the observable it belongs to (`figures`: every
registered observable's `figures`, named after the paper's): 3a weight ridgelines (weights), 3b
circuit histograms (circuits), 4a gradient distributions and 4b Omega and loss (gradients), 6a
bootstrap densities of three entries, 6b/6c correlation submatrices, 7a/7b normalised means and
the |z| < cut fraction, 7c coupling-set exponents (hessian_entries), 8a spectral densities
(spectrum), and the run's own 8b loss and accuracy (here). The HTML names the function that draws
each figure. A figure whose arrays are missing is skipped with a message naming them; the rest
still render. `report.html` embeds every PNG (base64), the verdict and a table of the scalars.
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

from ..observables.plotting import MissingData, Reader  # noqa: E402
from ..registry import Figure, observables  # noqa: E402
from ..errors import UserFacingError  # noqa: E402
from ..storage.store import RunStore  # noqa: E402
from ..util import save_figure  # noqa: E402
from .verdict import READING_LABEL, judge  # noqa: E402
































def fig8b(r: Reader, fig):
    ep, tl = r.training("train_loss")
    _, vl = r.training("test_loss")
    _, ta = r.training("train_acc")
    _, va = r.training("test_acc")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, tl, label="train")
    ax1.plot(ep, vl, label="held-out")
    ax1.set_title("hinge loss", fontsize=9)
    ax1.set_ylabel("mean hinge loss")
    ax2.plot(ep, ta, label="train")
    ax2.plot(ep, va, label="held-out")
    ax2.set_title("accuracy", fontsize=9)
    ax2.set_ylabel("fraction classified correctly")
    for a in (ax1, ax2):
        a.set_xlabel("epoch")
        a.xaxis.get_major_locator().set_params(integer=True)
        a.legend(fontsize=8, loc="best")
    fig.suptitle("Fig 8b: loss and accuracy")


# figures of the run itself, not of one observable
RUN_FIGURES = (Figure("fig8b_loss_accuracy", fig8b, (10, 4)),)


def figures(store: RunStore | None = None) -> list[tuple[Figure, str]]:
    """(figure, the function that draws it as 'module.function') of every figure the report draws,
    by name: those of each registered observable that is measured by default or present in the
    store (an opt-in one, like block_spectra, when measured), and the run's own."""
    out = []
    groups = store.checkpoint_groups() if store is not None else []
    for name, obs in observables().items():
        present = store is not None and any(store.has_group(f"{g}/{name}") for g in groups)
        if obs.default or present:
            out += [(f, f"{f.draw.__module__}.{f.draw.__name__}") for f in obs.figures]
    out += [(f, f"{f.draw.__module__}.{f.draw.__name__}") for f in RUN_FIGURES]
    return sorted(out, key=lambda item: item[0].name)


def __getattr__(name):
    if name == "FIGURES":  # the list this module had before the registry held the figures
        return [(f.name, f.draw, f.size) for f, _ in figures()]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _scalar_table(r: Reader) -> str:
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


def _verdicts(r: Reader) -> dict[int, list]:
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
    regime = next((v.regime for v in verdicts[max(verdicts)]), "")
    return (f"<p>Regime of the last checkpoint: {html.escape(regime)}. The two readings (docs/statistics.md): "
            "<i>marginal</i>, over the whole measurement pool, and <i>given activity</i>, over the pool examples "
            "with hinge margin below 1.</p><table>" + head + "".join(rows) + "</table>")


def _skipped_list(store: RunStore) -> str:
    rows = skipped_statistics(store)
    if not rows:
        return ""
    return ("<h3>Skipped statistics</h3><ul>" + "".join(
        f"<li class='skip'>epoch {e}, {html.escape(obs)}: {html.escape(why)}</li>" for e, obs, why in rows) + "</ul>")


def draw(spec: Figure, r: Reader):
    """One registered figure drawn from the store (`MissingData` when an array it needs is absent)."""
    fig = plt.figure(figsize=spec.size, constrained_layout=True)
    try:
        spec.draw(r, fig)
    except BaseException:
        plt.close(fig)
        raise
    return fig


class NothingMeasuredError(UserFacingError, ValueError):
    """A run with no finished measurement: nothing to report yet."""


def render_report(run_dir: str | Path, out_dir: str | Path | None = None, log=print) -> Report:
    run_dir = Path(run_dir)
    store = RunStore.for_run(run_dir, mode="r")
    if not any(store.is_complete(g) for g in store.checkpoint_groups()):
        raise NothingMeasuredError(f"{run_dir} has no finished measurement to report (it is trained: "
                                   f"{len(list((run_dir / 'checkpoints').glob('epoch_*.pt')))} checkpoint(s)); "
                                   f"run `adaptsym measure --run {run_dir}` first")
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    r = Reader(store)
    rep = Report(out, out / "report.html")
    parts = []
    for fig_spec, where in figures(store):
        name = fig_spec.name
        try:
            fig = draw(fig_spec, r)
        except MissingData as exc:
            rep.skipped[name] = f"missing {exc.args[0]}"
            log(f"report: skipped {name}: missing {exc.args[0]}")
            parts.append(f"<h2>{name}</h2><p class='skip'>skipped: missing {html.escape(exc.args[0])}</p>")
            continue
        path = save_figure(fig, out / f"{name}.png")
        rep.figures[name] = path
        b64 = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{name}</h2><p class='src'>drawn by <code>{html.escape(where)}</code></p>"
                     f"<img src='data:image/png;base64,{b64}' alt='{name}'>")
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
        ".skip{color:#a00}.src{color:#555;font-size:11px;margin-top:-8px}</style></head><body>"
        f"<h1>{title}</h1>{meta}<h2>Verdict on the paper's headline numbers</h2>{_verdict_table(rep.verdicts)}"
        f"<h2>Scalars</h2>{_scalar_table(r)}{_skipped_list(store)}<h3>Glossary</h3>{_glossary()}"
        f"{''.join(parts)}</body></html>")
    return rep

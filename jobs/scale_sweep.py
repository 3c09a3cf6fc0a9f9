"""Scale sweep: how the coupling set sizes and the |z| < cut fraction scale with N.

    python -m jobs.scale_sweep --config configs/scale-sweep-vgg12.yaml [--out runs] [--ray [ADDRESS]]
                               [--resamples 200]
    python -m jobs.scale_sweep --table runs/sweep-vgg12-sweep/sweep.zarr   # the tables, markdown

Every model of the config is one size of a family (its `kind`: vgg12, cnn or mlp; a config may
hold several families, each fitted on its own). Each is trained and measured; at its last
checkpoint with statistics the sweep reads the coupling set sizes (relative, absolute, exponent,
with uncertainties, in both readings: over the pool and given activity) and the |z| < cut
fraction with the share the sparsity bound forces. Per family it fits the absolute correlation
coupling set size c (N^2 - 1) ~ N^alpha in both readings with an interval that resamples the
pool's examples and the entries together (`scaling.resampled_couplings`, from the stored h,
decisions made again per replicate) and the leave-one-out exponents; the relative co-moment sizes
~ N^beta (entries-only intervals, `scaling.fit_power_law`). Writes `<out>/<name>-sweep/sweep.zarr`,
a figure, and an MLflow run with the fits, and prints the summary as JSON, with the wall time of
every model's training and measurement (to compare with `adaptsym plan`).

Fixed power: measured with `measure.pool: fixed-active`, every size has the same A active pool
examples and n in all, and the same design, so the same smallest detectable |rho| (recorded).
A size whose statistic is untestable has no value and is left out of that statistic's fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

STATS = ("corr", "coskew", "cokurt")
READINGS = (("marginal", ""), ("active", "active_"))


def coupling_replicates(store, group: str, cfg, epoch: int, n_resamples: int, scalars: dict) -> dict:
    """Resampled relative correlation coupling sizes of one stored checkpoint, both readings,
    from its h, valid entries and active examples, with the measurement's own test settings; the
    point estimates made from the store are checked against the measured scalars first."""
    from adaptsym.observables.entry_blocks import STREAM_PAIRS, stream
    from adaptsym.stats.correlation import reading_decisions
    from adaptsym.stats.nonzero import pair_rows
    from adaptsym.stats.scaling import pair_fraction, resampled_couplings

    g = f"{group}/hessian_entries"
    h, valid, active = store.read(g, "h"), store.read(g, "valid"), store.read(g, "active_example")
    mc = cfg.measure.hessian_entries
    kw = dict(q=mc.fdr_q, pvalue=mc.pvalue, fdr=mc.fdr, active_test=mc.active_test, mild_skew=mc.mild_skew)
    hv = h[:, valid]
    pairs = pair_rows(np.nonzero(active)[0], stream(cfg.seed, epoch, STREAM_PAIRS))
    point = {r: pair_fraction(d.declared, np.ones(hv.shape[1])) for r, d in
             reading_decisions(hv, active, pairs=pairs, **kw).items()}
    for reading, _ in READINGS:
        stored = scalars.get(f"hessian_entries.{reading}.corr.relative", np.nan)
        if np.isfinite(stored) and not np.isclose(point[reading], stored, rtol=1e-9, atol=0):
            raise RuntimeError(f"{g}: the {reading} coupling size made from the stored h ({point[reading]}) differs "
                               f"from the measured one ({stored}); the store and the measurement disagree")
        if not np.isfinite(stored):  # untestable: no value, and no replicates
            point[reading] = np.nan
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, 0x5EE9]))
    reps = resampled_couplings(hv, active, rng, n_resamples, **kw)
    return {"point": point, "replicates": reps, "n_pool": int(len(active)), "n_valid": int(valid.sum())}


def family(spec) -> str:
    return spec.kind


def collect(scalars: dict) -> dict | None:
    """The sweep's numbers from one checkpoint's scalars (None if its statistics were skipped)."""
    p = "hessian_entries."
    if f"{p}marginal.z_fraction" not in scalars:
        return None
    out = {"z_fraction": scalars[f"{p}marginal.z_fraction"],
           "z_fraction_std": scalars.get(f"{p}marginal.z_fraction_exact_std", np.nan),
           "z_forced_fraction_per_example": scalars.get(f"{p}marginal.z_forced_fraction_per_example", np.nan),
           "z_forced_fraction": scalars.get(f"{p}marginal.z_forced_fraction", np.nan),
           "active_z_fraction": scalars.get(f"{p}active.z_fraction_exact", np.nan),
           "active_z_forced_fraction": scalars.get(f"{p}active.z_forced_fraction", np.nan),
           "pool_size": scalars.get(f"{p}pool_size", np.nan),
           "n_active": scalars.get(f"{p}n_active_examples", np.nan),
           "corr_min_detectable_rho": scalars.get(f"{p}marginal.corr.min_detectable_rho", np.nan),
           "active_corr_min_detectable_rho": scalars.get(f"{p}active.corr.min_detectable_rho", np.nan)}
    for reading, tag in (("marginal", ""), ("active", "active_")):  # both readings (docs/statistics.md)
        for st in STATS:
            for k in ("relative", "relative_std", "exponent", "exponent_std", "log10_absolute", "untestable"):
                out[f"{tag}{st}_{k}"] = scalars.get(f"{p}{reading}.{st}.{k}", np.nan)
    return out


def fit_family(n: np.ndarray, rows: dict, reps: dict) -> dict:
    """One family's fits: the absolute correlation coupling size in both readings, with the
    pool-and-entries interval and leave-one-out; the relative co-moment sizes (entries-only)."""
    from adaptsym.stats.scaling import fit_power_law, resampled_power_law

    fits: dict = {}
    for reading, tag in READINGS:
        key = f"corr_absolute.{reading}"
        try:
            fits[key] = resampled_power_law(n, rows[f"{tag}corr_relative"], reps[reading], offset=np.log(n**2 - 1))
        except ValueError as exc:  # nothing detected, or untestable, at most sizes
            fits[key] = {"error": str(exc)}
        for st in STATS[1:]:
            try:
                fits[f"{st}_relative.{reading}"] = fit_power_law(n, rows[f"{tag}{st}_relative"],
                                                                 rows[f"{tag}{st}_relative_std"])
            except ValueError as exc:
                fits[f"{st}_relative.{reading}"] = {"error": str(exc)}
    if len(n) >= 3:
        zf = np.polyfit(np.log10(n), rows["z_fraction"], 1, cov=len(n) > 3)
        slope, slope_std = (float(zf[0][0]), float(np.sqrt(zf[1][0, 0]))) if len(n) > 3 else (float(zf[0]), np.nan)
        fits["z_fraction_vs_log10N"] = {"slope": slope, "slope_std": slope_std}
    return fits


def figure(path: Path, families: dict) -> None:
    """Per family and reading: the absolute coupling size against N with its fit and interval; the
    |z| < cut fractions with their forced shares."""
    import matplotlib

    from adaptsym.util import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 6), constrained_layout=True)
    markers = {"marginal": "o", "active": "s"}
    for i, (fam, d) in enumerate(sorted(families.items())):
        n, rows, fits = d["n"], d["rows"], d["fits"]
        color = f"C{i}"
        for reading, tag in READINGS:
            absolute = rows[f"{tag}corr_relative"] * (n**2 - 1)
            err = rows[f"{tag}corr_log_std"] * absolute  # the resampled std of log c, as a relative error
            label_reading = "over the pool" if reading == "marginal" else "given activity"
            f = fits.get(f"corr_absolute.{reading}", {})
            label = f"{fam}, {label_reading}"
            if "exponent" in f:
                label += (f": N^{f['exponent']:.2f} [{f['exponent_ci_low']:.2f}, {f['exponent_ci_high']:.2f}], "
                          f"{f['points']} of {len(n)} sizes")
                used = n[absolute > 0]  # the line spans the sizes it was fitted on, no further
                grid = np.geomspace(used.min(), used.max(), 50)
                a1.plot(grid, np.exp(f["log_prefactor"]) * grid ** f["exponent"], "--" if reading == "marginal"
                        else ":", color=color, lw=1)
            ok = absolute > 0
            for size in n[(absolute == 0) & (rows[f"{tag}corr_untestable"] == 0)]:  # testable, found nothing
                a1.axvline(size, color=color, ls=":" if reading == "marginal" else "-.", lw=0.8, alpha=0.6)
            if np.any((absolute == 0) & (rows[f"{tag}corr_untestable"] == 0)):
                a1.plot([], [], color=color, ls=":" if reading == "marginal" else "-.", lw=0.8,
                        label=f"{fam}, {label_reading}: nothing found (testable; not in the fit)")
            a1.errorbar(n[ok], absolute[ok], yerr=err[ok], fmt=markers[reading], color=color,
                        mfc="white" if reading == "active" else color, label=label)
        a2.plot(n, rows["z_fraction"], "o-", color=color, label=f"{fam}: |z| < cut (pool, s)")
        a2.plot(n, rows["z_forced_fraction"], "x:", color=color, label=f"{fam}: forced by sparsity")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("N (parameters)")
    a1.set_ylabel("absolute coupling set size c (N^2 - 1)")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: the axes hold points everywhere
    a2.set_xscale("log")
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("N (parameters)")
    a2.set_ylabel("fraction of entries")
    a2.legend(fontsize=7)
    save_figure(fig, path, "Scale sweep at fixed power: coupling set size (95% intervals resample pools and "
                           "entries) and normalised means")


def _g(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) or v < 0 else f"{v:.3g}"


def table(path: Path) -> str:
    """A finished sweep's store as markdown: per family and size, the power (A, n, the smallest
    detectable |rho|), both readings' coupling sizes with the resampled 2.5-97.5% range, the |z|
    fraction with its forced share, the wall times; then the fits with leave-one-out."""
    from adaptsym.storage.store import RunStore

    store = RunStore(path, mode="r")
    fams = store.attrs()["families"]
    out = []
    for fam, d in fams.items():
        t = {k: np.asarray(v, dtype=np.float64) for k, v in d["table"].items()}
        out += [f"**{fam}**", "",
                "| model | N | A / n | min detectable abs(rho): pool / given activity | corr relative, pool [resampled 95%] "
                "| corr relative, given activity [resampled 95%] | abs(z) < cut at s {forced} | given activity {forced} "
                "| train s | measure s | resampling s |", "| " + " | ".join(["---"] * 11) + " |"]
        for i, name in enumerate(d["models"]):
            cells = []
            for r, tag in READINGS:
                reps = store.read(fam, f"corr_relative_replicates_{r}")[i]
                reps = reps[reps >= 0]
                lo, hi = np.quantile(reps, [0.025, 0.975]) if reps.size else (np.nan, np.nan)
                rel = t[f"{tag}corr_relative"][i]
                cells.append("untestable" if t[f"{tag}corr_untestable"][i] > 0 else f"{_g(rel)} [{_g(lo)}, {_g(hi)}]")
            out.append(f"| {name} | {d['n_params'][i]:,.0f} | {t['n_active'][i]:.0f} / {t['pool_size'][i]:.0f} | "
                       f"{_g(t['corr_min_detectable_rho'][i])} / {_g(t['active_corr_min_detectable_rho'][i])} | "
                       f"{cells[0]} | {cells[1]} | {_g(t['z_fraction'][i])} {{{_g(t['z_forced_fraction'][i])}}} | "
                       f"{_g(t['active_z_fraction'][i])} {{{_g(t['active_z_forced_fraction'][i])}}} | "
                       f"{t['train_seconds'][i]:.0f} | {t['measure_seconds'][i]:.0f} | {t['resample_seconds'][i]:.0f} |")
        out += ["", "| fit | exponent | 95% interval | leave-one-out (each size dropped, smallest first) | points |",
                "| --- | --- | --- | --- | --- |"]
        for key, f in d["fits"].items():
            if not isinstance(f, dict) or "exponent" not in f:
                if isinstance(f, dict) and "slope" in f:
                    out.append(f"| {key} | slope {f['slope']:.3f} +- {f['slope_std']:.3f} per decade | | | |")
                else:
                    out.append(f"| {key} | {f.get('error', '-') if isinstance(f, dict) else f} | | | |")
                continue
            loo = ", ".join(f"{v:.2f}" for v in f.get("leave_one_out", []))
            out.append(f"| {key} | {f['exponent']:.3f} | [{f['exponent_ci_low']:.3f}, {f['exponent_ci_high']:.3f}] | "
                       f"{loo or '-'} | {f['points']} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.scale_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--table", metavar="SWEEP_ZARR", help="print a finished sweep's tables as markdown and exit")
    p.add_argument("--out", default="runs")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS")
    p.add_argument("--resamples", type=int, default=200,
                   help="pool-and-entries resamples behind each size's coupling size (default 200)")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.table)))
        return 0
    if not args.config:
        p.error("--config is required (or --table SWEEP_ZARR)")

    from adaptsym.config import config_to_dict, load_config
    from adaptsym.measure import measure_run
    from adaptsym.storage.provenance import provenance
    from adaptsym.storage.store import RunStore, checkpoint_group
    from adaptsym.stats.scaling import log_std
    from adaptsym.storage.tracking import Tracker
    from adaptsym.train import train

    t_start = time.perf_counter()
    cfg = load_config(args.config)
    kinds = [family(cfg.models[m]) for m in cfg.model_names()]
    if max(kinds.count(k) for k in set(kinds)) < 3:
        raise SystemExit("a scale sweep needs at least 3 models (sizes) of one family (model kind) in the config")
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    executor = None
    if args.ray is not None:
        from services.cluster import connect
        from services.executor import RayExecutor

        connect(args.ray or None)
        executor = RayExecutor()
    per_model = []
    for name in cfg.model_names():
        t0 = time.perf_counter()
        res = train(cfg, name, args.out, tracker=tracker, progress=not args.quiet)
        t1 = time.perf_counter()
        m = measure_run(res.run_dir, cfg=cfg, tracker=tracker, progress=not args.quiet, executor=executor)
        t2 = time.perf_counter()
        epochs = [e for e in sorted(m.scalars) if collect(m.scalars[e]) is not None]
        if not epochs:
            print(f"[{name}] no checkpoint with statistics (H = 0 everywhere?): left out of the fit")
            continue
        epoch = epochs[-1]  # the last checkpoint with statistics
        store = RunStore.for_run(res.run_dir, mode="r")
        point = collect(m.scalars[epoch])
        rep = coupling_replicates(store, checkpoint_group(epoch), cfg, epoch, args.resamples, m.scalars[epoch])
        for reading, tag in READINGS:
            r = rep["replicates"][reading]
            point[f"{tag}corr_log_std"] = float(log_std(r)[0])  # zeros left out: the error bar of a detection
            point[f"{tag}corr_relative_rep_std"] = float(np.nanstd(r, ddof=1))
        point.update(epoch=epoch, train_seconds=t1 - t0, measure_seconds=t2 - t1,
                     resample_seconds=time.perf_counter() - t2)
        per_model.append({"name": name, "family": family(cfg.models[name]), "n": store.attrs()["n_params"],
                          "point": point, "replicates": rep["replicates"]})
    if executor is not None:
        executor.close()

    families: dict = {}
    for fam in dict.fromkeys(d["family"] for d in per_model):
        items = sorted((d for d in per_model if d["family"] == fam), key=lambda d: d["n"])
        n = np.array([d["n"] for d in items], dtype=np.float64)
        rows = {k: np.array([d["point"][k] for d in items], dtype=np.float64) for k in items[0]["point"]}
        reps = {r: np.array([d["replicates"][r] for d in items]) for r, _ in READINGS}
        families[fam] = {"names": [d["name"] for d in items], "n": n, "rows": rows,
                         "fits": fit_family(n, rows, reps) if len(items) >= 3 else {"error": "fewer than 3 sizes"}}

    out_dir = Path(args.out) / f"{cfg.name}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(out_dir / "sweep.zarr", mode="w")
    for fam, d in families.items():
        store.write(fam, "n_params", d["n"], ["model"])
        for k, v in d["rows"].items():
            store.write(fam, k, np.nan_to_num(v, nan=-1.0), ["model"])
        for r, _ in READINGS:
            reps = np.array([m["replicates"][r] for m in sorted((x for x in per_model if x["family"] == fam),
                                                                  key=lambda x: x["n"])])
            store.write(fam, f"corr_relative_replicates_{r}", np.nan_to_num(reps, nan=-1.0), ["model", "resample"])
    wall = time.perf_counter() - t_start
    summary_fams = {fam: {"models": d["names"], "n_params": d["n"].tolist(), "fits": d["fits"],
                          "table": {k: v.tolist() for k, v in d["rows"].items()}} for fam, d in families.items()}
    store.set_attrs({"config": config_to_dict(cfg), "families": summary_fams, "missing_value": -1.0,
                     "resamples": args.resamples, "wall_seconds": wall, **provenance()})
    fig_path = out_dir / "scale_sweep.png"
    figure(fig_path, families)
    if tracker is not None:
        with tracker.run(f"scale-sweep-{cfg.name}", params={"models": [d["name"] for d in per_model]},
                         tags={"kind": "scale_sweep", "zarr_path": store.url}):
            for fam, d in families.items():
                for i, size in enumerate(d["n"]):
                    tracker.log_metrics({f"sweep.{fam}.{k}": d["rows"][k][i] for k in d["rows"]}, step=int(size))
                tracker.log_metrics({f"fit.{fam}.{f}.{k}": v for f, fd in d["fits"].items() if isinstance(fd, dict)
                                     for k, v in fd.items() if isinstance(v, float)})
            tracker.log_metrics({"sweep.wall_seconds": wall})
            tracker.log_artifact(fig_path)
    summary = {"families": summary_fams, "wall_seconds": wall, "zarr": str(store.path), "figure": str(fig_path)}
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale sweep: how the coupling set sizes and the |z| < cut fraction scale with N.

    python -m jobs.scale_sweep --config configs/scale-sweep-cpu.yaml [--out runs] [--ray [ADDRESS]]

Every model of the config is one size of the family (N from about 1e3 to 1e5 on CPU, to 1e7 on
GPUs). Each is trained and measured; at its last checkpoint with statistics the sweep reads the
coupling set sizes (relative, absolute, exponent, with uncertainties) and the |z| < cut
fraction, fits the absolute correlation coupling set size c (N^2 - 1) ~ N^alpha and the relative
sizes ~ N^beta (power laws, `adaptsym.stats.scaling`), and writes `<out>/<name>-sweep/sweep.zarr`,
a figure, and an MLflow run with the fits. Prints the summary as JSON. A size whose statistic is
untestable (too few active examples for its non-zero test, `adaptsym.stats.nonzero`) has no value and
is left out of that statistic's fit; the sweep records the active examples behind every point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

STATS = ("corr", "coskew", "cokurt")


def collect(scalars: dict) -> dict | None:
    """The sweep's numbers from one checkpoint's scalars (None if its statistics were skipped)."""
    p = "hessian_entries."
    if f"{p}marginal.z_fraction" not in scalars:
        return None
    out = {"z_fraction": scalars[f"{p}marginal.z_fraction"],
           "z_fraction_std": scalars.get(f"{p}marginal.z_fraction_exact_std", np.nan),
           "z_forced_fraction_per_example": scalars.get(f"{p}marginal.z_forced_fraction_per_example", np.nan),
           "active_z_fraction": scalars.get(f"{p}active.z_fraction_exact", np.nan),
           "n_active": scalars.get(f"{p}n_active_examples", np.nan),
           "corr_min_detectable_rho": scalars.get(f"{p}marginal.corr.min_detectable_rho", np.nan),
           "active_corr_min_detectable_rho": scalars.get(f"{p}active.corr.min_detectable_rho", np.nan)}
    for reading, tag in (("marginal", ""), ("active", "active_")):  # both readings (docs/statistics.md)
        for st in STATS:
            for k in ("relative", "relative_std", "exponent", "exponent_std", "log10_absolute", "untestable"):
                out[f"{tag}{st}_{k}"] = scalars.get(f"{p}{reading}.{st}.{k}", np.nan)
    return out


def figure(path: Path, n: np.ndarray, rows: dict, fits: dict) -> None:
    import matplotlib

    from adaptsym.util import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    absolute = rows["corr_relative"] * (n**2 - 1)
    a1.errorbar(n, absolute, yerr=rows["corr_relative_std"] * (n**2 - 1), fmt="o", label="correlations")
    f = fits["corr_absolute"]
    if "exponent" in f:
        grid = np.geomspace(n.min(), n.max(), 50)
        a1.plot(grid, np.exp(f["log_prefactor"]) * grid ** f["exponent"], "--",
                label=f"fit: N^({f['exponent']:.2f}), 95% interval [{f['exponent_ci_low']:.2f}, "
                      f"{f['exponent_ci_high']:.2f}]")
    untestable = n[rows["corr_untestable"] > 0]
    for size in untestable:
        a1.axvline(size, color="grey", ls=":", lw=1)
    if untestable.size:
        a1.plot([], [], color="grey", ls=":", label="untestable (too few active examples)")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("N (parameters)")
    a1.set_ylabel("absolute coupling set size c (N^2 - 1)")
    a1.legend(fontsize=8)
    a2.errorbar(n, rows["z_fraction"], yerr=rows["z_fraction_std"], fmt="o")
    a2.set_xscale("log")
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("N (parameters)")
    a2.set_ylabel("fraction |z| < cut")
    save_figure(fig, path, "Scale sweep: coupling set size and normalised means against network size")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.scale_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", default="runs")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from adaptsym.config import config_to_dict, load_config
    from adaptsym.measure import measure_run
    from adaptsym.storage.provenance import provenance
    from adaptsym.stats.scaling import fit_power_law
    from adaptsym.storage.store import RunStore
    from adaptsym.storage.tracking import Tracker
    from adaptsym.train import train

    cfg = load_config(args.config)
    if len(cfg.models) < 3:
        raise SystemExit("a scale sweep needs at least 3 models (sizes) in the config")
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    executor = None
    if args.ray is not None:
        from services.cluster import connect
        from services.executor import RayExecutor

        connect(args.ray or None)
        executor = RayExecutor()
    names, sizes, points = [], [], []
    for name in cfg.model_names():
        res = train(cfg, name, args.out, tracker=tracker, progress=not args.quiet)
        m = measure_run(res.run_dir, cfg=cfg, tracker=tracker, progress=not args.quiet, executor=executor)
        pts = [collect(m.scalars[e]) for e in sorted(m.scalars)]
        pts = [q for q in pts if q is not None]
        if not pts:
            print(f"[{name}] no checkpoint with statistics (H = 0 everywhere?): left out of the fit")
            continue
        names.append(name)
        sizes.append(RunStore.for_run(res.run_dir, mode="r").attrs()["n_params"])
        points.append(pts[-1])  # the last checkpoint with statistics
    if executor is not None:
        executor.close()
    order = np.argsort(sizes, kind="stable")  # by N, whatever the config's order
    names = [names[i] for i in order]
    n = np.array(sizes, dtype=np.float64)[order]
    rows = {k: np.array([points[i][k] for i in order], dtype=np.float64) for k in points[0]}
    def fit(key, y, y_std):
        try:
            fits[key] = fit_power_law(n, y, y_std)
        except ValueError as exc:  # e.g. nothing detected, or untestable, at most sizes
            fits[key] = {"error": str(exc)}

    fits: dict = {}
    fit("corr_absolute", rows["corr_relative"] * (n**2 - 1), rows["corr_relative_std"] * (n**2 - 1))
    for st in STATS:
        fit(f"{st}_relative", rows[f"{st}_relative"], rows[f"{st}_relative_std"])
    zf = np.polyfit(np.log10(n), rows["z_fraction"], 1, cov=len(n) > 3)
    slope, slope_std = (float(zf[0][0]), float(np.sqrt(zf[1][0, 0]))) if len(n) > 3 else (float(zf[0]), float("nan"))
    fits["z_fraction_vs_log10N"] = {"slope": slope, "slope_std": slope_std}

    out_dir = Path(args.out) / f"{cfg.name}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(out_dir / "sweep.zarr", mode="w")
    store.write("sizes", "n_params", n, ["model"])
    for k, v in rows.items():
        store.write("sizes", k, np.nan_to_num(v, nan=-1.0), ["model"])
    store.set_attrs({"config": config_to_dict(cfg), "fits": fits, "models": names, "missing_value": -1.0,
                     **provenance()})
    fig_path = out_dir / "scale_sweep.png"
    figure(fig_path, n, rows, fits)
    if tracker is not None:
        with tracker.run(f"scale-sweep-{cfg.name}", params={"models": names},
                         tags={"kind": "scale_sweep", "zarr_path": store.path.resolve()}):
            for i, size in enumerate(n):
                tracker.log_metrics({f"sweep.{k}": rows[k][i] for k in rows}, step=int(size))
            tracker.log_metrics({f"fit.{f}.{k}": v for f, d in fits.items() for k, v in d.items()
                                 if isinstance(v, float)})
            tracker.log_artifact(fig_path)
    summary = {"models": names, "n_params": n.tolist(), "fits": fits, "zarr": str(store.path), "figure": str(fig_path)}
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

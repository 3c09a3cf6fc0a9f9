"""Signal propagation at initialisation: the length map q^l and chi_1 of the bias-free ReLU MLPs
and the VGG family, measured against the closed forms (`adaptsym.nets.signal_propagation`).

    python -m jobs.signal_propagation [--out runs] [--sigmas 1 1.2 1.414 1.7 2] [--draws 8] [--no-mlflow]

Writes `<out>/signal-propagation/` with `results.zarr` (per network: arrays (sigma, layer) of
q, its prediction, chi_1, its prediction, and the ratios with standard errors over weight
draws), `signal_propagation.png`, `signal_propagation.json`, and an MLflow run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adaptsym.config import ModelSpec
from adaptsym.nets.models import build_plan
from adaptsym.storage.provenance import provenance
from adaptsym.util import save_figure
from adaptsym.nets.signal_propagation import q_map
from adaptsym.storage.store import RunStore

NETWORKS = {  # name: (model spec, input shape)
    "mlp-512x6": (ModelSpec(kind="mlp", hidden=[512] * 6), (64,)),
    "vgg12-quarter": (ModelSpec(kind="vgg12", width_multiplier=0.25), (3, 32, 32)),
}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for ni, (name, r) in enumerate(results.items()):
        layers = np.arange(r["q"].shape[1])
        for si, sw in enumerate(r["sigmas"]):
            if ni == 0:
                axes[0].semilogy(layers, r["q"][si], "o", color=f"C{si}", label=f"sigma_w = {sw:g}")
                axes[0].semilogy(layers, r["q_theory"][si], "-", color=f"C{si}", lw=0.8)
        ok = np.isfinite(r["q_ratio"]) & r["wide"][None, :]
        axes[1].errorbar(np.tile(r["sigmas"][:, None], (1, ok.shape[1]))[ok] + 0.01 * ni,
                         r["q_ratio"][ok], yerr=r["q_ratio_se"][ok], fmt="o", ms=3, label=name)
        chi = np.nanmean(r["chi1"][:, r["wide"]], axis=1)
        axes[2].plot(r["sigmas"], chi, "o", label=f"{name} (mean over layers)")
    s = np.linspace(0.8, 2.2, 50)
    axes[2].plot(s, s ** 2 / 2, "k-", lw=0.8, label="sigma_w^2 / 2")
    axes[0].set_xlabel("weight layer")
    axes[0].set_ylabel("q^l (dots measured, lines the q-map)")
    axes[0].set_title(f"{list(results)[0]}: length map", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].axhline(1, color="k", lw=0.8)
    axes[1].set_xlabel("sigma_w")
    axes[1].set_ylabel("q measured / q-map (layers with a closed form, output unit left out)")
    axes[1].legend(fontsize=7)
    axes[2].set_xlabel("sigma_w")
    axes[2].set_ylabel("chi_1 (conv layers: times the padding factor)")
    axes[2].legend(fontsize=7)
    save_figure(fig, path, "Signal propagation at initialisation, bias-free ReLU networks (bars: 1 s.e. over "
                "weight draws)", dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.signal_propagation", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs", help="folder for signal-propagation/ and the MLflow store (default runs)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 1.2, 1.414, 1.7, 2.0],
                   help="weight scales sigma_w (W ~ N(0, sigma_w^2 / fan_in); default 1 1.2 1.414 1.7 2)")
    p.add_argument("--draws", type=int, default=8, help="weight draws averaged per sigma_w (default 8)")
    p.add_argument("--examples", type=int, default=16, help="Gaussian inputs per draw (default 16)")
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS),
                   help="networks to measure (default all)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)
    out = Path(args.out) / "signal-propagation"
    out.mkdir(parents=True, exist_ok=True)
    store = RunStore(out / "results.zarr", mode="w")
    store.set_attrs({"sigmas": args.sigmas, "draws": args.draws, "examples": args.examples, **provenance()})
    results, summary = {}, {}
    for name in args.networks:
        spec, shape = NETWORKS[name]
        plan, shapes = build_plan(spec, shape)
        r = q_map(plan, shapes, shape, args.sigmas, draws=args.draws, n_examples=args.examples)
        results[name] = r
        for key in ("q", "q_theory", "chi1", "chi1_theory", "q_ratio", "q_ratio_se", "chi1_ratio", "chi1_ratio_se"):
            store.write(name, key, np.nan_to_num(r[key], nan=-1.0), ("sigma", "layer"))
        store.set_attrs({"kinds": r["kinds"], "after": r["after"], "missing_value": -1.0,
                         "spec": spec.model_dump(mode="json"), "input_shape": list(shape)}, group=name)
        wide = np.array([s[0] > 1 for s in shapes])  # the single output unit has no mean over units
        r["wide"] = wide
        summary[name] = {"layers": len(shapes), "layers_compared": int(wide.sum()),
                         "max_abs_q_ratio_minus_1": float(np.nanmax(np.abs(r["q_ratio"][:, wide] - 1))),
                         "max_abs_chi1_ratio_minus_1": float(np.nanmax(np.abs(r["chi1_ratio"][:, wide] - 1))),
                         "max_q_ratio_se": float(np.nanmax(r["q_ratio_se"][:, wide])),
                         "chi1_by_sigma": dict(zip(map(str, args.sigmas), np.nanmean(r["chi1"][:, wide], 1).tolist()))}
    figure(results, out / "signal_propagation.png")
    (out / "signal_propagation.json").write_text(json.dumps(summary, indent=1))
    if not args.no_mlflow:
        from adaptsym.storage.tracking import Tracker

        tracker = Tracker(args.out, "signal-propagation")
        with tracker.run("signal-propagation", params=vars(args), tags={"zarr": str(store.path)}):
            for name, s in summary.items():
                tracker.log_metrics({f"{name}.max_abs_q_ratio_minus_1": s["max_abs_q_ratio_minus_1"],
                                     f"{name}.max_abs_chi1_ratio_minus_1": s["max_abs_chi1_ratio_minus_1"]})
            tracker.log_artifact(out / "signal_propagation.png")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

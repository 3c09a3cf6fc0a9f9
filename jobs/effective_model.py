"""Fit the effective Ising models and compute their entropy landscapes, then write the report.

    python -m jobs.effective_model --config configs/effective-model-demo.yaml [--out runs]
        [--scenario NAME ...] [--no-landscape] [--no-mlflow] [--quiet]

Reads the ensembles that `jobs.collect_ensemble` stored in `<out>/<name>/results.zarr`. For
each scenario and part (`adaptsym.effective.analysis`): Boltzmann learning with belief
propagation (the fit error Delta of every step goes to MLflow), the energy density of every
configuration, and both sweeps of the coupling field x around low-, medium- and high-energy
references. Everything goes to the zarr store; the report (`adaptsym.effective.report`) is
built from the store alone: `<out>/<name>/effective_report.html` with its figures.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from adaptsym.effective.analysis import (ENERGY_CLASSES, fit_part, group, landscape_part, parts, pick_references,
                                         sampled_landscape_part)
from adaptsym.effective.model import energies
from adaptsym.effective.report import write_report
from adaptsym.effective.collection import read_ensemble
from adaptsym.effective.config import EffectiveConfig
from adaptsym.storage.store import RunStore
from adaptsym.storage.tracking import Tracker
from adaptsym.progress import bar_off
from jobs.collect_ensemble import effective_parser, run_effective_job


def analyse_scenario(cfg: EffectiveConfig, store: RunStore, scenario: str, tracker=None, landscape: bool = True,
                     progress: bool = True) -> dict:
    configs, acc, attrs = read_ensemble(store, scenario)
    widths = cfg.network_of(scenario).widths
    found = {"scenario": scenario, "configurations": int(configs.shape[0]), "parts": {}}
    refs_idx, refs = None, None
    for part, idx in parts(widths).items():
        t0 = time.perf_counter()
        sub = configs[:, idx]
        ctx = tracker.run(f"{scenario}/{part}", nested=True, params={"scenario": scenario, "part": part,
                                                                  "n_weights": len(idx)}) if tracker else \
            contextlib.nullcontext()
        with ctx:
            log = (lambda i, d: tracker.log_metrics({"delta": d}, step=i)) if tracker else None
            res = fit_part(store, cfg, scenario, part, sub, log=log)
            fit = res.pop("fit")
            g = group(scenario, part)
            if part == "full":
                e = energies(fit.J, fit.h, sub.astype(np.float64)) / len(idx)
                store.write(g, "energy_density", e, ("configuration",))
                store.write(g, "test_accuracy", acc, ("configuration",))
                refs_idx = pick_references(e, cfg.landscape.references, cfg.seed)
                refs = [i for c in ENERGY_CLASSES for i in refs_idx[c]]
                store.set_attrs({"references": refs_idx}, group=g)
            summary = dict(res)
            if landscape:
                bar = tqdm(total=len(refs), desc=f"landscape {scenario}/{part}", unit="ref", disable=bar_off(progress))
                summary.update(landscape_part(store, cfg, scenario, part, fit.J, fit.h,
                                              configs[refs][:, idx].astype(np.float64), progress=bar.update))
                bar.close()
                if cfg.landscape.sampled is not None:
                    sp = cfg.landscape.sampled
                    bar = tqdm(total=len(refs) * (sp.sweeps + sp.burn), desc=f"sampled landscape {scenario}/{part}",
                               unit="sweep", disable=bar_off(progress))
                    summary.update(sampled_landscape_part(store, cfg, scenario, part, fit.J, fit.h,
                                                          configs[refs][:, idx].astype(np.float64),
                                                          progress=bar.update))
                    bar.close()
                store.set_attrs({"reference_configurations": refs,
                                 "reference_classes": [c for c in ENERGY_CLASSES for _ in refs_idx[c]]}, group=g)
            summary["seconds"] = time.perf_counter() - t0
            store.set_attrs({"seconds": summary["seconds"]}, group=g)
            if tracker:
                tracker.log_metrics({k: float(v) for k, v in summary.items()  # delta: its history is logged above
                                     if isinstance(v, (int, float, bool)) and k != "delta"})
        found["parts"][part] = summary
    store.set_attrs({"complete": True, "widths": widths}, group=f"effective/{scenario}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = effective_parser("jobs.effective_model", __doc__.splitlines()[0])
    p.add_argument("--no-landscape", action="store_true", help="fit only, no entropy landscapes")
    args = p.parse_args(argv)

    def body(cfg, scenarios, run_dir):
        store = RunStore.for_run(run_dir)
        tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
        out = []
        with contextlib.ExitStack() as stack:
            if tracker:
                stack.enter_context(tracker.run(f"effective-{cfg.name}", params=cfg.model_dump(mode="json"),
                                                tags={"kind": "effective_model", "zarr": str(store.path)}))
            for s in scenarios:
                out.append(analyse_scenario(cfg, store, s, tracker, not args.no_landscape, not args.quiet))
            report = write_report(store, run_dir)
            if tracker:
                for f in sorted(report.parent.glob("effective_*.png")) + [report]:
                    tracker.log_artifact(f, "report")
        return {"report": str(report), "scenarios": out}

    return run_effective_job(args, "effective_model", body)


if __name__ == "__main__":
    sys.exit(main())

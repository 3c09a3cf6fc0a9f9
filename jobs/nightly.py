"""Nightly regression: a fixed small configuration, compared with a committed baseline and with
the last nightly run in MLflow.

    python -m jobs.nightly [--config configs/nightly.yaml] [--baseline jobs/baselines/nightly.json]
    python -m jobs.nightly --make-baseline --seeds 5     # rewrite the baseline

Trains and measures the config in a fresh directory, reads the quantities below at the last
checkpoint, and checks each against the baseline's mean +- band, where band = k x the standard
deviation of that quantity over runs with different seeds (the measured run-to-run spread, k = 4
by default; a floor keeps a constant quantity's band from being 0). It then checks the same band
around the previous nightly run logged in MLflow, if any. Exits 1 and names every quantity that
drifted; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUANTITIES = {
    "final_train_loss": ("training", "train_loss"),
    "final_test_acc": ("training", "test_acc"),
    "grad_norm2": ("scalar", "gradients.grad_norm2"),
    "z_fraction": ("scalar", "hessian_entries.z_fraction"),
    "n_valid": ("scalar", "hessian_entries.n_valid"),
    "corr_relative": ("scalar", "hessian_entries.corr.relative"),
    "corr_n_active": ("scalar", "hessian_entries.corr.n_active"),
    "cokurt_relative": ("scalar", "hessian_entries.cokurt.relative"),
    "spectrum_lambda_max": ("scalar", "spectrum.lambda_max"),
    "spectrum_symmetry_score": ("scalar", "spectrum.symmetry_score"),
}


def run_once(cfg, out: Path, tracker=None) -> dict:
    """Train + measure the config's single model; the nightly quantities."""
    from adaptsym.measure import measure_run
    from adaptsym.train import train

    (name,) = cfg.model_names()
    res = train(cfg, name, out, tracker=tracker, progress=False)
    m = measure_run(res.run_dir, cfg=cfg, tracker=tracker, progress=False)
    last = m.scalars[max(m.scalars)]
    values = {}
    for q, (kind, key) in QUANTITIES.items():
        values[q] = float(res.history[key][-1]) if kind == "training" else float(last.get(key, np.nan))
    return values


def compare(values: dict, reference: dict, bands: dict, what: str) -> list[str]:
    drifted = []
    for q, v in values.items():
        if q not in reference:
            continue
        ref, band = reference[q], bands[q]
        if np.isnan(v) and np.isnan(ref):  # untestable in both (too few active examples)
            continue
        if not np.isfinite(v) or not np.isfinite(ref) or abs(v - ref) > band:
            drifted.append(f"{q} = {v:.6g} is outside {what} {ref:.6g} +- {band:.3g}")
    return drifted


def last_nightly(tracker, experiment: str, exclude: str | None) -> dict | None:
    runs = tracker.mlflow.search_runs(experiment_names=[experiment], filter_string="tags.kind = 'nightly'",
                                      order_by=["attributes.start_time DESC"], output_format="list")
    for r in runs:
        if r.info.run_id != exclude and r.info.status == "FINISHED":
            return {q: r.data.metrics[f"nightly.{q}"] for q in QUANTITIES if f"nightly.{q}" in r.data.metrics}
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.nightly", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/nightly.yaml"))
    p.add_argument("--baseline", default=str(ROOT / "jobs/baselines/nightly.json"))
    p.add_argument("--out", default="runs/nightly")
    p.add_argument("--make-baseline", action="store_true")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--band-k", type=float, default=4.0)
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args(argv)

    from adaptsym.config import load_config
    from adaptsym.tracking import Tracker

    cfg = load_config(args.config)
    if len(cfg.models) != 1:
        raise SystemExit("the nightly config has exactly one model")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.make_baseline:
        runs = []
        for seed in range(args.seeds):
            c = cfg.model_copy(update={"seed": seed}, deep=True)
            runs.append(run_once(c, Path(args.out) / f"baseline-{stamp}" / f"seed{seed}"))
        table = {q: np.array([r[q] for r in runs]) for q in QUANTITIES}
        base = {"config": str(Path(args.config).name), "seeds": args.seeds, "band_k": args.band_k,
                "mean": {q: float(v.mean()) for q, v in table.items()},
                "std": {q: float(v.std(ddof=1)) for q, v in table.items()},
                "band": {q: float(max(args.band_k * v.std(ddof=1), 1e-6 * max(1.0, abs(v.mean()))))
                         for q, v in table.items()}}
        Path(args.baseline).parent.mkdir(parents=True, exist_ok=True)
        Path(args.baseline).write_text(json.dumps(base, indent=2) + "\n")
        print(f"baseline from {args.seeds} seeds written to {args.baseline}")
        return 0

    base_path = Path(args.baseline)
    if not base_path.is_file():
        raise SystemExit(f"no baseline at {base_path}; make one with `python -m jobs.nightly --make-baseline`")
    base = json.loads(base_path.read_text())
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    previous = last_nightly(tracker, cfg.name, None) if tracker else None
    values = run_once(cfg, Path(args.out) / stamp, tracker)
    drifted = compare(values, base["mean"], base["band"], "the baseline")
    if previous is not None:
        drifted += compare(values, previous, base["band"], "the last nightly")
    if tracker:
        with tracker.run(f"nightly-{stamp}", tags={"kind": "nightly", "status": "drift" if drifted else "ok"}):
            tracker.log_metrics({f"nightly.{q}": v for q, v in values.items()})
    for q, v in values.items():
        print(f"{q:26s} {v:12.6g}   baseline {base['mean'][q]:12.6g} +- {base['band'][q]:.3g}")
    if previous is None:
        print("no earlier nightly run in MLflow: compared with the baseline only")
    if drifted:
        for line in drifted:
            print(f"DRIFT: {line}", file=sys.stderr)
        return 1
    print("nightly: all quantities within their bands")
    return 0


if __name__ == "__main__":
    sys.exit(main())

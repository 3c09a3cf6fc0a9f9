"""Nightly regression: a fixed run compared exactly with a golden record, exact identities on its
checkpoints, and the last nightly in MLflow.

    python -m jobs.nightly [--config configs/nightly.yaml] [--out runs/nightly]
    python -m jobs.nightly --update-golden           # rewrite jobs/baselines/nightly_golden.json
    python -m jobs.nightly --seeds 3                 # also: the distribution over 3 fresh seeds
    python -m jobs.nightly --make-baseline --seeds 5 # rewrite the seed distribution jobs/baselines/nightly.json
    python -m jobs.nightly --ray [HOST:PORT]         # measure through Ray actors (a local cluster, or a running one)

1. Golden record. The config's fixed seed is trained and measured; on one platform that run is
   deterministic, so every quantity (`gather`) is compared with the committed golden record at a
   tolerance set by its kind (`tolerance`): integers exactly, float64 measurements to a relative
   1e-6, float32 training metrics to 1e-5. The quantities include scale-sensitive ones that a wrong
   factor moves (lambda_max/min, the Hutchinson trace, the gradient norm, mean |h| per layer pair,
   the bootstrap replicate variance, coupling counts), at the first and the last checkpoint.
2. Identities (`adaptsym.curvature.identities`) on the last checkpoint: same-layer blocks and tr H exactly 0,
   H theta = (L-1) grad R, stored entries against autograd, the bootstrap's exact cumulant scaling,
   the coupling counts recomputed with scipy, the design covering every layer pair.
3. The last nightly in MLflow, at the same tolerances.
4. With --seeds S: S fresh seeds against the committed seed distribution (`--make-baseline`): the
   mean over S against the baseline mean, band = 4 sd sqrt(1/S + 1/S0) (a two-sample band for the
   mean). This notices a moved distribution, which the golden record cannot tell from noise.

Prints a table (quantity, expected, got, tolerance, verdict), writes it to <out>/<stamp>/report.md
and report.json, logs both to MLflow as artifacts, and exits 1 naming every drift; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "jobs/baselines/nightly_golden.json"
BASELINE = ROOT / "jobs/baselines/nightly.json"
# quantities compared across seeds (the distribution check)
DISTRIBUTION = ("train.final_loss", "train.final_test_acc", "last.grad_norm2", "last.z_fraction", "last.n_valid",
                "last.corr_relative", "last.lambda_max", "last.symmetry_score")
SCALARS = {  # golden name -> key in the checkpoint's scalars
    "grad_norm2": "gradients.grad_norm2", "lambda_max": "spectrum.lambda_max", "lambda_min": "spectrum.lambda_min",
    "trace_estimate": "spectrum.trace_estimate", "moment2": "spectrum.moment2",
    "symmetry_score": "spectrum.symmetry_score", "z_fraction": "hessian_entries.marginal.z_fraction",
    "n_valid": "hessian_entries.n_valid", "n_active_examples": "hessian_entries.n_active_examples",
    "corr_n_nonzero": "hessian_entries.marginal.corr_n_nonzero", "corr_relative": "hessian_entries.marginal.corr.relative",
    "active_z_fraction": "hessian_entries.active.z_fraction_exact",
    "z_forced_fraction_per_example": "hessian_entries.marginal.z_forced_fraction_per_example",
    "active_corr_n_nonzero": "hessian_entries.active.corr_n_nonzero",
    "active_corr_relative": "hessian_entries.active.corr.relative",
}
INTEGER = ("n_valid", "n_active_examples", "corr_n_nonzero", "coskew_nonzero", "cokurt_nonzero", "entries.")


def platform_fingerprint(dtype: str) -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "machine": platform.machine(), "threads": torch.get_num_threads(), "dtype": dtype}


def tolerance(name: str, golden: float) -> tuple[float, str]:
    """Allowed |got - golden| for one quantity of the deterministic run, and why."""
    if any(tag in name for tag in INTEGER):
        return 0.0, "integer: exact"
    if name.startswith("train."):
        return 1e-5 * abs(golden) + 1e-7, "float32 training: rel 1e-5"
    return 1e-6 * abs(golden) + 1e-12, "float64 measurement: rel 1e-6"


def run_once(cfg, out: Path, tracker=None, executor=None):
    """Train + measure the config's single model (through `executor`: in process by default);
    (run_dir, training history, measure result)."""
    from adaptsym.measure import measure_run
    from adaptsym.train import train

    (name,) = cfg.model_names()
    res = train(cfg, name, out, tracker=tracker, progress=False)
    m = measure_run(res.run_dir, cfg=cfg, tracker=tracker, progress=False, executor=executor)
    return res.run_dir, res.history, m


def ray_executor(address: str | None):
    """`--ray`: the distributed path the cluster's CronJob runs (services/), on 2 actors of a local
    cluster, or on every GPU (else CPU) of the cluster at `address`. Its results are compared with
    the same golden record: tiles are bitwise the in-process ones, and the sharded products agree
    to rounding (far inside the float64 tolerance)."""
    from services.cluster import connect
    from services.executor import RayExecutor

    connect(address or None, num_cpus=2 if not address else None)
    return RayExecutor(n_actors=2 if not address else None, threads_per_actor=1)


def gather(run_dir: Path, history: dict, m) -> dict:
    """The golden quantities of one run: final training metrics; per checkpoint (first, last)."""
    from adaptsym.curvature.identities import per_layer_pair
    from adaptsym.storage.store import RunStore

    store = RunStore.for_run(run_dir, mode="r")
    n_layers = int(store.attrs()["n_layers"])
    out = {"train.final_loss": float(history["train_loss"][-1]), "train.final_test_acc": float(history["test_acc"][-1])}
    epochs = sorted(m.scalars)
    for tag, epoch in (("first", epochs[0]), ("last", epochs[-1])):
        sc = m.scalars[epoch]
        for name, key in SCALARS.items():
            out[f"{tag}.{name}"] = float(sc.get(key, np.nan))
        g = f"epoch_{epoch:04d}/hessian_entries"
        if f"{g}/h" not in store.root:
            continue
        h, lp, lq = store.read(g, "h"), store.read(g, "layer_p"), store.read(g, "layer_q")
        valid = store.read(g, "valid")
        out[f"{tag}.replicate_var_mean"] = float(np.mean(store.read(g, "std")[valid] ** 2)) if valid.any() else np.nan
        for name in ("coskew", "cokurt", "active_coskew", "active_cokurt"):
            if f"{g}/{name}_nonzero" in store.root:
                out[f"{tag}.{name}_nonzero"] = float(store.read(g, f"{name}_nonzero").sum())
        out.update({f"{tag}.{k}": v for k, v in per_layer_pair(h, lp, lq, n_layers).items()})
    return out


def identity_checks(run_dir: Path, cfg, epoch: int) -> list:
    """`adaptsym.curvature.identities` on one checkpoint of the run and its stored measurement."""
    from adaptsym import identities as ids
    from adaptsym.nets.checkpoint import load_checkpoint, model_from_checkpoint
    from adaptsym.nets.data import load_dataset
    from adaptsym.curvature.hvp import PoolHessian
    from adaptsym.measure import select_pool
    from adaptsym.storage.store import RunStore
    from adaptsym.util import torch_dtype

    mc = cfg.measure
    dtype = torch_dtype(mc.dtype)
    model = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt"), dtype=dtype)
    data = load_dataset(cfg.data, cfg.seed).to("cpu", dtype)
    x, y = select_pool(data.x_train, data.y_train, mc.pool_size, cfg.seed)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, 0x1DE]))
    op = PoolHessian(model.plan, model.params(), x, y, chunk=mc.example_chunk)
    store = RunStore.for_run(run_dir, mode="r")
    g = f"epoch_{epoch:04d}/hessian_entries"
    h, p, q = store.read(g, "h"), store.read(g, "p"), store.read(g, "q")
    lp, lq, valid = store.read(g, "layer_p"), store.read(g, "layer_q"), store.read(g, "valid")
    he = mc.hessian_entries
    s = he.minibatch or cfg.train.batch_size
    checks = ids.hessian_structure(op, rng) + [ids.homogeneity(op), ids.entries_vs_autograd(model, x, y, h, p, q, rng)]
    if valid.sum() >= 2:
        checks += ids.bootstrap_scaling(h[:, valid], s, rng)
        if he.nonzero == "fdr":
            from adaptsym.observables.entry_blocks import STREAM_PAIRS, stream
            from adaptsym.stats.nonzero import pair_rows

            active = store.read(g, "active_example")
            pairs = pair_rows(np.nonzero(active)[0], stream(cfg.seed, epoch, STREAM_PAIRS))
            stored = {"marginal": store.read(g, "corr_count")[valid], "active": store.read(g, "active_corr_count")[valid]}
            checks += ids.decisions_recomputed(h[:, valid], stored, active, pairs, he.fdr_q, he.pvalue, he.fdr,
                                               he.active_test, he.mild_skew)
    checks += ids.documented_bounds(store, f"epoch_{epoch:04d}", s, he.z_cut)
    if he.design.kind == "block" and he.design.stratify:
        checks.append(ids.design_coverage(lp, lq, model.n_layers))
    return checks


def compare(values: dict, reference: dict, what: str) -> list[dict]:
    """Rows (quantity, expected, got, tolerance, verdict) of `values` against a reference record."""
    rows = []
    for q in sorted(set(values) | set(reference)):
        got, ref = values.get(q, np.nan), reference.get(q, np.nan)
        tol, basis = tolerance(q, ref if np.isfinite(ref) else 0.0)
        if q not in reference or q not in values:
            ok = False
            basis = "missing from the reference" if q not in reference else "missing from this run"
        elif np.isnan(got) and np.isnan(ref):
            ok = True  # e.g. untestable in both
        else:
            ok = bool(np.isfinite(got) and np.isfinite(ref) and abs(got - ref) <= tol)
        rows.append({"check": what, "quantity": q, "expected": ref, "got": got, "tolerance": tol, "basis": basis,
                     "verdict": "ok" if ok else "DRIFT"})
    return rows


def identity_rows(checks) -> list[dict]:
    return [{"check": "identity", "quantity": c.name, "expected": c.expected, "got": c.got, "tolerance": c.tolerance,
             "basis": c.basis, "verdict": "ok" if c.ok else "DRIFT"} for c in checks]


def distribution_rows(cfg, out: Path, seeds: int, baseline: dict) -> list[dict]:
    rows = []
    runs = []
    for i in range(seeds):
        c = cfg.model_copy(update={"seed": 1000 + i}, deep=True)  # seeds the baseline never saw
        run_dir, history, m = run_once(c, out / f"seed{1000 + i}")
        runs.append(gather(run_dir, history, m))
    s0 = baseline["seeds"]
    for q in DISTRIBUTION:
        vals = np.array([r.get(q, np.nan) for r in runs])
        mean, ref, sd = float(np.nanmean(vals)), baseline["mean"][q], baseline["std"][q]
        band = 4.0 * max(sd, 1e-12) * np.sqrt(1.0 / seeds + 1.0 / s0)
        ok = bool(np.isfinite(mean) and abs(mean - ref) <= band)
        rows.append({"check": f"mean over {seeds} seeds", "quantity": q, "expected": ref, "got": mean,
                     "tolerance": band, "basis": f"4 sd sqrt(1/{seeds} + 1/{s0})", "verdict": "ok" if ok else "DRIFT"})
    return rows


def make_baseline(cfg, out: Path, seeds: int, path: Path) -> None:
    runs = []
    for seed in range(seeds):
        run_dir, history, m = run_once(cfg.model_copy(update={"seed": seed}, deep=True), out / f"seed{seed}")
        runs.append(gather(run_dir, history, m))
    table = {q: np.array([r.get(q, np.nan) for r in runs]) for q in DISTRIBUTION}
    base = {"config": cfg.name, "seeds": seeds, "mean": {q: float(np.nanmean(v)) for q, v in table.items()},
            "std": {q: float(np.nanstd(v, ddof=1)) for q, v in table.items()}}
    path.write_text(json.dumps(base, indent=1, sort_keys=True) + "\n")


def render(rows: list[dict]) -> str:
    head = "| check | quantity | expected | got | tolerance | verdict |\n| --- | --- | --- | --- | --- | --- |"
    fmt = lambda v: f"{v:.10g}" if isinstance(v, float) else str(v)
    body = [f"| {r['check']} | {r['quantity']} | {fmt(r['expected'])} | {fmt(r['got'])} | {fmt(r['tolerance'])} | "
            f"{r['verdict']} |" for r in rows]
    return "\n".join([head] + body)


def last_nightly(tracker, experiment: str) -> dict | None:
    runs = tracker.mlflow.search_runs(experiment_names=[experiment], filter_string="tags.kind = 'nightly'",
                                      order_by=["attributes.start_time DESC"], output_format="list")
    for r in runs:
        if r.info.status == "FINISHED":
            return {k[len("nightly."):]: v for k, v in r.data.metrics.items() if k.startswith("nightly.")}
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs.nightly", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/nightly.yaml"), help="the nightly config")
    p.add_argument("--golden", default=str(GOLDEN), help="golden record of the deterministic run")
    p.add_argument("--baseline", default=str(BASELINE), help="seed distribution (for --seeds)")
    p.add_argument("--out", default="runs/nightly", help="where runs and the report go")
    p.add_argument("--update-golden", action="store_true", help="rewrite the golden record from this run")
    p.add_argument("--seeds", type=int, default=0, help="also compare the mean over this many fresh seeds (0: no)")
    p.add_argument("--make-baseline", action="store_true", help="rewrite the seed distribution from --seeds seeds")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to or compare with MLflow")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="HOST:PORT",
                   help="measure through Ray actors: a local 2-actor cluster, or the running cluster at HOST:PORT "
                        "('auto' inside a Ray job)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from adaptsym.config import load_config
    from adaptsym.storage.tracking import Tracker

    cfg = load_config(args.config)
    if len(cfg.models) != 1:
        raise SystemExit("the nightly config has exactly one model")
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    if args.make_baseline:
        make_baseline(cfg, out, max(args.seeds, 3), Path(args.baseline))
        print(f"seed distribution from {max(args.seeds, 3)} seeds written to {args.baseline}")
        return 0
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    previous = last_nightly(tracker, cfg.name) if tracker else None
    rows: list[dict] = []
    executor = None
    try:
        executor = ray_executor(args.ray) if args.ray is not None else None
        run_dir, history, m = run_once(cfg, out / "run", tracker, executor)
        values = gather(run_dir, history, m)
        checks = identity_checks(run_dir, cfg, max(m.scalars))
    except Exception as exc:  # a crash is a regression too: name it
        traceback.print_exc()
        print(f"DRIFT: the nightly run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if executor is not None:
            executor.close()
    fingerprint = platform_fingerprint(cfg.measure.dtype)
    if args.update_golden:
        Path(args.golden).write_text(json.dumps({"platform": fingerprint, "values": values}, indent=1,
                                                sort_keys=True) + "\n")
        print(f"golden record written to {args.golden} ({len(values)} quantities); `git diff` shows what moved")
        return 0
    golden_path = Path(args.golden)
    if not golden_path.is_file():
        raise SystemExit(f"no golden record at {golden_path}; write one with `python -m jobs.nightly --update-golden`")
    golden = json.loads(golden_path.read_text())
    if golden["platform"] != fingerprint:
        print(f"note: the golden record was made on {golden['platform']}, this is {fingerprint}; "
              "deterministic comparisons assume the same platform (rewrite it with --update-golden there)")
    rows += compare(values, golden["values"], "golden")
    rows += identity_rows(checks)
    if previous is not None:
        rows += [r for r in compare(values, previous, "last nightly") if r["quantity"] in previous]
    if args.seeds:
        rows += distribution_rows(cfg, out, args.seeds, json.loads(Path(args.baseline).read_text()))
    table = render(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    drifted = [r for r in rows if r["verdict"] != "ok"]
    if tracker:
        with tracker.run(f"nightly-{out.name}", tags={"kind": "nightly", "status": "drift" if drifted else "ok"}):
            tracker.log_metrics({f"nightly.{q}": v for q, v in values.items()})
            tracker.log_artifact(out / "report.md")
            tracker.log_artifact(out / "report.json")
    print(table)
    if previous is None and not args.no_mlflow:
        print("no earlier nightly run in MLflow: compared with the golden record and the identities only")
    for r in drifted:
        print(f"DRIFT: {r['quantity']} = {r['got']:.10g}, expected {r['expected']:.10g} +- {r['tolerance']:.3g} "
              f"({r['check']}; {r['basis']})", file=sys.stderr)
    if drifted:
        return 1
    print(f"nightly: all {len(rows)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

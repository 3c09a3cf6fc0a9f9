"""Collect the effective model's ensemble: many binary-weight networks trained on Ray actors.

    python -m jobs.collect_ensemble --config configs/effective-model-demo.yaml [--out runs]
        [--scenario NAME ...] [--actors K] [--address HOST:PORT] [--local] [--force]

For each scenario, actors train tasks of `collect.batch` networks (`adaptsym.effective.binary_net`); the
driver commits every network whose best sampled binary configuration reaches the scenario's
test-accuracy threshold to `<out>/<name>/results.zarr` (`adaptsym.effective.collection`), in task order,
until `configurations` are stored. A killed job continues where it stopped and stores the same
bits it would have stored without the kill. `--local` trains in this process instead of on Ray.
Logs one MLflow run with a nested run per scenario (counts and throughput) and prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from adaptsym.effective.collection import EnsembleWriter, collect, local_results
from adaptsym.effective.config import EffectiveConfig, load_with_scenarios
from adaptsym.effective.data import scenario_data
from adaptsym.errors import UserFacingError
from adaptsym.storage.provenance import provenance
from adaptsym.storage.runlock import run_lock
from adaptsym.storage.store import STORE_NAME, RunStore
from adaptsym.storage.tracking import Tracker
from adaptsym.progress import bar_off


def collect_scenario(cfg: EffectiveConfig, store: RunStore, scenario: str, runner=None, progress: bool = True) -> dict:
    """Fill one scenario's ensemble; `runner` is a `services.ensemble.RayTaskRunner` or None (local)."""
    sc = cfg.scenarios[scenario]
    spec = cfg.network_of(scenario).spec()
    data = scenario_data(cfg, scenario)
    writer = EnsembleWriter(store, scenario, spec.n_weights, sc.configurations, cfg.collect.batch)
    start_committed, first = writer.committed, writer.next_task
    if runner is None:
        results = local_results(spec, data, cfg.seed, cfg.collect.batch, sc.threshold, first)
    else:
        results = runner.results(f"{cfg.name}/{scenario}", data, spec, cfg.seed, cfg.collect.batch, sc.threshold,
                                 first)
    t0 = time.perf_counter()
    bar = tqdm(total=sc.configurations, initial=start_committed, desc=f"collect {scenario}", unit="config",
               disable=bar_off(progress))
    try:
        counts = collect(writer, results, sc.threshold, cfg.collect.max_failed_tasks, progress=bar.update)
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    seconds = time.perf_counter() - t0
    attrs = store.attrs(f"ensemble/{scenario}")
    actors = 1 if runner is None else len(runner.actors)
    return {"scenario": scenario, "configurations": attrs["committed"], "added": counts["configurations_added"],
            "resumed_from": start_committed, "networks_trained": counts["networks_trained"],
            "pass_rate": attrs["networks_passed"] / max(1, attrs["networks_trained"]), "seconds": seconds,
            "configs_per_s": counts["configurations_added"] / seconds if seconds else float("nan"),
            "configs_per_s_per_actor": counts["configurations_added"] / seconds / actors if seconds else float("nan"),
            "actors": actors, "n_weights": spec.n_weights}


def effective_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options both effective-model jobs take."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help="effective-model config (YAML)")
    p.add_argument("--out", default="runs", help="folder of run directories and the MLflow store (default runs)")
    p.add_argument("--scenario", action="append", help="only this scenario (repeatable; default all)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    p = effective_parser("jobs.collect_ensemble", __doc__.splitlines()[0])
    p.add_argument("--actors", type=int, help="Ray actors (default: collect.actors of the config)")
    p.add_argument("--address", help="an existing Ray cluster (HOST:PORT); default a local one")
    p.add_argument("--local", action="store_true", help="train in this process, without Ray")
    p.add_argument("--force", action="store_true", help="delete this run's ensembles and start over")
    args = p.parse_args(argv)

    def body(cfg, scenarios, run_dir):
        if args.force and (run_dir / STORE_NAME).exists():
            shutil.rmtree(run_dir / STORE_NAME)
        return run(cfg, run_dir, scenarios, args)

    return run_effective_job(args, "collect_ensemble", body)


def run_effective_job(args, name: str, body) -> int:
    """Load the config, hold the run's lock, run `body(cfg, scenarios, run_dir)` and print its
    result as JSON; a user-facing error is printed and exits 2."""
    try:
        cfg, scenarios = load_with_scenarios(args.config, args.scenario)
        run_dir = Path(args.out) / cfg.name
        with run_lock(run_dir, name):
            out = body(cfg, scenarios, run_dir)
    except UserFacingError as exc:
        print(f"jobs.{name}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1, default=float))
    return 0


def run(cfg: EffectiveConfig, run_dir: Path, scenarios: list[str], args) -> list[dict]:
    store = RunStore.for_run(run_dir)
    store.set_attrs({"config": cfg.model_dump(mode="json"), "kind": "effective_model", **provenance()})
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    runner = None
    results = []
    with contextlib.ExitStack() as stack:
        if not args.local:
            from services.cluster import connect, shutdown
            from services.ensemble import RayTaskRunner

            connect(args.address)
            stack.callback(shutdown)
            runner = RayTaskRunner(args.actors or cfg.collect.actors, cfg.collect.in_flight)
            stack.callback(runner.close)
        if tracker:
            stack.enter_context(tracker.run(f"collect-{cfg.name}", params=cfg.model_dump(mode="json"),
                                            tags={"kind": "collect_ensemble", "zarr": str(store.path)}))
        for s in scenarios:
            r = collect_scenario(cfg, store, s, runner, progress=not args.quiet)
            results.append(r)
            if tracker:
                with tracker.run(f"collect/{s}", nested=True, params={"scenario": s}):
                    tracker.log_metrics({k: v for k, v in r.items() if isinstance(v, (int, float))})
    return results


if __name__ == "__main__":
    sys.exit(main())

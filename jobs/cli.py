"""Command line: `adaptsym {demo,train,measure,plan,report,verify,submit,bench}` (also `python -m jobs.cli` in the checkout).

Lives in `jobs/` because `measure --ray` reaches the Ray services; the science in `adaptsym/`
never imports Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from adaptsym.config import ConfigError, load_config
from adaptsym.errors import UserFacingError


QUIET_HELP = "no progress (default: bars on a terminal, else one line per epoch, checkpoint and phase)"


def _models(cfg, chosen: str | None) -> list[str]:
    if chosen is None:
        return cfg.model_names()
    if chosen not in cfg.models:
        raise ConfigError(f"--model {chosen!r} is not in the config; choose one of {cfg.model_names()}")
    return [chosen]


def cmd_train(args) -> int:
    from adaptsym.storage.tracking import Tracker
    from adaptsym.train import train

    cfg = load_config(args.config)
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    for name in _models(cfg, args.model):
        res = train(cfg, name, args.out, tracker=tracker, progress=not args.quiet)
        h = res.history
        print(f"[{name}] epochs 0..{h['epoch'][-1]}: train loss {h['train_loss'][-1]:.4g}, "
              f"train acc {h['train_acc'][-1]:.3f}, held-out acc {h['test_acc'][-1]:.3f}")
        print(f"[{name}] run directory: {res.run_dir}")
    return 0


def cmd_measure(args) -> int:
    from adaptsym.measure import measure_run
    from adaptsym.storage.tracking import Tracker

    run_dir = Path(args.run)
    cfg = load_config(args.config) if args.config else None
    if not args.force:
        _check_memory(run_dir, cfg, args)
    executor = None
    if args.ray is not None:  # first: an address that does not answer fails within seconds
        from services.cluster import connect
        from services.executor import RayExecutor

        resources = connect(args.ray or None, num_cpus=args.num_cpus)
        _own_sigterm()  # Ray's core worker installs its own SIGTERM handler (a stack dump, then death)
        executor = RayExecutor(n_actors=args.actors, threads_per_actor=args.threads_per_actor,
                               max_tile_retries=args.max_tile_retries)
        print(f"Ray: {len(executor.actors)} actor(s) on {resources}")
    tracker = None if args.no_mlflow else Tracker(run_dir.parent, _experiment(run_dir, cfg))
    try:
        res = measure_run(run_dir, cfg=cfg, tracker=tracker, epochs=args.epochs, progress=not args.quiet,
                          executor=executor, overwrite=args.overwrite)
    finally:
        if executor is not None:
            executor.close()
    print(f"measured {len(res.epochs)} checkpoint(s) of {run_dir}: zarr store {res.store_path}")
    if tracker is not None and res.mlflow_run_id:
        print(f"MLflow run {res.mlflow_run_id}: {tracker.run_url(res.mlflow_run_id)}  (open with {tracker.browse_hint()})")
    print(f"next: adaptsym report --run {run_dir}  (figures, verdict and report.html)")
    return 0


def _check_memory(run_dir: Path, cfg, args) -> None:
    """Refuse before any work a measurement whose arrays alone exceed the available memory."""
    from adaptsym.config import parse_config
    from adaptsym.planning.cost import check_memory_floor
    from adaptsym.storage.store import RunStore, store_exists, store_location

    path = store_location(run_dir)
    if not store_exists(path):
        return  # measure_run names the missing store
    root = RunStore.for_run(run_dir, mode="r").attrs()
    if "n_params" not in root or "config" not in root:
        return
    cfg = cfg or parse_config(root["config"], source=f"{path} config")
    actors = None
    if args.ray is not None:
        actors = args.actors or max(1, (args.num_cpus or os.cpu_count() or 1) // args.threads_per_actor)
    # a cluster at an address has its actors' memory elsewhere: only the driver's is counted here
    check_memory_floor(cfg, int(root["n_params"]), actors, actors_here=args.ray == "")


def _experiment(run_dir: Path, cfg) -> str:
    if cfg is not None:
        return cfg.name
    from adaptsym.storage.store import RunStore

    return RunStore.for_run(run_dir, mode="r").attrs()["config"]["name"]


def cmd_demo(args) -> int:
    from adaptsym.measure import measure_run
    from adaptsym.report.render import skipped_statistics
    from adaptsym.storage.store import RunStore
    from adaptsym.storage.tracking import Tracker
    from adaptsym.train import train

    cfg = load_config(args.config)
    tracker = Tracker(args.out, cfg.name)
    for name in cfg.model_names():
        res = train(cfg, name, args.out, tracker=tracker, progress=not args.quiet)
        h = res.history
        print(f"[{name}] final train hinge loss {h['train_loss'][-1]:.4g}, train acc {h['train_acc'][-1]:.3f}, "
              f"held-out acc {h['test_acc'][-1]:.3f}")
        m = measure_run(res.run_dir, cfg=cfg, tracker=tracker, progress=not args.quiet)
        print(f"[{name}] zarr store:  {m.store_path}")
        print(f"[{name}] MLflow runs: train {res.mlflow_run_id}, measure {tracker.run_url(m.mlflow_run_id)}")
        print(f"[{name}] report:      {_report(res.run_dir, tracker)}")
        for epoch, obs, why in skipped_statistics(RunStore.for_run(res.run_dir, mode="r")):
            print(f"[{name}] skipped at epoch {epoch}: {obs}: {why}")
    print(f"MLflow tracking URI: {tracker.uri}  (browse with {tracker.browse_hint()})")
    return 0


def _report(run_dir: Path, tracker=None, verdict: bool = True) -> Path:
    from adaptsym.report.render import render_report
    from adaptsym.storage.store import RunStore
    from adaptsym.report.verdict import format_rows

    rep = render_report(run_dir)
    if verdict and rep.verdicts:
        last = max(rep.verdicts)
        print(f"verdict at epoch {last} of {run_dir.name}:\n" + "\n".join(
            "  " + line for line in format_rows(rep.verdicts[last]).splitlines()))
    run_id = RunStore.for_run(run_dir, mode="r").attrs().get("measure_mlflow_run_id")
    if tracker is not None and run_id:
        with tracker.run("report", run_id=run_id):
            for path in [*rep.figures.values(), rep.html]:
                tracker.log_artifact(path, artifact_path="report")
    return rep.html


def cmd_report(args) -> int:
    from adaptsym.storage.tracking import Tracker

    run_dir = Path(args.run)
    tracker = None if args.no_mlflow else Tracker(run_dir.parent, _experiment(run_dir, None))
    print(f"report: {_report(run_dir, tracker)}")
    return 0


def cmd_verify(args) -> int:
    from adaptsym.storage.verify import verify_run

    problems, checked = verify_run(args.run)
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"verify {args.run}: {len(problems)} problem(s) in {checked} checkpoints and arrays checked"
          + ("" if problems else ": intact"))
    return 1 if problems else 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def cmd_submit(args) -> int:
    from jobs.submit import submit

    return submit(args.job, args.job_args, args.address, working_dir=args.working_dir, python=args.python,
                  tracking_uri=args.tracking_uri, wait=not args.no_wait, timeout=args.timeout)


def cmd_plan(args) -> int:
    import os

    import torch

    from adaptsym.planning.cost import PlanError, check_fits, format_plan, parse_devices, plan_json, predict
    from jobs.plan_sampler import measure_throughput, run_active_fractions

    cfg = load_config(args.config)
    kind, count = parse_devices(args.devices or f"cpu:{os.cpu_count() or 1}")
    actors = args.actors if args.actors else (count if kind == "cuda" else None)
    threads = max(1, count // actors) if kind == "cpu" and actors else (count if kind == "cpu" else 1)
    device = torch.device("cuda" if kind == "cuda" else "cpu")
    code = 0
    totals = {}
    for name in _models(cfg, args.model):
        tp = measure_throughput(cfg, name, device, threads, driver_modules=("mlflow",) + (("ray",) if actors else ()))
        fractions = None
        if args.run:
            run = Path(args.run) if len(cfg.models) == 1 else Path(args.run).parent / f"{cfg.name}-{name}"
            fractions = run_active_fractions(run, cfg, device)
        plan = predict(cfg.model_copy(update={"models": {name: cfg.models[name]}}), tp, kind, count, actors,
                       f"{Path(args.config).name} [{name}]", fractions)
        print(plan_json(plan, tp) if args.json else format_plan(plan, tp))
        totals[name] = plan.total_seconds
        try:
            check_fits(plan, actors or 0)
        except PlanError as exc:
            if not args.force:
                print(f"adaptsym: error: {exc}", file=sys.stderr)
                code = 2
    if len(totals) > 1 and not args.json:  # one after the other, as `jobs.scale_sweep` runs them
        print(f"total over {len(totals)} models: {sum(totals.values()):.0f} s "
              f"({sum(totals.values()) / 60:.1f} min), each with its own start-up")
    return code


def cmd_bench(args) -> int:
    from jobs.benchmark import main as bench_main

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adaptsym", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train and measure the demo config (what `make demo` runs)")
    d.add_argument("--config", default="configs/demo.yaml", help="run config, YAML (default configs/demo.yaml)")
    d.add_argument("--out", default="runs", help="root of the run directories and of mlflow.db (default runs)")
    d.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train the models of a config (resumes an interrupted run)")
    t.add_argument("--config", required=True, help="run config, YAML (required)")
    t.add_argument("--out", default="runs", help="root of the run directories and of mlflow.db (default runs)")
    t.add_argument("--model", default=None, help="one model of the config (default: all)")
    t.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (default: log)")
    t.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("measure", help="measure the observables at a run's checkpoints")
    m.add_argument("--run", required=True, help="run directory written by `adaptsym train`")
    m.add_argument("--config", default=None, help="config whose 'measure' section to use (default: the run's)")
    m.add_argument("--epochs", type=int, nargs="*", default=None, help="checkpoints to measure (default: all)")
    m.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (default: log)")
    m.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    m.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the tiles on Ray actors: a local cluster (no ADDRESS) or HOST:PORT of a running one")
    m.add_argument("--actors", type=positive_int, default=None, help="actors (default: one per GPU, else CPUs / threads)")
    m.add_argument("--threads-per-actor", type=positive_int, default=1, help="torch threads per actor (default 1)")
    m.add_argument("--force", action="store_true",
                   help="measure even when the arrays it must hold exceed the available memory (default: refuse)")
    m.add_argument("--overwrite", action="store_true",
                   help="replace finished measurements made with another measure config or checkpoint (default: refuse)")
    m.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster (default: all)")
    m.add_argument("--max-tile-retries", type=int, default=3,
                   help="tries of a failing tile before the measurement stops naming it (default 3)")
    m.set_defaults(func=cmd_measure)

    r = sub.add_parser("report", help="figures (PNG) and an HTML report from a run's zarr store")
    r.add_argument("run", help="run directory")
    r.add_argument("--no-mlflow", action="store_true", help="do not log the report as MLflow artifacts")
    r.set_defaults(func=cmd_report)

    v = sub.add_parser("verify", help="check a run's checkpoints and zarr chunks; exit 0 only if intact")
    v.add_argument("run", help="run directory")
    v.set_defaults(func=cmd_verify)

    from jobs.submit import JOBS

    j = sub.add_parser("submit", help=f"submit a job ({', '.join(JOBS)}) to a Ray cluster",
                       usage="adaptsym submit JOB [options] -- [the job's own arguments]")
    j.add_argument("job", choices=JOBS, help="the job to run: python -m jobs.JOB on the cluster")
    j.add_argument("--address", default="http://127.0.0.1:8265", help="the cluster's dashboard / Jobs API URL (default http://127.0.0.1:8265)")
    j.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory (default .)")
    j.add_argument("--python", default="python", help="the interpreter on the cluster (default python)")
    j.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for the job (default: $MLFLOW_TRACKING_URI)")
    j.add_argument("--no-wait", action="store_true", help="return after submitting (default: follow the logs)")
    j.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job (default 3600)")
    j.set_defaults(func=cmd_submit, job_args=[])

    pl = sub.add_parser("plan", help="predict a job's wall time and peak memory per process before running it",
                        description="Measures the configured model's throughputs here (under a minute) and predicts "
                                    "train + measure at every checkpoint: seconds per phase, peak RSS per process. "
                                    "Exits 2 when the processes would need more memory than is available.")
    pl.add_argument("config", help="run config, YAML")
    pl.add_argument("--devices", default=None, help="cpu:N or cuda:N (default: cpu:<all cores>)")
    pl.add_argument("--actors", type=positive_int, default=None,
                    help="Ray actors for measure --ray (default: in process on CPU, one per GPU on cuda)")
    pl.add_argument("--model", default=None, help="one model of the config (default: all)")
    pl.add_argument("--run", default=None,
                    help="a trained run of this config: use each checkpoint's measured fraction of active pool "
                         "examples instead of the initialisation's (plans the measurement after training)")
    pl.add_argument("--json", action="store_true", help="print the plan and the throughputs as JSON")
    pl.add_argument("--force", action="store_true", help="exit 0 even when the plan does not fit in memory")
    pl.set_defaults(func=cmd_plan)

    b = sub.add_parser("bench", help="side-by-side speed ratios as JSON (jobs/benchmark.py)",
                       usage="adaptsym bench [jobs.benchmark options: --vgg12, --ensemble, --ray, --models ...]",
                       description="Runs `python -m jobs.benchmark` with the arguments that follow; "
                                   "`python -m jobs.benchmark --help` lists them.")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to jobs.benchmark unchanged")
    b.set_defaults(func=cmd_bench)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """`submit`'s own options may come before or after the job name; the job's arguments follow `--`."""
    parser = build_parser()
    if argv[:1] == ["submit"]:
        cut = argv.index("--") if "--" in argv else len(argv)
        args, unknown = parser.parse_known_args(argv[:cut])
        if unknown:
            parser.error(f"submit: unrecognised options {unknown}; the job's own arguments go after `--`, e.g. "
                         "adaptsym submit measure --address URL -- --run runs/demo-cnn")
        args.job_args = argv[cut + 1 :]
        return args
    return parser.parse_args(argv)


class Terminated(BaseException):
    """SIGTERM (`kill`, `ray job stop`, a scheduler's preemption), raised in the main thread so that
    every `finally` runs: the run lock is released and finished work stays as it is."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _own_sigterm() -> None:
    """(Re)install the SIGTERM handler of `main` (in the main thread only)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


KEPT = ("finished work is kept (checkpoints, finished measurements and h tiles; a chunk cut short is "
        "found and recomputed): rerun the same command to resume")


def main(argv: list[str] | None = None) -> int:
    import errno
    import signal
    import threading

    args = parse(list(sys.argv[1:] if argv is None else argv))
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except UserFacingError as exc:
        print(f"adaptsym: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"adaptsym: stopped by SIGTERM; {KEPT}", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else (f" under {args.run}" if getattr(args, "run", None)
                                                                 else "")
        print(f"adaptsym: error: no space left on the device{where}; free space, then {KEPT}", file=sys.stderr)
        return 2
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())

"""Side-by-side speed ratios of the Hessian engine, printed as one JSON object.

    python -m jobs.benchmark [--config configs/demo.yaml] [--models mlp cnn] [--vgg12] [--ray]

Every ratio compares two timings taken in the same process, interleaved, as the minimum
over repeats after a warm-up. Absolute times are printed too but mean little on a CPU.

- hvp_over_grad: one pool HVP by the default method (through stored first-order graphs while
  they fit their budget) / one pool gradient; hvp_fwd_rev_over_grad: the same for
  forward-over-reverse, which recomputes the graph for every product.
- hvp_fwd_over_rev_vs_double_backward: forward-over-reverse HVP / double-backward HVP.
- per_example_entries_over_hvp: per-example entries h of |J| columns over n examples /
  |J| forward-over-reverse pool HVPs on the same n examples (the limit to aim at is about 1);
  per_example_entries_over_default_hvp: the same over default-method HVPs.
- seconds_per_example_column: per-example entries' seconds per example and column.
- peak_rss_mb (per model): this process's peak resident memory after the model's timings.
- bootstrap_reweight_speedup: B replicates recomputed directly / the reweighting path
  (per-example entries + one matrix product) at B=1000, s=64, n=1024. Ideal: B s / n
  divided by per_example_entries_over_hvp.
- slq_seconds_per_lanczos_step_over_hvp: one Lanczos step (default-method HVP + full
  reorthogonalisation against a float32 basis) / one HVP, from 16 steps (8 for vgg12; target <= 1.2).
- ray_two_actor_speedup (--ray): h-tile throughput of 2 actors over 1, torch threads 1 per
  actor, on a local 2-CPU cluster (target >= 1.6).
- ray_overhead_fraction (--ray): 1 - actor compute time / (actors x wall time) of the distributed
  Hessian-entry measurement of the demo model (tiles + statistics; target <= 0.15).
- multinode_overhead_fraction (--multinode): the h tiles on 2 nodes with 1 actor each over 1 node
  with 2 actors, minus 1, on a local cluster of worker raylets (target <= 0.15).
- ensemble (--ensemble): binary-network training for the effective model, the demo config's
  `under` scenario: accepted configurations per second per actor with 1 and with 2 Ray actors
  (one thread each) on the same tasks, and ensemble_two_actor_speedup (2-actor over 1-actor
  throughput; the ideal on 2 cores is 2).
- measure_peak_rss_mb: peak resident memory of `measure` on the demo config (one checkpoint,
  in a child process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _timer(fn, repeats: int):
    fn()  # warm-up
    best = np.inf
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def side_by_side(fns: dict, repeats: int = 5) -> dict:
    """Minimum time of each function, measured interleaved."""
    for f in fns.values():
        f()
    best = {k: np.inf for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            best[k] = min(best[k], _timer(f, 1))
    return best


def bench_model(model, x, y, n_cols: int, n_rows: int, example_chunk: int, column_chunk: int,
                boot_cols: int, B: int, s: int, repeats: int, steps: int = 16) -> dict:
    from adaptsym.curvature.identities import replicates_direct
    from adaptsym.stats.bootstrap import multinomial_counts, replicates
    from adaptsym.curvature.entries import block_design
    from adaptsym.curvature.hvp import PoolHessian
    from adaptsym.curvature.per_example import design_entries
    from adaptsym.observables.spectrum import lanczos

    rng = np.random.default_rng(0)
    op = PoolHessian(model.plan, model.params(), x, y, method="fwd-rev")
    gop = PoolHessian(model.plan, model.params(), x, y)  # the default: stored graphs while they fit
    dbl = PoolHessian(model.plan, model.params(), x, y, method="double-backward")
    design = block_design(model.index, n_rows, n_cols, rng)
    flat = torch.randn(model.n_params, dtype=x.dtype, device=x.device)
    t = side_by_side({
        "matvec": lambda: gop.matvec(flat),
        "lanczos_step": lambda: lanczos(gop.matvec, flat, steps, basis_dtype=torch.float32),
        "grad": lambda: op.gradient(),
        "hvp": lambda: op.matvec(flat),
        "hvp_default": lambda: gop.matvec(flat),
        "hvp_double_backward": lambda: dbl.matvec(flat),
        "J_hvps": lambda: op.columns(design.cols, per_pass=1),  # J products of one vector each
        "per_example": lambda: design_entries(model.plan, model.params(), x, y, design, example_chunk, column_chunk),
    }, repeats)
    per_ex = t["per_example"] / t["J_hvps"]
    out = {
        "n_params": model.n_params, "n_pool": len(x), "n_active": op.n_active, "cols": n_cols, "rows": n_rows,
        "hvp_method_default": gop.method, "graph_mb": gop.graph_bytes / 2**20,
        "hvp_over_grad": t["hvp_default"] / t["grad"],
        "hvp_fwd_rev_over_grad": t["hvp"] / t["grad"],
        "hvp_fwd_over_rev_vs_double_backward": t["hvp"] / t["hvp_double_backward"],
        "per_example_entries_over_hvp": per_ex,
        "per_example_entries_over_default_hvp": t["per_example"] / (n_cols * t["hvp_default"]),
        "seconds_per_example_column": t["per_example"] / (len(x) * n_cols),
        "slq_seconds_per_lanczos_step_over_hvp": t["lanczos_step"] / steps / t["matvec"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": {k: float(v) for k, v in t.items()},
    }
    if B == 0:
        return out
    # bootstrap: reweighting vs direct recomputation, on a smaller design (direct is slow)
    bdesign = block_design(model.index, n_rows, boot_cols, rng)
    counts = multinomial_counts(len(x), s, B, rng)
    tb = side_by_side({
        "reweight": lambda: replicates(design_entries(model.plan, model.params(), x, y, bdesign, example_chunk,
                                                      column_chunk), counts, s),
        "direct": lambda: replicates_direct(model.plan, model.params(), x, y, bdesign.rows, bdesign.cols,
                                            bdesign.row_pos, bdesign.col_pos, counts),
    }, repeats=1)
    out.update(bootstrap_reweight_speedup=tb["direct"] / tb["reweight"], bootstrap_reweight_ideal=B * s / len(x) / per_ex)
    out["seconds"].update({k: float(v) for k, v in tb.items()})
    return out


def bench_ray(cfg, data, model_name: str, n_pool: int) -> dict:
    """Tile throughput of 2 actors over 1 (torch threads 1 per actor), and the fraction of the
    distributed Hessian-entry measurement's wall time spent outside actor computation."""
    from adaptsym.curvature.entries import make_design
    from adaptsym.observables.entry_blocks import EntryWork
    from adaptsym.observables.hessian_entries import analyse, compute_h, prepare
    from adaptsym.nets.models import BiasFreeNet
    from adaptsym.storage.store import RunStore
    from services.cluster import connect
    from services.executor import RayExecutor

    connect(None, num_cpus=2, num_gpus=0)
    mcfg = cfg.measure.model_copy(update={"example_chunk": 128})  # 16 tiles: less end-of-run imbalance
    model = BiasFreeNet(cfg.models[model_name], data.input_shape, seed=cfg.seed, dtype=torch.float64)
    x, y = data.x_train[:n_pool].double(), data.y_train[:n_pool].double()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "bench.zarr")

        def work(tag):
            return EntryWork(store_path=str(store.path), group=f"{tag}/hessian_entries",
                             design=make_design(mcfg.hessian_entries.design, model.index, cfg.seed), mcfg=mcfg,
                             s=mcfg.hessian_entries.minibatch or cfg.train.batch_size, seed=cfg.seed, epoch=0,
                             model_spec=cfg.models[model_name].model_dump(mode="json"), input_shape=data.input_shape,
                             weights=[w.detach() for w in model.params()], x=x, y=y)

        times = {}
        for n_act in (1, 2, 1, 2, 1, 2):  # interleaved, best of three
            ex = RayExecutor(n_actors=n_act, threads_per_actor=1)
            w = work(f"a{n_act}_{len(times)}_{time.perf_counter_ns()}")
            prepare(store, w)
            ex.run(w, w.tiles()[:n_act], lambda t, r: None)  # warm every actor (imports, model)
            t0 = time.perf_counter()
            compute_h(store, w, ex)
            times[n_act] = min(times.get(n_act, np.inf), time.perf_counter() - t0)
            ex.close()
        out["ray_two_actor_speedup"] = times[1] / times[2]
        ex = RayExecutor(n_actors=2, threads_per_actor=1)
        w = work("overhead")
        prepare(store, w)
        ex.run(w, w.tiles()[:2], lambda t, r: None)
        ex.busy_seconds = 0.0
        t0 = time.perf_counter()
        compute_h(store, w, ex)
        t_h = time.perf_counter() - t0
        busy_h = ex.busy_seconds
        analyse(store, w, ex, model.n_params)
        total = time.perf_counter() - t0
        out["ray_actor_peak_rss_mb"] = max(i["peak_rss_mb"] for i in ex.info())
        ex.close()
        out["ray_overhead_fraction"] = 1 - ex.busy_seconds / (2 * total)
        out["ray_overhead_fraction_h_tiles"] = 1 - busy_h / (2 * t_h)
        out["ray_tiles"] = len(w.tiles())
        out["ray_seconds"] = {"one_actor": times[1], "two_actors": times[2], "measure_hessian_entries": total}
    return out


def bench_multinode(cfg, data, model_name: str, n_pool: int, rounds: int = 3) -> dict:
    """The h tiles of one measurement on 1 node with 2 actors against 2 nodes with 1 actor each,
    on one local cluster of three worker raylets (`services.local_cluster`): a 2-CPU node and two
    1-CPU nodes, each actor pinned by a custom resource; interleaved, best of `rounds`.
    multinode_overhead_fraction = t(2 nodes) / t(1 node) - 1."""
    import ray

    from adaptsym.curvature.entries import make_design
    from adaptsym.nets.models import BiasFreeNet
    from adaptsym.observables.entry_blocks import EntryWork
    from adaptsym.observables.hessian_entries import compute_h, prepare
    from adaptsym.storage.store import RunStore
    from services.cluster import connect, shutdown
    from services.executor import RayExecutor
    from services.local_cluster import start_cluster

    shutdown()
    mcfg = cfg.measure.model_copy(update={"example_chunk": 128})
    model = BiasFreeNet(cfg.models[model_name], data.input_shape, seed=cfg.seed, dtype=torch.float64)
    x, y = data.x_train[:n_pool].double(), data.y_train[:n_pool].double()
    times: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp))
        try:
            connect(cluster.address)
            cluster.add_worker("single", cpus=2, gpus=0)
            cluster.add_worker("pair_a", cpus=1, gpus=0)
            cluster.add_worker("pair_b", cpus=1, gpus=0)
            store = RunStore(Path(tmp) / "bench.zarr")
            for r in range(rounds):
                for layout, placement in (("one_node_two_actors", [{"single": 0.5}]),
                                          ("two_nodes_one_actor_each", [{"pair_a": 1}, {"pair_b": 1}])):
                    ex = RayExecutor(n_actors=2 if len(placement) == 1 else 1, threads_per_actor=1,
                                     actor_resources=placement[0])
                    if len(placement) == 2:  # one actor on each of the two nodes
                        other = RayExecutor(n_actors=1, threads_per_actor=1, actor_resources=placement[1])
                        ex.actors += other.actors
                        ex.nodes += other.nodes
                    assert len(set(ex.nodes)) == len(placement), ex.nodes
                    w = EntryWork(store_path=str(store.path), group=f"{layout}_{r}/hessian_entries",
                                  design=make_design(mcfg.hessian_entries.design, model.index, cfg.seed), mcfg=mcfg,
                                  s=mcfg.hessian_entries.minibatch or cfg.train.batch_size, seed=cfg.seed, epoch=0,
                                  model_spec=cfg.models[model_name].model_dump(mode="json"),
                                  input_shape=data.input_shape, weights=[w.detach() for w in model.params()], x=x, y=y)
                    prepare(store, w)
                    ex.run(w, w.tiles()[:2], lambda t, res: None)  # warm both actors
                    t0 = time.perf_counter()
                    compute_h(store, w, ex)
                    times[layout] = min(times.get(layout, np.inf), time.perf_counter() - t0)
                    ex.close()
        finally:
            ray.shutdown()
            cluster.stop()
    return {"multinode_overhead_fraction": times["two_nodes_one_actor_each"] / times["one_node_two_actors"] - 1,
            "multinode_seconds": times, "multinode_rounds": rounds}


def bench_ensemble(config: Path, tasks: int) -> dict:
    """Ensemble-collection throughput with 1 and 2 actors, the same `tasks` tasks each."""
    from services.cluster import connect, shutdown  # first: it sets RAY_AUTH_MODE=token before Ray loads

    import ray
    from adaptsym.effective.config import load_effective_config
    from adaptsym.effective.data import scenario_data
    from services.ensemble import RayTaskRunner

    cfg = load_effective_config(config)
    scenario = next(iter(cfg.scenarios))
    spec, data = cfg.network_of(scenario).spec(), scenario_data(cfg, scenario)
    threshold, batch = cfg.scenarios[scenario].threshold, cfg.collect.batch
    connect(None, num_cpus=2, num_gpus=0)
    out = {"scenario": scenario, "tasks": tasks, "networks_per_task": batch, "n_weights": spec.n_weights}
    try:
        for actors in (1, 2):
            runner = RayTaskRunner(actors, in_flight=2)
            warm = [ray.put(data)]  # every actor trains a tiny task first: started and warmed before the clock
            ray.get([a.train.remote("warm", warm, dataclasses.replace(spec, epochs=1), cfg.seed, 0, 4, threshold)
                     for a in runner.actors])
            t0 = time.perf_counter()
            gen = runner.results(f"bench{actors}", data, spec, cfg.seed, batch, threshold, 0)
            passed = sum(int(next(gen).passed.sum()) for _ in range(tasks))
            wall = time.perf_counter() - t0
            gen.close()
            runner.close()
            out[f"actors_{actors}"] = {"seconds": wall, "configurations": passed,
                                       "configs_per_s": passed / wall, "configs_per_s_per_actor": passed / wall / actors}
    finally:
        shutdown()
    out["ensemble_two_actor_speedup"] = out["actors_2"]["configs_per_s"] / out["actors_1"]["configs_per_s"]
    return out


def measure_peak_rss_mb(config: Path) -> float:
    """Peak RSS of `adaptsym measure` on one (initial) checkpoint of `config`, in a child process."""
    from adaptsym.config import load_config

    cfg = load_config(config)
    name = cfg.model_names()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        code = (
            "import sys; from adaptsym.config import load_config; from adaptsym.train import train; "
            "from adaptsym.measure import measure_run; "
            f"cfg = load_config({str(config)!r}); cfg.train.checkpoints = [0]; cfg.train.epochs = 0; "
            f"r = train(cfg, {name!r}, {tmp!r}, progress=False); measure_run(r.run_dir, cfg=cfg, progress=False)"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--n", type=int, default=1024, help="pool examples")
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--boot-cols", type=int, default=2)
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--s", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--vgg12", action="store_true", help="also vgg12 at full width on random CIFAR-shaped data")
    p.add_argument("--vgg12-n", type=int, default=None, help="vgg12 pool examples (default 32 on CPU, 256 on CUDA)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--ray", action="store_true", help="also the Ray ratios (a local 2-CPU cluster)")
    p.add_argument("--ray-model", default="cnn")
    p.add_argument("--multinode", action="store_true",
                   help="also 1 node x 2 actors against 2 nodes x 1 actor (a local multi-raylet cluster)")
    p.add_argument("--ensemble", action="store_true",
                   help="only the effective-model ensemble throughput, 1 and 2 Ray actors (JSON)")
    p.add_argument("--ensemble-config", default=str(ROOT / "configs/effective-model-demo.yaml"))
    p.add_argument("--ensemble-tasks", type=int, default=4, help="tasks timed per actor count (default 4)")
    args = p.parse_args(argv)
    if args.ensemble:
        print(json.dumps({"ensemble": bench_ensemble(Path(args.ensemble_config), args.ensemble_tasks)}, indent=2))
        return 0

    from adaptsym.config import ModelSpec, load_config
    from adaptsym.nets.data import load_dataset
    from adaptsym.nets.models import BiasFreeNet
    from adaptsym.storage.provenance import resolve_device
    from adaptsym.util import torch_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    device = resolve_device(cfg.device)
    mcfg = cfg.measure
    data = load_dataset(cfg.data, cfg.seed)
    x = data.x_train[: args.n].to(device, torch_dtype(mcfg.dtype))
    y = data.y_train[: args.n].to(x)
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "B": args.replicates, "s": args.s, "models": {}}
    for name in args.models or cfg.model_names():
        model = BiasFreeNet(cfg.models[name], data.input_shape, seed=cfg.seed, dtype=x.dtype).to(device)
        out["models"][name] = bench_model(model, x, y, args.cols, args.rows, mcfg.example_chunk, mcfg.hessian_entries.column_chunk,
                                          args.boot_cols, args.replicates, args.s, args.repeats)
    if args.vgg12:
        # full width on CIFAR-shaped random data (all examples active: the costliest case); sized
        # to stay under 15 minutes on 2 CPU cores: 32 examples, 2 columns, 8 Lanczos steps, no
        # direct bootstrap (the demo models measure that ratio)
        n = args.vgg12_n or (256 if device.type == "cuda" else 32)
        model = BiasFreeNet(ModelSpec(kind="vgg12"), (3, 32, 32), seed=0).to(device)
        g = torch.Generator().manual_seed(0)
        gx = torch.randn(n, 3, 32, 32, generator=g).to(device)
        gy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(device)
        gy = torch.where(model(gx).detach() >= 0, -1.0, 1.0)  # margins < 1: every example active
        out["models"]["vgg12"] = bench_model(model, gx, gy, 2, 256, min(n, 128), 2, 1, 0, 32, 2, steps=8)
    if args.ray:
        out["ray"] = bench_ray(cfg, data, args.ray_model, min(args.n, cfg.measure.pool_size))
    if args.multinode:
        out.setdefault("ray", {}).update(bench_multinode(cfg, data, args.ray_model, min(args.n, cfg.measure.pool_size)))
    if not args.skip_memory:
        out["measure_peak_rss_mb"] = measure_peak_rss_mb(Path(args.config))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`adaptsym plan CONFIG`: the predicted wall time and peak memory of a whole job, before it runs.

A job is `adaptsym train` (single process, all threads) followed by `adaptsym measure` at every
checkpoint, in process or over K actors (`--ray`). The prediction is arithmetic on throughputs
measured here, in well under a minute, on the configured model, data, dtype and device:

- per example: an SGD step, a forward pass, a gradient, a pool HVP through the stored first-order
  graph and one by forward-over-reverse, and the graph's saved bytes;
- per example-column: one real h tile (`per_example.design_tile`) of the configured design;
- the statistics' kernels at the configured sizes (bootstrap reweighting B x n x K, the K x K
  correlation products), weight histograms and sampled circuits;
- the resident memory of a fresh interpreter with torch and adaptsym imported.

Cost model (n pool examples, a of them active, N weights, K entries, |J| columns, K actors):
  train     = epochs x (n_train x (sgd + gradient) + (n_train + n_test) x forward)
  entries   = a x |J| x tile / K                      (examples with margin > 1 are skipped)
  spectrum  = starts x steps x (a x hvp / K + reorthogonalisation + K vector transfers)
  gradients = a x gradient / K;  statistics, histograms, circuits as measured
plus a fixed start-up and per-checkpoint overhead. The active fraction is the one measured at the
initialisation; later checkpoints usually have fewer active examples, so the prediction is an
upper bound there. Peak memory per process is the interpreter's plus the counted arrays: weight
copies, data, the Lanczos basis (up to its budget), graphs (up to their budget), one tile.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import RunConfig
from .errors import UserFacingError
from .util import torch_dtype
from .nets.checkpoint import load_checkpoint, model_from_checkpoint
from .observables.circuits import measure_circuits
from .config import DataSpec, ModelSpec
from .nets.data import DataError, load_dataset
from .curvature.entries import make_design
from .observables.entry_blocks import EntryWork
from .observables.executor import LocalExecutor
from .observables.hessian_entries import analyse, compute_h, prepare
from .curvature.hvp import PoolHessian, SavedBytes, active_examples
from .measure import available_epochs, select_pool
from .nets.models import BiasFreeNet
from .curvature.per_example import design_tile
from .storage.store import RunStore
from .observables.weights import measure_weights

STARTUP_S = 8.0  # interpreter, imports, store and tracker set-up (measured on the demo: 5-10 s)
RAY_STARTUP_S = 12.0  # a local Ray head and K actors (measured: 10-15 s)
CHECKPOINT_OVERHEAD_S = 0.5  # per checkpoint: load, hash, zarr writes of the small observables (demo: 0.4 s)
RAY_WORKER_EXTRA_MB = 150.0  # a Ray worker process over a plain interpreter (measured: 120-180 MB)


class PlanError(UserFacingError, ValueError):
    """A plan that cannot be made (devices this machine lacks) or that does not fit."""


def parse_devices(spec: str) -> tuple[str, int]:
    """'cpu:2' -> ('cpu', 2), 'cuda:8' -> ('cuda', 8); `cuda` needs a CUDA device here."""
    kind, _, count = spec.partition(":")
    if kind not in ("cpu", "cuda") or not count.isdigit() or int(count) < 1:
        raise PlanError(f"--devices must look like cpu:2 or cuda:8, got {spec!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PlanError(f"--devices {spec}: torch sees no CUDA device on this machine; plan for cpu:N here, or run "
                        "plan on a GPU machine")
    return kind, int(count)


@dataclass
class Throughput:
    """Seconds per unit and bytes per unit, measured here for one model (`measure_throughput`)."""

    device: str
    threads: int
    n_params: int
    itemsize: int
    active_fraction: float
    sgd_s: float  # per example
    forward_s: float
    gradient_s: float  # pool gradient per example, at the workers' thread count
    train_gradient_s: float  # the epoch's full-gradient metric per example, at all threads
    activation_bytes: float  # saved tensors of one example's backward pass
    hvp_graph_s: float
    hvp_fwdrev_s: float
    graph_bytes: float  # per example
    tile_s: float  # per example-column
    tile_peak_mb: float  # peak memory of a tile, per example (slope between two tile sizes)
    tile_fixed_mb: float  # and its part that does not grow with the examples
    histogram_s: float  # weights + gradients histograms, per checkpoint
    circuits_s: float  # per checkpoint
    statistics_s: float  # per checkpoint
    vector_s: float  # one pass over an N-vector (reorthogonalisation and transfer unit)
    data_s: float
    data_mb: float
    n_train: int
    n_test: int
    base_rss_mb: float  # a worker: torch, zarr, scipy, adaptsym
    driver_base_rss_mb: float  # the driver: the same plus `driver_modules` (MLflow, Ray)
    seconds: float = 0.0  # how long the measurement took
    note: str = ""  # e.g. a stand-in data set


@dataclass
class Plan:
    config: str
    devices: str
    actors: int
    seconds: dict = field(default_factory=dict)
    peak_rss_mb: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


def _best(fn, repeats: int = 2) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    best = math.inf
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def interpreter_rss_mb(extra: tuple[str, ...] = ()) -> float:
    """Resident memory of a fresh interpreter that imports what a measuring process imports, and
    the modules `extra`. (VmRSS, not ru_maxrss: Linux carries the forking parent's peak into the child.)"""
    code = ("import torch, zarr, numpy, scipy.stats; import adaptsym.measure; "
            + "".join(f"import {m}; " for m in extra)
            + "print([int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmRSS')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return float(out.stdout.strip().splitlines()[-1])


def measure_throughput(cfg: RunConfig, model_name: str, device: torch.device, threads: int,
                       sample: int = 8, cheap_s: float = 0.05, driver_modules: tuple[str, ...] = ("mlflow",)
                       ) -> Throughput:
    """Time the job's kernels on the configured data and model: on `sample` examples when a
    gradient over them takes more than `cheap_s` (large models, where cost is linear in the
    examples), else on the batch sizes the job uses (small models, where per-call overhead counts)."""

    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    mc = cfg.measure
    dtype = torch_dtype(mc.dtype)
    t0 = time.perf_counter()
    note, sizes = "", None
    try:
        data = load_dataset(cfg.data, cfg.seed)
    except DataError:
        if cfg.data.name != "cifar10-binary":
            raise
        # no local CIFAR-10: time the kernels on photo-patches (the same 3x32x32 shape) and count
        # CIFAR-10's 50,000 / 10,000 examples (or the configured subsets)
        data = load_dataset(DataSpec(name="photo-patches", patches={"n_samples": 2048}), cfg.seed)
        sizes = (cfg.data.n_train or 50_000, cfg.data.n_test or 10_000)
        note = ("CIFAR-10 is not here: kernels timed on photo-patches (same 3x32x32 shape), with CIFAR-10's "
                f"{sizes[0]:,} training and {sizes[1]:,} test examples")
    data_s = time.perf_counter() - t0
    data_mb = (data.x_train.nbytes + data.x_test.nbytes) / 2**20 * (sizes[0] / len(data.x_train) if sizes else 1)
    model = BiasFreeNet(cfg.models[model_name], data.input_shape, seed=cfg.seed, dtype=torch.float32).to(device)
    xs, ys = data.x_train.to(device), data.y_train.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)

    def sgd(b):
        opt.zero_grad(set_to_none=True)
        torch.clamp(1.0 - ys[:b] * model(xs[:b]), min=0).mean().backward()
        opt.step()

    b = min(sample, len(xs))
    with SavedBytes(exclude=list(model.parameters())) as counter:
        sgd(b)
    activation_bytes = counter.total / b
    probe = _best(lambda: sgd(b), 1)
    large = probe > cheap_s
    bt = b if large else min(cfg.train.batch_size, len(xs))
    sgd_s = (probe if large else _best(lambda: sgd(bt))) / bt
    be = b if large else min(1024, len(xs))  # evaluation and the epoch's full gradient use big chunks
    with torch.no_grad():
        forward_s = _best(lambda: model(xs[:be])) / be

    def full_grad():
        torch.autograd.grad(torch.clamp(1.0 - ys[:be] * model(xs[:be]), min=0).sum(), list(model.parameters()))

    train_gradient_s = _best(full_grad) / be
    model = BiasFreeNet(cfg.models[model_name], data.input_shape, seed=cfg.seed, dtype=dtype).to(device)
    px, py = select_pool(data.x_train.to(device, dtype), data.y_train.to(device, dtype), min(mc.pool_size,
                         len(data.x_train)), cfg.seed)
    active = len(active_examples(model.plan, model.params(), px, py, mc.example_chunk)) / len(px)
    b = b if large else min(mc.example_chunk, len(px))
    xb, yb = px[:b], py[:b]
    torch.set_num_threads(threads)  # worker-side kernels at the workers' thread count
    # only active examples cost: time on a batch made all active (the margin test is part of it)
    yb = torch.where(model(xb).detach() >= 0, -1.0, 1.0).to(dtype)  # wrong side of 0: margin < 1
    op = PoolHessian(model.plan, model.params(), xb, yb, method="fwd-rev")
    gradient_s = _best(op.gradient) / b
    v = torch.randn(op.n_params, dtype=dtype, device=device)
    hvp_fwdrev_s = _best(lambda: op.matvec(v)) / b
    design = make_design(mc.hessian_entries.design, model.index, cfg.seed)
    ea = min(design.entry_chunk(mc.hessian_entries.column_chunk), design.n_entries)
    cols = max(1, mc.hessian_entries.column_chunk if design.kind == "block" else ea)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tile = lambda m: design_tile(model.plan, model.params(), model.index, design, xb[:m], yb[:m], 0, ea)
    b1 = max(1, b // 2)
    rss0 = peak()
    tile(b1)  # ru_maxrss only grows: the smaller tile first, then the larger one
    d1 = peak() - rss0
    tile_s = _best(lambda: tile(b)) / (b * cols)
    d2 = peak() - rss0
    tile_peak_mb = max(d2 - d1, 0.0) / max(1, b - b1) if b > b1 else d2 / b
    tile_fixed_mb = max(0.0, d1 - tile_peak_mb * b1)
    graph = PoolHessian(model.plan, model.params(), xb, yb, method="graph")
    t0 = time.perf_counter()
    graph.matvec(v)
    build = time.perf_counter() - t0
    hvp_graph_s = _best(lambda: graph.matvec(v)) / b
    graph_bytes = graph.graph_bytes / b
    hvp_graph_s += build / b / max(1, mc.spectrum.steps * mc.spectrum.starts)  # the one build, spread
    del graph
    torch.set_num_threads(old_threads)
    histogram_s = 2 * _best(lambda: measure_weights(model.params(), mc.histogram_bins), 1)
    ce = max(1, min(2, mc.circuits.examples))
    circuits_s = _best(lambda: measure_circuits(model.plan, model.params(), px[:ce], py[:ce], ce, mc.circuits.paths,
                                                cfg.seed, 0), 1) * mc.circuits.examples / ce
    statistics_s = statistics_seconds(cfg, px, py, device)
    big = torch.randn(model.n_params, dtype=torch.float64)
    vector_s = _best(lambda: (big * 1.0001).sum(), 3)
    n_train, n_test = sizes if sizes else (len(data.x_train), len(data.x_test))
    return Throughput(str(device), threads, model.n_params, torch.empty(0, dtype=dtype).element_size(), active,
                      sgd_s, forward_s, gradient_s, train_gradient_s, activation_bytes, hvp_graph_s, hvp_fwdrev_s,
                      graph_bytes, tile_s, tile_peak_mb, tile_fixed_mb, histogram_s, circuits_s, statistics_s, vector_s, data_s,
                      data_mb, n_train, n_test, interpreter_rss_mb(), interpreter_rss_mb(driver_modules),
                      time.perf_counter() - t_start, note)


def statistics_seconds(cfg: RunConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """The Hessian-entry statistics (`hessian_entries.analyse`: bootstrap, per-entry moments,
    correlations, co-moments, Mardia, zarr writes) run for real at the configured pool size and
    design, on a stand-in MLP (64-64 hidden units) over the flattened pool: their cost depends
    on n, K and B, not on the network, which is timed separately per h tile."""

    mc = cfg.measure
    flat = x.reshape(len(x), -1)
    spec = ModelSpec(kind="mlp", hidden=[64, 64])
    model = BiasFreeNet(spec, (flat.shape[1],), seed=cfg.seed, dtype=x.dtype).to(device)
    y = torch.where(model(flat).detach() >= 0, -1.0, 1.0).to(x.dtype)  # all active, like a young network
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "plan.zarr")
        work = EntryWork(store_path=str(store.path), group="plan/hessian_entries",
                         design=make_design(mc.hessian_entries.design, model.index, cfg.seed), mcfg=mc,
                         s=mc.hessian_entries.minibatch or cfg.train.batch_size, seed=cfg.seed, epoch=0,
                         model_spec=spec.model_dump(mode="json"), input_shape=(flat.shape[1],),
                         weights=[w.detach().cpu() for w in model.params()], x=flat.cpu(), y=y.cpu())
        ex = LocalExecutor(device)
        prepare(store, work)
        compute_h(store, work, ex, log=lambda *_: None)
        t0 = time.perf_counter()
        analyse(store, work, ex, model.n_params)
        return time.perf_counter() - t0


def predict(cfg: RunConfig, tp: Throughput, kind: str, devices: int, actors: int | None,
            config_name: str = "", active_fractions: list[float] | None = None) -> Plan:
    """The job's wall time per phase and peak RSS per process, from measured throughputs.
    `active_fractions` (one per measured checkpoint, from `run_active_fractions`) replace the
    initialisation's fraction, which is otherwise assumed at every checkpoint."""
    mc, tc = cfg.measure, cfg.train
    ray = actors is not None
    k = actors if ray else 1
    plan = Plan(config_name or cfg.name, f"{kind}:{devices}", k)
    n_models = len(cfg.models)
    n_train, n_test = tp.n_train, tp.n_test
    ckpts = len(mc.checkpoints) if mc.checkpoints is not None else len(tc.checkpoints)
    fractions = active_fractions if active_fractions is not None else [tp.active_fraction] * ckpts
    n = mc.pool_size
    d = mc.hessian_entries.design
    J = d.cols if d.kind == "block" else d.n_pairs
    steps, starts = mc.spectrum.steps, mc.spectrum.starts
    want = set(mc.observables)
    s = plan.seconds
    s["startup"] = STARTUP_S + tp.data_s + (RAY_STARTUP_S if ray else 0.0)
    per_epoch = n_train * (tp.sgd_s + tp.train_gradient_s) + (n_train + n_test) * tp.forward_s
    s["train"] = n_models * ((tc.epochs + 1) * per_epoch - n_train * tp.sgd_s)  # epoch 0: metrics only
    budget = mc.hvp_graph_budget_mb * 2**20
    graph_peak = 0.0
    for f in fractions:
        a = max(1.0, f * n)
        graph = a / k * tp.graph_bytes
        hvp = tp.hvp_graph_s if graph <= budget else tp.hvp_fwdrev_s
        graph_peak = max(graph_peak, graph if graph <= budget else 0.0)
        part = {"overhead": CHECKPOINT_OVERHEAD_S}
        if "weights" in want or "gradients" in want:
            part["weights+gradients"] = tp.histogram_s + (a * tp.gradient_s / k if "gradients" in want else 0.0)
        if "hessian_entries" in want:
            part["hessian_entries"] = a * J * tp.tile_s / k + tp.statistics_s
        if "spectrum" in want:
            in_ram = mc.spectrum.basis_budget_mb * 2**20 / (tp.n_params * 4)
            spilled = max(0.0, steps - in_ram)  # rows on disk by the last step
            # one Gram-Schmidt pass reads the basis twice (about half of it on average over the steps),
            # and rows on disk cost a read each time (about one more vector pass)
            reorth = 2 * (1 + steps) / 2 * tp.vector_s + 2 * spilled * spilled / (2 * steps) * tp.vector_s
            part["spectrum"] = starts * steps * (a * hvp / k + reorth + (3 * k * tp.vector_s if ray else 0.0))
        if "circuits" in want:
            part["circuits"] = tp.circuits_s
        for key, val in part.items():
            s[f"measure.{key}"] = s.get(f"measure.{key}", 0.0) + n_models * val
    # peak memory: the counted arrays over a fresh interpreter's RSS
    counted = counted_arrays_mb(cfg, tp.n_params, actors)
    vec_mb = tp.n_params * tp.itemsize / 2**20
    tile_mb = tp.tile_fixed_mb + tp.tile_peak_mb * min(mc.example_chunk, n)
    graph_mb = graph_peak / 2**20 + (vec_mb if graph_peak else 0.0)
    driver = tp.driver_base_rss_mb + 3 * tp.data_mb + counted["driver"]
    if ray:
        plan.peak_rss_mb["driver"] = driver
        plan.peak_rss_mb["actor"] = tp.base_rss_mb + RAY_WORKER_EXTRA_MB + counted["actor"] + max(tile_mb, graph_mb)
    else:
        plan.peak_rss_mb["driver"] = driver + max(tile_mb, graph_mb)
    plan.peak_rss_mb["train"] = (tp.driver_base_rss_mb + 3 * tp.data_mb + 5 * tp.n_params * 4 / 2**20
                                 + tp.activation_bytes * min(4096, n_train) / 2**20)
    if active_fractions is None:
        plan.notes.append(f"active fraction {tp.active_fraction:.2f} measured at initialisation, assumed at every "
                          "checkpoint (an upper bound once margins grow; `--run` measures them per checkpoint)")
    else:
        plan.notes.append("active fractions per checkpoint, measured on the run's checkpoints: "
                          + ", ".join(f"{f:.2f}" for f in active_fractions))
    if tp.note:
        plan.notes.append(tp.note)
    if kind == "cuda" and devices > 1:
        plan.notes.append(f"an extrapolation: throughputs measured on one {tp.device} device, assumed on each of "
                          f"{devices}, with actor work divided evenly")
    plan.notes.append(f"pool HVPs: at most {graph_peak / 2**20:.0f} MB of stored graph per process "
                      f"(budget {mc.hvp_graph_budget_mb:.0f} MB; above it, recomputed by fwd-rev)")
    return plan


def counted_arrays_mb(cfg: RunConfig, n_params: int, actors: int | None) -> dict[str, float]:
    """MB of the arrays a measurement of `cfg` holds per process, from the config and N alone:
    weights (model, checkpoint, work and shard copies; two checkpoints overlap while the next one
    loads), the Lanczos basis up to its budget, work vectors, h and the bootstrap statistics.
    `predict` adds the interpreter, the data and the measured tile workspace; without them this
    is a floor under each process's peak, known before anything runs."""
    mc = cfg.measure
    d = mc.hessian_entries.design
    K = d.rows * d.cols if d.kind == "block" else d.n_pairs
    w_mb = n_params * (4 if mc.dtype == "float32" else 8) / 2**20
    basis = (min(mc.spectrum.steps * n_params * 4, mc.spectrum.basis_budget_mb * 2**20) / 2**20
             if "spectrum" in mc.observables else 0.0)
    h_mb = mc.pool_size * K * 8 / 2**20
    stats_mb = 3 * mc.hessian_entries.replicates * min(K, 1024) * 8 / 2**20 + 2 * h_mb
    copies = 2 * (3 + (actors + 1 if actors is not None else 0))
    out = {"driver": copies * w_mb + basis + 12 * w_mb + stats_mb}
    if actors is not None:
        out["actor"] = 6 * w_mb + stats_mb
    return out


def check_memory_floor(cfg: RunConfig, n_params: int, actors: int | None, actors_here: bool = True) -> None:
    """Refuse, before any work, a measurement whose counted arrays alone (`counted_arrays_mb`)
    exceed the memory this machine has available (the actors' counted only when `actors_here`)."""
    c = counted_arrays_mb(cfg, n_params, actors)
    actors = actors if actors_here else None
    need = c["driver"] + (actors or 0) * c.get("actor", 0.0)
    have = available_memory_mb()
    if need > have:
        raise PlanError(f"this measurement holds at least {need:,.0f} MB of arrays (driver {c['driver']:,.0f} MB"
                        + (f" + {actors} actors x {c['actor']:,.0f} MB" if actors else "")
                        + f", N = {n_params:,}) but this machine has {have:,.0f} MB available; lower "
                        "measure.hessian_entries.replicates, the design, measure.pool_size or "
                        "spectrum.basis_budget_mb (`adaptsym plan` predicts the whole peak), or pass --force")


def run_active_fractions(run_dir, cfg: RunConfig, device: torch.device) -> list[float]:
    """The fraction of the measurement pool with margin <= 1 at each checkpoint of a trained run
    (the checkpoints `measure` would measure), from one forward pass each."""

    run_dir = Path(run_dir)
    mc = cfg.measure
    dtype = torch_dtype(mc.dtype)
    data = load_dataset(cfg.data, cfg.seed)
    x, y = select_pool(data.x_train.to(device, dtype), data.y_train.to(device, dtype), mc.pool_size, cfg.seed)
    epochs = mc.checkpoints if mc.checkpoints is not None else available_epochs(run_dir)
    if not epochs:
        raise PlanError(f"{run_dir} has no checkpoints; train it first, or plan without --run")
    out = []
    for e in epochs:
        ckpt = load_checkpoint(run_dir / "checkpoints" / f"epoch_{e:04d}.pt", map_location="cpu")
        model = model_from_checkpoint(ckpt, dtype=dtype, device=device)
        out.append(len(active_examples(model.plan, model.params(), x, y, mc.example_chunk)) / len(x))
    return out


def available_memory_mb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: float(line.split()[1]) for line in f}
    return info.get("MemAvailable", info["MemTotal"]) / 1024


def check_fits(plan: Plan, processes: int) -> None:
    """Refuse a plan whose processes together need more memory than this machine has available."""
    need = plan.peak_rss_mb.get("driver", 0) + processes * plan.peak_rss_mb.get("actor", 0)
    have = available_memory_mb()
    if need > have:
        raise PlanError(f"the plan needs about {need:,.0f} MB (driver {plan.peak_rss_mb['driver']:,.0f} MB"
                        + (f" + {processes} actors x {plan.peak_rss_mb['actor']:,.0f} MB" if processes else "")
                        + f") but this machine has {have:,.0f} MB available; lower measure.pool_size, "
                        "spectrum.basis_budget_mb or hvp_graph_budget_mb, or pass --force")


def format_plan(plan: Plan, tp: Throughput) -> str:
    lines = [f"plan for {plan.config} on {plan.devices}"
             + (f" with {plan.actors} actor(s)" if "actor" in plan.peak_rss_mb else " (in process)")
             + f" [throughputs measured in {tp.seconds:.0f} s on {tp.device}, {tp.threads} thread(s) per worker]"]
    for k, v in plan.seconds.items():
        lines.append(f"  {k:<28} {v:>10.1f} s")
    lines.append(f"  {'total':<28} {plan.total_seconds:>10.1f} s  ({plan.total_seconds / 60:.1f} min)")
    for k, v in plan.peak_rss_mb.items():
        lines.append(f"  peak RSS {k:<19} {v:>10.0f} MB")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def plan_json(plan: Plan, tp: Throughput) -> str:
    return json.dumps({"plan": {**asdict(plan), "total_seconds": plan.total_seconds}, "throughput": asdict(tp)},
                      indent=2)

"""The throughput sampler of `adaptsym plan CONFIG`: what `adaptsym.planning.cost` predicts from.

A job is `adaptsym train` (single process, all threads) followed by `adaptsym measure` at every
checkpoint, in process or over K actors (`--ray`). The prediction is arithmetic on throughputs
measured here, in well under a minute, on the configured model, data, dtype and device:

- per example: an SGD step, a forward pass, a gradient, a pool HVP through the stored first-order
  graph and one by forward-over-reverse, and the graph's saved bytes;
- per example-column: one real h tile (`per_example.design_tile`) of the configured design;
- the statistics' kernels at the configured sizes (bootstrap reweighting B x n x K, the K x K
  correlation products), weight histograms and sampled circuits;
- the resident memory of a fresh interpreter with torch and adaptsym imported.

The cost model itself, and the memory checks, are `adaptsym.planning.cost` (in the library,
so `measure` can refuse a measurement that does not fit); this module runs from the checkout, like
every job, and spawns interpreters to measure their memory.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from adaptsym.config import DataSpec, ModelSpec, RunConfig
from adaptsym.curvature.entries import make_design
from adaptsym.curvature.hvp import PoolHessian, SavedBytes, active_examples
from adaptsym.curvature.per_example import design_tile
from adaptsym.measure import available_epochs, select_pool
from adaptsym.nets.checkpoint import load_checkpoint, model_from_checkpoint
from adaptsym.nets.data import DataError, load_dataset
from adaptsym.nets.models import BiasFreeNet
from adaptsym.observables.circuits import measure_circuits
from adaptsym.observables.entry_blocks import EntryWork
from adaptsym.observables.executor import LocalExecutor
from adaptsym.observables.hessian_entries import analyse, compute_h, prepare
from adaptsym.observables.weights import measure_weights
from adaptsym.planning.cost import PlanError, Throughput
from adaptsym.storage.store import RunStore
from adaptsym.util import torch_dtype


REPEATS = 3  # samples per kernel, after one warm-up call


def _elapsed(fn) -> float:
    """Wall seconds of one call (the one place the sampler reads the clock)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


class Samples:
    """Each kernel timed `repeats` times after a warm-up call. The estimate is the fastest sample
    (other work on a shared machine only ever adds time); `spread[name]` is its slowest over its
    fastest, which `format_plan` reports and warns on."""

    def __init__(self, repeats: int = REPEATS):
        self.repeats = repeats
        self.spread: dict[str, float] = {}
        self.fastest: dict[str, float] = {}  # seconds of each kernel's fastest sample

    def best(self, name: str, fn, warm: bool = True, repeats: int | None = None) -> float:
        if warm:
            fn()
        times = [_elapsed(fn) for _ in range(repeats or self.repeats)]
        self.spread[name] = max(times) / max(min(times), 1e-12)
        self.fastest[name] = min(times)
        return min(times)


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
                       sample: int = 8, cheap_s: float = 0.005, driver_modules: tuple[str, ...] = ("mlflow",)
                       ) -> Throughput:
    """Time the job's kernels on the configured data and model: on `sample` examples when a
    gradient over them takes more than `cheap_s` (large models, where cost is linear in the
    examples), else on the batch sizes the job uses (small models, where per-call overhead counts)."""

    t_start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    samples = Samples()
    _best = samples.best
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
    xc, yc = xs[:b].clone(), ys[:b].clone()  # own storage: a view's would be the whole training set
    with SavedBytes(exclude=list(model.parameters())) as counter:
        opt.zero_grad(set_to_none=True)
        torch.clamp(1.0 - yc * model(xc), min=0).mean().backward()
    activation_bytes = counter.total / b
    sgd(b)  # warm: the probe below times a step, not the first call's allocations
    probe = _best("sgd probe", lambda: sgd(b), warm=False)
    large = probe > cheap_s
    bt = b if large else min(cfg.train.batch_size, len(xs))
    sgd_s = (probe if large else _best("sgd", lambda: sgd(bt))) / bt
    be = b if large else min(1024, len(xs))  # evaluation and the epoch's full gradient use big chunks
    with torch.no_grad():
        forward_s = _best("forward", lambda: model(xs[:be])) / be

    def full_grad():
        torch.autograd.grad(torch.clamp(1.0 - ys[:be] * model(xs[:be]), min=0).sum(), list(model.parameters()))

    train_gradient_s = _best("train gradient", full_grad) / be
    model = BiasFreeNet(cfg.models[model_name], data.input_shape, seed=cfg.seed, dtype=dtype).to(device)
    px, py = select_pool(data.x_train.to(device, dtype), data.y_train.to(device, dtype), min(mc.pool_size,
                         len(data.x_train)), cfg.seed)
    active = len(active_examples(model.plan, model.params(), px, py, mc.example_chunk)) / len(px)
    b = b if large else min(mc.example_chunk, len(px))
    xb, yb = px[:b], py[:b]
    torch.set_num_threads(threads)  # worker-side kernels at the workers' thread count
    # only active examples cost: time on a batch made all active (the margin test is part of it)
    yb = torch.where(model(xb).detach() >= 0, -1.0, 1.0).to(dtype)  # wrong side of 0: margin < 1
    want = set(mc.observables)  # kernels of observables the job does not measure are not timed (0)
    op = PoolHessian(model.plan, model.params(), xb, yb, method="fwd-rev")
    gradient_s = _best("pool gradient", op.gradient) / b if "gradients" in want else 0.0
    v = torch.randn(op.n_params, dtype=dtype, device=device)
    hvp_fwdrev_s = _best("hvp fwd-rev", lambda: op.matvec(v)) / b if "spectrum" in want else 0.0
    design = make_design(mc.hessian_entries.design, model.index, cfg.seed)
    ea = min(design.entry_chunk(mc.hessian_entries.column_chunk), design.n_entries)
    cols = max(1, mc.hessian_entries.column_chunk if design.kind == "block" else ea)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tile = lambda m: design_tile(model.plan, model.params(), model.index, design, xb[:m], yb[:m], 0, ea)
    b1 = max(1, b // 2)
    rss0 = peak()
    tile(b1)  # ru_maxrss only grows: the smaller tile first, then the larger one
    d1 = peak() - rss0
    tile_s = _best("h tile", lambda: tile(b), warm=False) / (b * cols)
    d2 = peak() - rss0
    tile_peak_mb = max(d2 - d1, 0.0) / max(1, b - b1) if b > b1 else d2 / b
    tile_fixed_mb = max(0.0, d1 - tile_peak_mb * b1)
    hvp_graph_s, graph_bytes = 0.0, 0.0
    if "spectrum" in want:
        graph = PoolHessian(model.plan, model.params(), xb, yb, method="graph")
        t0 = time.perf_counter()
        graph.matvec(v)
        build = time.perf_counter() - t0
        hvp_graph_s = _best("hvp graph", lambda: graph.matvec(v), warm=False) / b
        graph_bytes = graph.graph_bytes / b
        hvp_graph_s += build / b / max(1, mc.spectrum.steps * mc.spectrum.starts)  # the one build, spread
        del graph
    torch.set_num_threads(old_threads)
    histogram_s = 2 * _best("histograms", lambda: measure_weights(model.params(), mc.histogram_bins)) \
        if want & {"weights", "gradients"} else 0.0
    ce = max(1, min(2, mc.circuits.examples))
    circuits_s = _best("circuits", lambda: measure_circuits(model.plan, model.params(), px[:ce], py[:ce], ce, mc.circuits.paths,
                                                cfg.seed, 0)) * mc.circuits.examples / ce if "circuits" in want else 0.0
    statistics_s = statistics_seconds(cfg, px, py, device, samples) if "hessian_entries" in want else 0.0
    big = torch.randn(model.n_params, dtype=torch.float64)
    vector_s = _best("vector pass", lambda: (big * 1.0001).sum())
    n_train, n_test = sizes if sizes else (len(data.x_train), len(data.x_test))
    return Throughput(str(device), threads, model.n_params, torch.empty(0, dtype=dtype).element_size(), active,
                      sgd_s, forward_s, gradient_s, train_gradient_s, activation_bytes, hvp_graph_s, hvp_fwdrev_s,
                      graph_bytes, tile_s, tile_peak_mb, tile_fixed_mb, histogram_s, circuits_s, statistics_s, vector_s, data_s,
                      data_mb, n_train, n_test, interpreter_rss_mb(), interpreter_rss_mb(driver_modules),
                      time.perf_counter() - t_start, note, samples.spread, load, samples.repeats,
                      samples.fastest)


def statistics_seconds(cfg: RunConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                       samples: Samples | None = None) -> float:
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
        samples = samples or Samples()  # two samples: the slowest sampled kernel (analyse rewrites its arrays)
        return samples.best("statistics", lambda: analyse(store, work, ex, model.n_params), warm=False, repeats=2)


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

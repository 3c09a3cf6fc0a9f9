"""The cost model of `adaptsym plan`: the predicted wall time and peak memory of a whole job, as
arithmetic on throughputs (`Throughput`) measured beforehand (`jobs.plan_sampler` measures them
here: it times the job's kernels and starts fresh interpreters).

A job is `adaptsym train` (single process, all threads) followed by `adaptsym measure` at every
checkpoint, in process or over K actors (`--ray`). Cost model (n pool examples, a of them active,
N weights, K entries, |J| columns, K actors):
  train     = epochs x (n_train x (sgd + gradient) + (n_train + n_test) x forward)
  entries   = a x |J| x tile / K                      (examples with margin > 1 are skipped)
  pool      = n_train x forward per checkpoint       (measure.pool active or fixed-active)
  spectrum  = starts x steps x (a x hvp / K + reorthogonalisation + K vector transfers)
  gradients = a x gradient / K;  statistics, histograms, circuits as measured
plus a fixed start-up and per-checkpoint overhead. The active fraction is the one measured at the
initialisation unless the checkpoints' own are given (or fixed by `pool: fixed-active`); later
checkpoints usually have fewer active examples, so the prediction is an upper bound there. Peak memory per process is the interpreter's
plus the counted arrays (`counted_arrays_mb`: weight copies, data, the Lanczos basis up to its
budget, graphs up to their budget, one tile). `check_memory_floor` refuses, before any work, a
measurement whose counted arrays alone exceed the available memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch

from ..config import RunConfig
from ..errors import UserFacingError

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
    spread: dict = field(default_factory=dict)  # per kernel: slowest sample / fastest (the fastest is used)
    load: float = float("nan")  # the 1-minute load average when sampling began
    repeats: int = 0  # samples per kernel
    fastest_s: dict = field(default_factory=dict)  # per kernel: seconds of its fastest sample


# A kernel whose slowest sample took more than this times its fastest: the machine was busy. Only
# kernels of at least SPREAD_MIN_S count: on an idle machine a 1-ms kernel's samples alone differ
# by 1.6x (the vector pass, measured), so its spread says nothing about load.
SPREAD_WARN = 1.5
SPREAD_MIN_S = 0.01


def sampling_warnings(tp: Throughput) -> list[str]:
    """What says the throughput samples are not to be trusted: samples that disagree, a loaded machine."""
    out = []
    bad = sorted(((v, k) for k, v in tp.spread.items()
                  if v > SPREAD_WARN and tp.fastest_s.get(k, float("inf")) >= SPREAD_MIN_S), reverse=True)
    if bad:
        out.append(f"the samples of {len(bad)} kernel(s) disagree (slowest / fastest: "
                   + ", ".join(f"{k} {v:.1f}x" for v, k in bad[:4]) + (", ..." if len(bad) > 4 else "")
                   + "): the machine was busy while sampling. The plan uses each kernel's fastest sample; "
                   "rerun `adaptsym plan` when the machine is idle to confirm it")
    cores = os.cpu_count() or 1
    if tp.load == tp.load and tp.load > cores:
        out.append(f"the load average was {tp.load:.1f} on {cores} core(s) when sampling began: other work "
                   "competes for the cores, and a busy machine slows the job itself as much as the samples")
    return out


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
    fixed = mc.pool == "fixed-active"
    if fixed:  # the pool holds exactly pool_active active examples at every checkpoint
        fractions = [mc.pool_active / mc.pool_size] * ckpts
    else:
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
        graph = a / k * tp.graph_bytes if "spectrum" in want else 0.0  # only the spectrum keeps graphs
        hvp = tp.hvp_graph_s if graph <= budget else tp.hvp_fwdrev_s
        graph_peak = max(graph_peak, graph if graph <= budget else 0.0)
        part = {"overhead": CHECKPOINT_OVERHEAD_S}
        if mc.pool != "all":  # the pool is chosen by a forward pass over the training set
            part["pool_search"] = n_train * tp.forward_s
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
    if fixed:
        plan.notes.append(f"active fraction {mc.pool_active}/{mc.pool_size} at every checkpoint (pool: fixed-active)")
    elif active_fractions is None:
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
    if tp.spread:
        k = max(tp.spread, key=tp.spread.get)
        lines.append(f"  samples: {tp.repeats} per kernel, the fastest used; largest spread {tp.spread[k]:.2f}x ({k})")
    lines += [f"  warning: {w}" for w in sampling_warnings(tp)]
    for k, v in plan.seconds.items():
        lines.append(f"  {k:<28} {v:>10.1f} s")
    lines.append(f"  {'total':<28} {plan.total_seconds:>10.1f} s  ({plan.total_seconds / 60:.1f} min)")
    for k, v in plan.peak_rss_mb.items():
        lines.append(f"  peak RSS {k:<19} {v:>10.0f} MB")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def plan_json(plan: Plan, tp: Throughput) -> str:
    return json.dumps({"plan": {**asdict(plan), "total_seconds": plan.total_seconds}, "throughput": asdict(tp),
                       "warnings": sampling_warnings(tp)}, indent=2)

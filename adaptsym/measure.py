"""`adaptsym measure`: all observables at each checkpoint of a run, into zarr and MLflow.

Observables (each its own module, each an `Observation` written under epoch_XXXX/<name>/):
weights, gradients, hessian_entries, spectrum, circuits (`measure.observables` selects).

The measurement pool is the first `pool_size` examples of a seeded permutation of the
training set, and the entry design is seeded too: both are the same at every checkpoint, so
entries are followed through training. A checkpoint group is marked complete only after
every array is written; a rerun skips complete groups (same measure config and same
checkpoint file, by SHA-256), redoes stale ones from scratch, and resumes unfinished ones:
their finished h tiles are kept and only the missing tiles are computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .nets.checkpoint import CheckpointError, load_checkpoint, missing_scheduled, model_from_checkpoint
from .stats.bootstrap import check_pool
from .config import ConfigError, RunConfig, current_layout, parse_config
from .nets.data import load_dataset
from .curvature.entries import EntryDesign, make_design
from .nets.indexing import ParamIndex
from .observables.executor import LocalExecutor
from .errors import UserFacingError
from .storage.provenance import resolve_device
from .observables.observation import Context, Observation
from .progress import ProgressLines, bar_off, lines_on
from .storage.runlock import run_lock
from .storage.store import RunStore, checkpoint_group
from .util import torch_dtype
from .protocols import Executor
from .registry import observables


@dataclass
class MeasureResult:
    store_path: Path
    epochs: list[int]
    mlflow_run_id: str | None = None
    scalars: dict = field(default_factory=dict)  # epoch -> {metric: value}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def available_epochs(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("epoch_*.pt"))


def select_pool(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size > len(x):
        raise ConfigError(f"measure.pool_size={size} exceeds the {len(x)} training examples; lower it")
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0xB00])).permutation(len(x))[:size]
    idx = torch.as_tensor(np.sort(perm), device=x.device)
    return x[idx], y[idx]


def _in_pool_order(model, x: torch.Tensor, y: torch.Tensor, seed: int, chunk: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set in the seeded order of `select_pool`, and which of them have margin < 1."""
    perm = torch.as_tensor(np.random.default_rng(np.random.SeedSequence([seed, 0xB00])).permutation(len(x)),
                           device=x.device)
    with torch.no_grad():
        out = torch.cat([model(x[perm[i : i + chunk]]) for i in range(0, len(x), chunk)])
    return perm, y[perm] * out < 1.0


def active_pool(model, x: torch.Tensor, y: torch.Tensor, size: int, seed: int, chunk: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `size` training examples with margin < 1 at this model, in the order of the same
    seeded permutation as `select_pool` (`measure.pool: active`)."""
    perm, act = _in_pool_order(model, x, y, seed, chunk)
    idx = torch.sort(perm[act][:size]).values
    return x[idx], y[idx]


def fixed_active_pool(model, x: torch.Tensor, y: torch.Tensor, size: int, active: int, seed: int, chunk: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """A pool of exactly `size` training examples of which exactly `active` have margin < 1 at this
    model (`measure.pool: fixed-active`): the first `active` active and the first `size - active`
    inactive examples of the seeded permutation of `select_pool`. Every model measured with it has
    the same A and n, so the same power to detect a coupling (the scale sweep)."""
    perm, act = _in_pool_order(model, x, y, seed, chunk)
    have_active, have_inactive = int(act.sum()), int((~act).sum())
    if have_active < active:
        raise ConfigError(f"measure.pool_active={active}, but only {have_active} of the {len(x)} training examples "
                          "have margin < 1 at this checkpoint; lower measure.pool_active, measure an earlier "
                          "checkpoint, or train on a harder task (data.name: textures)")
    if have_inactive < size - active:
        raise ConfigError(f"measure.pool_size={size} with pool_active={active} needs {size - active} examples with "
                          f"margin >= 1, but only {have_inactive} of the {len(x)} training examples have one at this "
                          "checkpoint; raise measure.pool_active or lower measure.pool_size")
    idx = torch.sort(torch.cat([perm[act][:active], perm[~act][: size - active]])).values
    return x[idx], y[idx]


def checkpoint_pool(model, data, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool measured at one checkpoint's model: `x, y` (the seeded pool, `measure.pool: all`),
    or the one `measure.pool` selects from the training set at this model."""
    mcfg = cfg.measure
    if mcfg.pool == "all":
        return x, y
    if mcfg.pool == "active":
        return active_pool(model, data.x_train, data.y_train, mcfg.pool_size, cfg.seed, mcfg.example_chunk)
    return fixed_active_pool(model, data.x_train, data.y_train, mcfg.pool_size, mcfg.pool_active, cfg.seed,
                             mcfg.example_chunk)


def measure_checkpoint(model, ckpt: dict, x, y, cfg: RunConfig, s: int, epoch: int, store: RunStore, group: str,
                       executor: Executor, design: EntryDesign | None, progress: bool = False,
                       lines: ProgressLines | None = None) -> list[Observation]:
    """Every observable the measure config asks for, at one checkpoint's model, in registry order;
    `lines` gets one line per observable."""
    mcfg = cfg.measure
    op = executor.pool_hessian(model, ckpt, x, y, mcfg.dtype, mcfg.example_chunk,
                               mcfg.hvp_graph_budget_mb)  # in process or sharded
    ctx = Context(model=model, ckpt=ckpt, x=x, y=y, cfg=cfg, s=s, epoch=epoch, store=store, group=group,
                  executor=executor, design=design, op=op, progress=progress)
    out = []
    for name, observable in observables().items():
        if name in mcfg.observables:
            t0 = time.perf_counter()
            obs = observable.measure(ctx)
            obs.scalars["seconds"] = time.perf_counter() - t0
            if lines is not None:
                lines.phase(f"epoch {epoch}: {name}", obs.scalars["seconds"])
            out.append(obs)
    return out


def peak_rss_mb(executor: Executor) -> dict:
    """Peak resident memory so far of this process and of each of the executor's workers (MB)."""
    out = {"peak_rss_mb.driver": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for i, info in enumerate(executor.info() if hasattr(executor, "info") else []):
        out[f"peak_rss_mb.actor{i}"] = info["peak_rss_mb"]
    return out


class MeasureConflictError(UserFacingError, RuntimeError):
    """Finished results that a new measurement would replace; the message names what differs."""


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def measure_run(run_dir: str | Path, cfg: RunConfig | None = None, tracker=None, epochs: list[int] | None = None,
                progress: bool = True, executor: Executor | None = None, overwrite: bool = False,
                log=print) -> MeasureResult:
    """Measure the run's checkpoints; `executor` runs the Hessian-entry blocks (default: in process).

    Finished results measured with another measure config or from a checkpoint file that changed
    are kept: the call fails naming the differences, unless `overwrite`. Holds the run's lock."""
    run_dir = Path(run_dir)
    RunStore.for_run(run_dir, mode="r")  # a wrong path fails here, creating nothing
    with run_lock(run_dir, f"adaptsym measure {run_dir.name}"):
        return _measure_run(run_dir, cfg, tracker, epochs, progress, executor, overwrite, log)


def _measure_run(run_dir: Path, cfg, tracker, epochs, progress, executor: Executor, overwrite, log) -> MeasureResult:
    store = RunStore.for_run(run_dir)
    root = store.attrs()
    if "config" not in root:
        raise CheckpointError(f"{run_dir} has no results.zarr with a run config; train it first with `adaptsym train`")
    cfg = cfg or parse_config(root["config"], source=f"{run_dir}/results.zarr config")
    mcfg = cfg.measure
    have = available_epochs(run_dir)
    wanted = epochs if epochs is not None else (mcfg.checkpoints if mcfg.checkpoints is not None else have)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise CheckpointError(f"no checkpoint for epoch(s) {missing} in {run_dir / 'checkpoints'}; "
                              f"available: {have}")
    device = resolve_device(cfg.device)
    executor = executor or LocalExecutor(device)
    dtype = torch_dtype(mcfg.dtype)
    data = load_dataset(cfg.data, cfg.seed).to(device, dtype)
    x, y = select_pool(data.x_train, data.y_train, mcfg.pool_size, cfg.seed)
    s = mcfg.hessian_entries.minibatch or cfg.train.batch_size
    # everything a bad config can break is checked before any checkpoint group is touched; the
    # Hessian-entry design, the same entries at every checkpoint, only when those are measured
    design = None
    if "hessian_entries" in mcfg.observables:
        if mcfg.pool != "active":  # a pool of exactly pool_size
            check_pool(len(x), s)
        index = ParamIndex(tuple(tuple(int(d) for d in shape) for shape in root["layer_shapes"]))
        design = make_design(mcfg.hessian_entries.design, index, cfg.seed)
    mconf = mcfg.model_dump(mode="json")
    result = MeasureResult(store.path, list(wanted))
    gone = missing_scheduled(run_dir, cfg)
    if gone:
        log(f"scheduled checkpoints {gone} of {run_dir} are missing; `adaptsym train` with the run's config recreates "
            "them. Measuring the others.")
    damaged = {}  # finished groups with a missing or corrupt chunk (`adaptsym verify`): recomputed
    for epoch in wanted:
        group = checkpoint_group(epoch)
        # a finished group only: an unfinished one resumes tile by tile (a corrupt h tile is recomputed,
        # the statistics after h are redone)
        faults = store.array_faults(group) if store.is_complete(group) else []
        if faults:
            damaged[epoch] = faults
            log(f"{group} of {run_dir} is damaged ({faults[0]}" + (f"; and {len(faults) - 1} more" if len(faults) > 1
                else "") + "): recomputing this checkpoint from scratch")
    conflicts = []
    for epoch in wanted:  # before any group is touched
        group = checkpoint_group(epoch)
        state = store.attrs(group) if store.has_group(group) else {}
        if not state.get("complete") or epoch in damaged:  # a damaged group's results are lost already
            continue
        diff = _differences(current_layout(state.get("measure_config")), mconf)
        if state.get("checkpoint_sha256") != file_sha256(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt"):
            diff.append("the checkpoint file changed since it was measured")
        if diff:
            conflicts.append(f"{group}: " + "; ".join(diff))
    if conflicts and not overwrite:
        raise MeasureConflictError(
            f"{run_dir} already holds finished measurements that this one would replace:\n  " + "\n  ".join(conflicts)
            + "\nnothing was changed; rerun with --overwrite to replace them, or measure into a copy of the run")
    store.set_attrs({"missing_checkpoints": gone})
    if hasattr(executor, "check_store"):  # workers that write the store themselves must reach it
        executor.check_store(store.url)

    model_name = root.get("model_name", run_dir.name)
    ctx = tracker.run(f"measure-{run_dir.name}", params={"measure": mconf, "run_dir": str(run_dir)},
                      tags={"kind": "measure", "model": model_name, "zarr_path": store.url}) \
        if tracker else contextlib.nullcontext()
    with ctx as mlrun:
        result.mlflow_run_id = mlrun.info.run_id if mlrun else None
        lines = ProgressLines(f"measure {run_dir.name}", len(wanted), lines_on(progress))
        for epoch in tqdm(wanted, desc=f"measure {run_dir.name}", disable=bar_off(progress), unit="ckpt"):
            group = checkpoint_group(epoch)
            ckpt_path = run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt"
            digest = file_sha256(ckpt_path)
            state = store.attrs(group) if store.has_group(group) else {}
            if state.get("complete") and current_layout(state.get("measure_config")) == mconf \
                    and state.get("checkpoint_sha256") == digest and epoch not in damaged:
                result.scalars[epoch] = state.get("scalars", {})
                lines.skip(f"epoch {epoch}")
                continue
            t0 = time.perf_counter()
            ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # a bad file fails before the store is touched
            if current_layout(state.get("measure_config")) != mconf or state.get("checkpoint_sha256") != digest \
                    or epoch in damaged:
                store.reset_group(group)  # stale, damaged or new: from scratch
            # else: an interrupted measurement of the same checkpoint and config: finished tiles are kept
            store.set_attrs({"epoch": epoch, "measure_config": mconf, "checkpoint_sha256": digest, "complete": False},
                            group=group)
            model = model_from_checkpoint(ckpt, dtype=dtype, device=device)
            px, py = checkpoint_pool(model, data, x, y, cfg)
            observations = measure_checkpoint(model, ckpt, px, py, cfg, s, epoch, store, group, executor, design,
                                              progress, lines)
            metrics = {}
            for obs in observations:
                obs.write(store, group)
                metrics.update(obs.metrics())
            metrics["measure_seconds"] = time.perf_counter() - t0
            metrics.update(peak_rss_mb(executor))
            store.set_attrs({"scalars": metrics}, group=group)
            store.mark_complete(group)
            result.scalars[epoch] = metrics
            lines.step(f"epoch {epoch} (checkpoint)", metrics["measure_seconds"])
            if tracker:
                with tracker.run(group, tags={"epoch": epoch, "zarr_group": f"{store.url}/{group}"}, nested=True):
                    tracker.log_metrics(metrics, step=epoch)
                tracker.log_metrics(metrics, step=epoch)
        if tracker:
            store.set_attrs({"measure_mlflow_run_id": result.mlflow_run_id})
    return result

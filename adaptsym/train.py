"""Training: SGD on the hinge risk with a checkpoint schedule, resumable.

Each epoch shuffles with a generator seeded by (seed, epoch), so a run resumed from `last.pt`
continues exactly as the uninterrupted run would. After every epoch the history gets the
train and held-out loss and accuracy, the plasticity order parameter ||grad R||^2 over the
training set, and Omega = lr ||grad R||^2 (SPEC section 3, Fig 4b).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .nets.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, config_to_dict
from .nets.data import Dataset, load_dataset
from .nets.losses import hinge
from .nets.models import BiasFreeNet
from .progress import ProgressLines, bar_off, lines_on
from .storage.provenance import provenance, resolve_device
from .storage.runlock import run_lock
from .storage.store import STORE_NAME, URL_POINTER, RunStore, is_url, store_location

# train_active: the fraction of training examples with margin < 1 (the only ones with a Hessian)
HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm2", "omega", "train_active")
LAST = "last.pt"


def run_dir_for(out: str | Path, cfg: RunConfig, model_name: str) -> Path:
    return Path(out) / f"{cfg.name}-{model_name}"


@torch.no_grad()
def evaluate(model: BiasFreeNet, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float, float]:
    """Mean hinge loss, accuracy (sign of T) and the fraction with margin y T < 1 over a data set."""
    loss, correct, active = 0.0, 0.0, 0.0
    for i in range(0, len(x), chunk):
        out = model(x[i : i + chunk])
        loss += hinge(out, y[i : i + chunk]).sum().item()
        correct += (torch.where(out >= 0, 1.0, -1.0) == y[i : i + chunk]).sum().item()
        active += (y[i : i + chunk] * out < 1).sum().item()
    return loss / len(x), correct / len(x), active / len(x)


def full_gradient(model: BiasFreeNet, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> list[torch.Tensor]:
    """Gradient of the risk R = mean_k l_k over (x, y), accumulated in chunks."""
    grads = [torch.zeros_like(w) for w in model.weights]
    for i in range(0, len(x), chunk):
        loss = hinge(model(x[i : i + chunk]), y[i : i + chunk]).sum() / len(x)
        for g, gi in zip(grads, torch.autograd.grad(loss, list(model.weights))):
            g += gi
    return grads


@dataclass
class TrainResult:
    run_dir: Path
    checkpoints: list[Path]
    history: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None


def checkpoint_payload(cfg: RunConfig, model_name: str, input_shape, epoch: int, weights, optimizer_state: dict,
                       history: dict, mlflow_run_id: str | None, **extra) -> dict:
    """The self-describing checkpoint content (plain torch and DeepSpeed training write the same)."""
    spec = cfg.models[model_name]
    return {"model_spec": spec.model_dump(mode="json"), "input_shape": list(input_shape),
            "data_spec": cfg.data.model_dump(mode="json"), "epoch": epoch,
            "weights": [w.detach().cpu().clone() for w in weights], "optimizer": optimizer_state,
            "seeds": {"seed": cfg.seed}, "config": config_to_dict(cfg), "history": history,
            "mlflow_run_id": mlflow_run_id, **extra}


def epoch_metrics(model, data: Dataset, lr: float) -> dict:
    tl, ta, active = evaluate(model, data.x_train, data.y_train)
    vl, va, _ = evaluate(model, data.x_test, data.y_test)
    g2 = float(sum((g.double() ** 2).sum() for g in full_gradient(model, data.x_train, data.y_train)))
    return {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va, "grad_norm2": g2, "omega": lr * g2,
            "train_active": active}


def record_epoch(model, data: Dataset, lr: float, epoch: int, history: dict, tracker=None) -> dict:
    """Measure the epoch's metrics, append them to the history, log them to MLflow."""
    metrics = epoch_metrics(model, data, lr)
    history["epoch"].append(epoch)
    for k in HISTORY_KEYS:  # a run resumed from before a key existed has NaN there
        history.setdefault(k, [float("nan")] * (len(history["epoch"]) - 1)).append(metrics[k])
    if tracker:
        tracker.log_metrics(metrics, step=epoch)
    return metrics


def write_history(store: RunStore, history: dict) -> None:
    epochs = np.asarray(history["epoch"], dtype=np.int64)
    store.write("training", "epoch", epochs, ["epoch"])
    for k in HISTORY_KEYS:
        store.write("training", k, np.asarray(history[k], dtype=np.float64), ["epoch"])
    store.set_attrs({"complete": True, "last_epoch": int(epochs[-1])}, group="training")


def bind_results_url(run_dir: Path, cfg: RunConfig) -> None:
    """With `results_url`, record the run's store URL in `<run dir>/results.url` (before the lock:
    the lock then covers the bucket too). A run that already has a store elsewhere is refused."""
    if cfg.results_url is None:
        return
    url = f"{cfg.results_url}/{run_dir.name}/{STORE_NAME}"
    now = store_location(run_dir)
    if now == url:
        return
    if isinstance(now, Path) and now.exists():
        raise ConfigError(f"{run_dir} already keeps its results in {now}; train into a new --out, or remove "
                          f"results_url from the config")
    if is_url(now):
        raise ConfigError(f"{run_dir} keeps its results at {now}, not {url}; train into a new --out, or set "
                          f"results_url back")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / URL_POINTER).write_text(url + "\n")


def open_run_store(run_dir: Path, cfg: RunConfig, model_name: str, model: BiasFreeNet, input_shape) -> RunStore:
    """The run's zarr store with its root attributes (config, model, provenance, seeds)."""
    store = RunStore.for_run(run_dir)
    store.set_attrs({"config": config_to_dict(cfg), "model_name": model_name,
                     "model_spec": cfg.models[model_name].model_dump(mode="json"), "n_params": model.n_params,
                     "n_layers": model.n_layers, "layer_shapes": model.shapes, "input_shape": list(input_shape),
                     "seeds": {"seed": cfg.seed}, **provenance()})
    return store


def train(cfg: RunConfig, model_name: str, out: str | Path, tracker=None, progress: bool = True) -> TrainResult:
    """Train `cfg.models[model_name]`, resuming from `last.pt` if the run was interrupted, and recreate
    any missing scheduled checkpoint. Holds the run's lock (`runlock`) throughout."""
    if model_name not in cfg.models:
        raise KeyError(f"model {model_name!r} is not in the config; choose one of {cfg.model_names()}")
    run_dir = run_dir_for(out, cfg, model_name)
    bind_results_url(run_dir, cfg)
    with run_lock(run_dir, f"adaptsym train {cfg.name}/{model_name}"):
        return _train(cfg, model_name, run_dir, tracker, progress)


def _train(cfg: RunConfig, model_name: str, run_dir: Path, tracker, progress: bool) -> TrainResult:
    spec, tcfg = cfg.models[model_name], cfg.train
    ckpt_dir = run_dir / "checkpoints"
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data, cfg.seed).to(device)

    torch.manual_seed(cfg.seed)
    model = BiasFreeNet(spec, data.input_shape, seed=cfg.seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
    cfg_dict = config_to_dict(cfg)
    history: dict = {"epoch": [], **{k: [] for k in HISTORY_KEYS}}
    start_epoch, mlflow_run_id = 0, None

    if (ckpt_dir / LAST).exists():
        last = load_checkpoint(ckpt_dir / LAST, map_location=device)
        if last["model_spec"] != spec.model_dump(mode="json") or last["data_spec"] != cfg.data.model_dump(mode="json"):
            raise RuntimeError(f"{run_dir} holds a run of a different model or data config; "
                               "use another --out or delete that run directory")
        with torch.no_grad():
            for p, w in zip(model.weights, last["weights"]):
                p.copy_(w)
        opt.load_state_dict(last["optimizer"])
        history = {k: list(v) for k, v in last["history"].items()}
        start_epoch = int(last["epoch"]) + 1
        mlflow_run_id = last.get("mlflow_run_id")

    store = open_run_store(run_dir, cfg, model_name, model, data.input_shape)

    def payload(epoch: int) -> dict:
        return checkpoint_payload(cfg, model_name, data.input_shape, epoch, model.weights, opt.state_dict(),
                                  history, mlflow_run_id)

    saved: list[Path] = sorted(ckpt_dir.glob("epoch_*.pt"))
    own = {**cfg_dict, "models": {model_name: cfg_dict["models"][model_name]}}  # only this run's model
    ctx = tracker.run(f"train-{cfg.name}-{model_name}", params=own,
                      tags={"kind": "train", "model": model_name, "zarr_path": store.url},
                      run_id=mlflow_run_id) if tracker else contextlib.nullcontext()
    with ctx as mlrun:
        if mlrun is not None:
            mlflow_run_id = mlrun.info.run_id
            if start_epoch == 0:
                tracker.log_dataset(data.x_train, data.y_train, name=f"{cfg.data.name}-train", context="training")
        bar = tqdm(range(start_epoch, tcfg.epochs + 1), desc=f"train {model_name}", disable=bar_off(progress),
                   initial=start_epoch, total=tcfg.epochs + 1, unit="epoch")
        lines = ProgressLines(f"train {model_name}", tcfg.epochs + 1 - start_epoch, lines_on(progress))
        for epoch in bar:
            t0 = time.perf_counter()
            sgd_epoch(model, opt, data, tcfg.batch_size, cfg.seed, epoch)
            metrics = record_epoch(model, data, tcfg.lr, epoch, history, tracker)
            bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", acc=f"{metrics['train_acc']:.3f}")
            lines.step(f"epoch {epoch} (loss {metrics['train_loss']:.4f}, acc {metrics['train_acc']:.3f})",
                       time.perf_counter() - t0)
            if epoch in tcfg.checkpoints:
                saved.append(save_checkpoint(ckpt_dir / checkpoint_name(epoch), payload(epoch)))
            save_checkpoint(ckpt_dir / LAST, payload(epoch))
            write_history(store, history)
        bar.close()
        if tracker is not None:
            tracker.log_figure(training_figure(history, f"{cfg.name}-{model_name}"), "training_curves.png")
    store.set_attrs({"train_mlflow_run_id": mlflow_run_id})
    saved += recreate_missing(cfg, model_name, data, ckpt_dir, progress)
    return TrainResult(run_dir, sorted(set(saved)), history, mlflow_run_id)


def training_figure(history: dict, title: str):
    """Loss and accuracy (train and test) against epoch, the figure each training run logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for key, axis in (("loss", ax[0]), ("acc", ax[1])):
        for split in ("train", "test"):
            if f"{split}_{key}" in history:
                axis.plot(history["epoch"], history[f"{split}_{key}"], "o-", ms=3, label=split)
        axis.set_xlabel("epoch")
        axis.set_ylabel("hinge loss" if key == "loss" else "accuracy")
        axis.legend()
    fig.suptitle(title)
    return fig


def sgd_epoch(model: BiasFreeNet, opt, data: Dataset, batch_size: int, seed: int, epoch: int) -> None:
    """One epoch of SGD, shuffled by a generator seeded with (seed, epoch); epoch 0 is the initialisation."""
    if epoch == 0:
        return
    n = len(data.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).to(data.x_train.device)
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        opt.zero_grad(set_to_none=True)
        hinge(model(data.x_train[idx]), data.y_train[idx]).mean().backward()
        opt.step()


def recreate_missing(cfg: RunConfig, model_name: str, data: Dataset, ckpt_dir: Path, progress: bool) -> list[Path]:
    """Rewrite every scheduled checkpoint missing from `ckpt_dir` that training has passed.

    Each is retrained from the nearest earlier scheduled checkpoint that loads (or the seeded
    initialisation) with the same per-epoch shuffling, so it equals the lost file bit for bit."""
    if not (ckpt_dir / LAST).exists():
        return []
    last = load_checkpoint(ckpt_dir / LAST)
    reached = int(last["epoch"])
    missing = [e for e in cfg.train.checkpoints if e <= reached and not (ckpt_dir / checkpoint_name(e)).exists()]
    made = []
    for target in missing:
        spec, tcfg = cfg.models[model_name], cfg.train
        torch.manual_seed(cfg.seed)
        model = BiasFreeNet(spec, data.input_shape, seed=cfg.seed).to(data.x_train.device)
        opt = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
        history: dict = {"epoch": [], **{k: [] for k in HISTORY_KEYS}}
        start, mlflow_run_id = 0, last.get("mlflow_run_id")
        for e in sorted((e for e in tcfg.checkpoints if e < target), reverse=True):
            if (ckpt_dir / checkpoint_name(e)).exists():
                src = load_checkpoint(ckpt_dir / checkpoint_name(e), map_location=data.x_train.device)
                with torch.no_grad():
                    for p, w in zip(model.weights, src["weights"]):
                        p.copy_(w)
                opt.load_state_dict(src["optimizer"])
                history = {k: list(v) for k, v in src["history"].items()}
                start, mlflow_run_id = e + 1, src.get("mlflow_run_id")
                break
        for epoch in tqdm(range(start, target + 1), desc=f"recreate epoch {target}", disable=bar_off(progress),
                          unit="epoch"):
            sgd_epoch(model, opt, data, tcfg.batch_size, cfg.seed, epoch)
            record_epoch(model, data, tcfg.lr, epoch, history)
        made.append(save_checkpoint(ckpt_dir / checkpoint_name(target), checkpoint_payload(
            cfg, model_name, data.input_shape, target, model.weights, opt.state_dict(), history, mlflow_run_id)))
        print(f"recreated the missing checkpoint {made[-1]} (retrained from epoch {start - 1 if start else 'init'})")
    return made


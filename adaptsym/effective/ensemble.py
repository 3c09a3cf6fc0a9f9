"""The effective-model study's configuration, its data (PCA of handwritten digits) and its
ensemble store: accepted binary weight configurations streamed into zarr, resumable.

Config (`configs/effective-model-demo.yaml`): shared `data`, `network`, `collect`, `fit` and
`landscape` sections, and `scenarios`, each of which may override `network` fields, the
training-set size and the accuracy threshold (the paper's under-parametrised, over-parametrised
and shallow cases).

Data: `digits-pca` is scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); `mnist-pca`
reads a local MNIST copy (the four IDX files, optionally gzipped, in `data.root`), never
downloaded. Both are split (digits: seeded, `test_fraction`; MNIST: its official split), then
projected on the top `components` principal axes of the training images, and scaled so that
the training projections have unit mean variance per component.

Ensemble layout, in `<out>/<name>/results.zarr`, group `ensemble/<scenario>`:
    configs        (configuration, weight) int8 in {-1, +1}, chunks of 1024 configurations
    test_accuracy  (configuration,) float64
    network_seed   (configuration,) int64: task * batch + index in the task
and attributes `committed` (configurations stored), `tasks_committed` (tasks done, in order),
`networks_trained`, `networks_passed`. Results are committed strictly in task order, rows first
and the counters after them, so a killed collection resumes at its first uncommitted task and
rewrites the same rows with the same bits: nothing is duplicated or lost.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .binary_net import BinaryNetSpec, TaskResult
from ..config import ConfigError, format_validation_error
from ..errors import UserFacingError
from ..storage.store import RunStore
from .binary_net import train_task

CHUNK = 1024
MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PCADataSpec(_Strict):
    name: Literal["digits-pca", "mnist-pca"] = "digits-pca"
    root: str | None = None  # mnist-pca: folder with the four MNIST IDX files (.gz or not)
    components: int = Field(default=20, gt=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # digits only (MNIST has its own split)


class NetworkSpec(_Strict):
    widths: list[int] = Field(default_factory=lambda: [20, 15, 15, 10])
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=100, gt=0)  # minibatch of training images
    lr: float = Field(default=0.3, gt=0)  # Adam
    l2: float = Field(default=1e-5, ge=0)  # on the fields theta
    init_std: float = Field(default=1.0, gt=0)  # Gaussian initial fields
    samples: int = Field(default=10, gt=0)  # binary networks drawn per trained network; best kept

    def spec(self) -> BinaryNetSpec:
        return BinaryNetSpec(widths=tuple(self.widths), epochs=self.epochs, batch_size=self.batch_size,
                             lr=self.lr, l2=self.l2, init_std=self.init_std, samples=self.samples)


class ScenarioSpec(_Strict):
    configurations: int = Field(gt=0)  # accepted configurations to collect
    threshold: float = Field(default=0.8, ge=0, le=1)  # test accuracy to accept a configuration
    train_examples: int | None = Field(default=None, gt=0)  # first n training images; null = all
    network: dict[str, Any] = Field(default_factory=dict)  # overrides of the shared network section


class CollectSpec(_Strict):
    batch: int = Field(default=128, gt=0)  # networks trained side by side in one task
    actors: int = Field(default=2, gt=0)
    in_flight: int = Field(default=2, gt=0)  # tasks queued per actor
    # Stop with an error after this many tasks in a row in which no network passed.
    max_failed_tasks: int = Field(default=10, gt=0)


class GibbsSpec(_Strict):
    """Boltzmann learning on Gibbs-sampled moments (`adaptsym.effective.gibbs`), after the BP fit."""

    chains: int = Field(default=4000, gt=1)  # persistent chains, started from ensemble configurations
    steps: int = Field(default=400, gt=0)  # learning steps, one sweep each
    eta: float = Field(default=0.05, gt=0)  # rate eta / (1 + step / decay)
    decay: float = Field(default=100.0, gt=0)
    average: float = Field(default=0.5, ge=0, lt=1)  # the model: mean parameters over this last fraction of steps
    eval_sweeps: int = Field(default=40, gt=1)  # sweeps averaged for the reported Delta


class FitSpec(_Strict):
    # Model moments: 'bp' (belief propagation: fast, biased on dense loopy models, so the fit can stall
    # above the target) or 'gibbs' (the BP fit, then Boltzmann learning on Gibbs-sampled moments)
    moments: Literal["bp", "gibbs"] = "bp"
    gibbs: GibbsSpec = Field(default_factory=GibbsSpec)
    eta: float = Field(default=0.5, gt=0)  # Boltzmann learning rate
    target: float = Field(default=0.01, gt=0)  # stop at Delta < target (eq. 6)
    max_steps: int = Field(default=300, gt=0)
    damping: float = Field(default=0.5, ge=0, lt=1)  # of belief propagation
    bp_tol: float = Field(default=1e-8, gt=0)
    bp_max_iter: int = Field(default=2000, gt=0)


class LandscapeSpec(_Strict):
    x_max: float = Field(default=3.0, gt=0)  # sweeps run x_max -> -x_max and back
    x_steps: int = Field(default=61, gt=2)
    references: int = Field(default=2, gt=0)  # per energy class (low, medium, high)
    parts: bool = True  # also the left boundary, interior and right boundary


class EffectiveConfig(_Strict):
    name: str = Field(default="effective-model", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: PCADataSpec = Field(default_factory=PCADataSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    collect: CollectSpec = Field(default_factory=CollectSpec)
    fit: FitSpec = Field(default_factory=FitSpec)
    landscape: LandscapeSpec = Field(default_factory=LandscapeSpec)
    scenarios: dict[str, ScenarioSpec]

    @model_validator(mode="after")
    def _check(self) -> "EffectiveConfig":
        if not self.scenarios:
            raise ValueError("list at least one scenario under 'scenarios'")
        for name in self.scenarios:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"scenario name {name!r}: use letters, digits, '-' and '_'")
            net = self.network_of(name)
            if net.widths[0] != self.data.components:
                raise ValueError(f"scenario {name}: the first width {net.widths[0]} must equal "
                                 f"data.components = {self.data.components}")
        return self

    def network_of(self, scenario: str) -> NetworkSpec:
        return NetworkSpec.model_validate({**self.network.model_dump(), **self.scenarios[scenario].network})


def load_effective_config(path: str | Path) -> EffectiveConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; see configs/effective-model-demo.yaml")
    try:
        return EffectiveConfig.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def load_with_scenarios(path: str | Path, wanted: list[str] | None) -> tuple[EffectiveConfig, list[str]]:
    """The config and the scenarios to run (`wanted`, or all of them); unknown names are an error."""
    cfg = load_effective_config(path)
    scenarios = wanted or list(cfg.scenarios)
    unknown = [s for s in scenarios if s not in cfg.scenarios]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {unknown}; the config has {list(cfg.scenarios)}")
    return cfg, scenarios


# ---------------------------------------------------------------- data
class MNISTMissingError(UserFacingError, FileNotFoundError):
    pass


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_mnist(root: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) from the IDX files in `root`."""
    base = Path(root or os.environ.get("ADAPTSYM_DATA_DIR", ".")).expanduser()
    out = []
    for stem in MNIST_FILES.values():
        found = [p for p in (base / stem, base / f"{stem}.gz", base / "mnist" / stem, base / "mnist" / f"{stem}.gz")
                 if p.is_file()]
        if not found:
            raise MNISTMissingError(f"MNIST file {stem}[.gz] not found under {base}; put the four official MNIST "
                                    "IDX files there (data.root in the config), or use data.name: digits-pca")
        out.append(_read_idx(found[0]))
    xtr, ytr, xte, yte = out
    return xtr.reshape(len(xtr), -1) / 255.0, ytr.astype(np.int64), xte.reshape(len(xte), -1) / 255.0, yte.astype(np.int64)


def load_pca_data(spec: PCADataSpec, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 PCA projections and int64 class labels."""
    if spec.name == "mnist-pca":
        xtr, ytr, xte, yte = read_mnist(spec.root)
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        perm = np.random.default_rng(seed).permutation(len(d.target))
        n_test = int(round(spec.test_fraction * len(perm)))
        te, tr = perm[:n_test], perm[n_test:]
        xtr, ytr, xte, yte = d.data[tr], d.target[tr], d.data[te], d.target[te]
    mean = xtr.mean(0)
    _, _, vt = np.linalg.svd(xtr - mean, full_matrices=False)
    axes = vt[:spec.components].T
    ptr, pte = (xtr - mean) @ axes, (xte - mean) @ axes
    scale = np.sqrt((ptr ** 2).mean())
    return ((ptr / scale).astype(np.float32), ytr.astype(np.int64), (pte / scale).astype(np.float32),
            yte.astype(np.int64))


def scenario_data(cfg: EffectiveConfig, scenario: str) -> tuple[torch.Tensor, ...]:
    """The tensors one scenario trains and tests on (its first `train_examples` training images)."""
    xtr, ytr, xte, yte = load_pca_data(cfg.data, cfg.seed)
    n = cfg.scenarios[scenario].train_examples
    if n is not None:
        xtr, ytr = xtr[:n], ytr[:n]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (xtr, ytr, xte, yte))


# ---------------------------------------------------------------- ensemble store
def ensemble_group(scenario: str) -> str:
    return f"ensemble/{scenario}"


class EnsembleWriter:
    """Appends task results to a scenario's ensemble, in task order, resumably."""

    def __init__(self, store: RunStore, scenario: str, n_weights: int, capacity: int, batch: int):
        self.store, self.group = store, ensemble_group(scenario)
        self.capacity, self.batch = capacity, batch
        g = store.group(self.group)
        attrs = dict(g.attrs)
        if attrs and (attrs.get("n_weights") != n_weights or attrs.get("batch") != batch):
            raise ConfigError(f"{store.path}/{self.group} holds an ensemble of {attrs.get('n_weights')} weights in "
                              f"tasks of {attrs.get('batch')}; this config has {n_weights} and {batch}: use a new "
                              "name or --force to start over")
        self.configs = store.create(self.group, "configs", (capacity, n_weights), ("configuration", "weight"),
                                    (CHUNK, n_weights), dtype="int8", fill_value=0)
        self.accuracy = store.create(self.group, "test_accuracy", (capacity,), ("configuration",), (CHUNK,))
        self.seed = store.create(self.group, "network_seed", (capacity,), ("configuration",), (CHUNK,),
                                 dtype="int64", fill_value=-1)
        if not attrs:
            g.attrs.update({"n_weights": n_weights, "batch": batch, "committed": 0, "tasks_committed": 0,
                            "networks_trained": 0, "networks_passed": 0, "capacity": capacity})
        elif attrs.get("capacity") != capacity:
            g.attrs["capacity"] = capacity

    @property
    def committed(self) -> int:
        return int(self.store.group(self.group).attrs["committed"])

    @property
    def next_task(self) -> int:
        return int(self.store.group(self.group).attrs["tasks_committed"])

    def done(self) -> bool:
        return self.committed >= self.capacity

    def commit(self, r: TaskResult) -> int:
        """Store the passing configurations of task r (which must be the next task); returns how many."""
        g = self.store.group(self.group)
        attrs = dict(g.attrs)
        if r.task != attrs["tasks_committed"]:
            raise RuntimeError(f"task {r.task} committed out of order (next is {attrs['tasks_committed']})")
        keep = np.flatnonzero(r.passed)[: self.capacity - attrs["committed"]]
        a, b = attrs["committed"], attrs["committed"] + len(keep)
        if len(keep):
            self.configs[a:b] = r.configs[keep]
            self.accuracy[a:b] = r.accuracy[keep]
            self.seed[a:b] = r.network_seed[keep]
        g.attrs.update({"committed": b, "tasks_committed": r.task + 1,
                        "networks_trained": attrs["networks_trained"] + len(r.passed),
                        "networks_passed": attrs["networks_passed"] + int(r.passed.sum())})
        return len(keep)


def read_ensemble(store: RunStore, scenario: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(configs K x N int8, test accuracies, attributes) of the committed configurations."""
    g = ensemble_group(scenario)
    if not store.has_group(g):
        raise ConfigError(f"{store.path} has no ensemble for scenario {scenario!r}; run "
                          "`python -m jobs.collect_ensemble` first")
    attrs = store.attrs(g)
    k = int(attrs["committed"])
    return store.read(g, "configs")[:k], store.read(g, "test_accuracy")[:k], attrs


# ---------------------------------------------------------------- collection loop
class CollectionError(UserFacingError, RuntimeError):
    """No network reaches the accuracy threshold; the message says what was tried."""


def local_results(spec: BinaryNetSpec, data: tuple, seed: int, batch: int, threshold: float, first_task: int):
    """Task results in order, computed in this process (the reference for the Ray runner)."""

    task = first_task
    while True:
        yield train_task(spec, data, seed, task, batch, threshold)
        task += 1


def collect(writer: EnsembleWriter, results, threshold: float, max_failed_tasks: int, progress=None) -> dict:
    """Commit task results (an iterator in task order, starting at `writer.next_task`) until the
    ensemble is full. Raises CollectionError after `max_failed_tasks` tasks in a row without a
    passing network. Returns counts for this call."""
    failed, best, trained, added = 0, -1.0, 0, 0
    if writer.done():
        return {"networks_trained": 0, "configurations_added": 0}
    for r in results:
        n = writer.commit(r)
        trained += len(r.passed)
        added += n
        failed, best = (failed + 1, max(best, float(r.accuracy.max()))) if not r.passed.any() else (0, -1.0)
        if progress is not None:
            progress(n)
        if writer.done():
            break
        if failed >= max_failed_tasks:
            raise CollectionError(
                f"no network reached test accuracy {threshold:.3f} in {failed} tasks in a row ({failed * writer.batch} "
                f"networks; their best accuracy {best:.3f}); lower the scenario's threshold, train longer "
                "(network.epochs), or raise collect.max_failed_tasks")
    return {"networks_trained": trained, "configurations_added": added}

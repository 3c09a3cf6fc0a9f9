"""The result of one observable at one checkpoint (named arrays with dimension names, and scalars),
and the context every observable is measured in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import RunConfig
from ..curvature.entries import EntryDesign
from ..nets.models import BiasFreeNet
from ..protocols import CurvatureOperator, Executor
from ..storage.store import RunStore


@dataclass(frozen=True)
class Context:
    """What an observable's `measure(context)` gets at one checkpoint (see `observables.registry`)."""

    model: BiasFreeNet  # the network at the checkpoint
    ckpt: dict  # the checkpoint payload (`nets.checkpoint.load_checkpoint`)
    x: torch.Tensor  # the measurement pool
    y: torch.Tensor
    cfg: RunConfig
    s: int  # minibatch size
    epoch: int
    store: RunStore
    group: str  # the checkpoint's zarr group
    executor: Executor  # where the Hessian-entry block work runs
    design: EntryDesign | None  # the sampled Hessian entries (None when hessian_entries is not measured)
    op: CurvatureOperator  # the pool Hessian
    progress: bool = False


@dataclass
class Observation:
    name: str  # subgroup inside the checkpoint group, e.g. 'hessian_entries'
    arrays: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    chunks: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def add(self, name: str, data, dims: list[str], chunks: tuple[int, ...] | None = None) -> None:
        self.arrays[name] = (np.asarray(data), list(dims))
        if chunks is not None:
            self.chunks[name] = chunks

    def write(self, store, group: str) -> None:
        """Write arrays under <group>/<name>/ and scalars as attributes of that subgroup."""
        sub = f"{group}/{self.name}"
        for key, (data, dims) in self.arrays.items():
            store.write(sub, key, data, dims, chunks=self.chunks.get(key))
        store.set_attrs({**self.attrs, "scalars": self.scalars}, group=sub)

    def metrics(self) -> dict[str, float]:
        """Scalars prefixed with the observable's name, for MLflow."""
        return {f"{self.name}.{k}": float(v) for k, v in self.scalars.items()}

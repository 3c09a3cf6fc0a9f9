"""The zarr v3 layout of a run (SPEC section 6; documented in docs/storage.md).

    <run_dir>/results.zarr/              root attrs: config, model, provenance, seeds
        training/                        dims (epoch): per-epoch loss, accuracy, plasticity
        epoch_0010/                      one group per measured checkpoint
            <observable>/...             arrays with dimension names (xarray.open_zarr reads them)

A group is marked `complete` in its attributes only after all its arrays are written; readers
and restarts treat a group without the mark as unfinished.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr

from .errors import UserFacingError

STORE_NAME = "results.zarr"


class StoreError(UserFacingError, FileNotFoundError):
    """No zarr store where one was expected."""


def checkpoint_group(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _from_json(value):
    """Inverse of `_jsonable` for what JSON cannot hold: the strings 'nan', 'inf', '-inf' become floats."""
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


class RunStore:
    """A run's zarr v3 store on disk."""

    def __init__(self, path: str | os.PathLike, mode: str = "a"):
        self.path = Path(path)
        if mode == "r" and not self.path.exists():
            raise StoreError(f"no zarr store at {self.path}; run `adaptsym train`/`measure` first")
        self.root = zarr.open_group(str(self.path), mode=mode, zarr_format=3)

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike, mode: str = "a") -> "RunStore":
        return cls(Path(run_dir) / STORE_NAME, mode=mode)

    # ------------------------------------------------------------------ attributes
    def set_attrs(self, attrs: dict, group: str | None = None) -> None:
        g = self.group(group) if group else self.root
        g.attrs.update(_jsonable(attrs))

    def attrs(self, group: str | None = None) -> dict:
        g = self.root[group] if group else self.root
        return _from_json(dict(g.attrs))

    # ------------------------------------------------------------------ groups
    def group(self, name: str) -> zarr.Group:
        return self.root.require_group(name)

    def has_group(self, name: str) -> bool:
        return name in self.root and isinstance(self.root[name], zarr.Group)

    def is_complete(self, name: str) -> bool:
        return self.has_group(name) and bool(self.root[name].attrs.get("complete", False))

    def mark_complete(self, name: str, complete: bool = True) -> None:
        self.group(name).attrs["complete"] = complete

    def reset_group(self, name: str) -> zarr.Group:
        """Delete and recreate a group (an unfinished measurement is redone from scratch)."""
        if name in self.root:
            del self.root[name]
        return self.root.require_group(name)

    # ------------------------------------------------------------------ arrays
    def write(self, group: str, name: str, data, dims: Sequence[str], chunks=None, attrs: dict | None = None):
        """Write a whole array with dimension names (overwrites)."""
        data = np.asarray(data)
        if len(dims) != data.ndim:
            raise ValueError(f"{group}/{name}: {data.ndim}-d array with dims {list(dims)}")
        if data.dtype.kind in "fc" and not np.all(np.isfinite(data)):
            raise ValueError(f"{group}/{name}: refusing to write non-finite values")
        g = self.group(group)
        arr = g.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks or "auto",
                             dimension_names=list(dims), overwrite=True)
        if data.size:
            arr[...] = data
        if attrs:
            arr.attrs.update(_jsonable(attrs))
        return arr

    def create(self, group: str, name: str, shape, dims: Sequence[str], chunks, dtype="float64", fill_value=np.nan):
        """An empty array that tiles fill chunk by chunk (chunk-aligned writes)."""
        g = self.group(group)
        if name in g:
            arr = g[name]
            if tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == tuple(chunks):
                return arr
            del g[name]
        return g.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks),
                              dimension_names=list(dims), fill_value=fill_value)

    def read(self, group: str, name: str) -> np.ndarray:
        return np.asarray(self.root[group][name][...])

    def has(self, group: str, name: str) -> bool:
        return group in self.root and name in self.root[group]

    def groups(self) -> list[str]:
        return sorted(k for k, v in self.root.groups())

    def checkpoint_groups(self) -> list[str]:
        return [g for g in self.groups() if g.startswith("epoch_")]

    def open_xarray(self, group: str):
        import xarray as xr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xr.open_zarr(str(self.path), group=group, consolidated=False, zarr_format=3)

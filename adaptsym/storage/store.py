"""The zarr v3 layout of a run (SPEC section 6; documented in docs/storage.md).

    <run_dir>/results.zarr/              root attrs: config, model, provenance, seeds
        training/                        dims (epoch): per-epoch loss, accuracy, plasticity
        epoch_0010/                      one group per measured checkpoint
            <observable>/...             arrays with dimension names (xarray.open_zarr reads them)

The store is a directory, or an object-storage URL (`s3://bucket/prefix/results.zarr`, through
fsspec and s3fs; credentials and endpoint from the standard AWS_* environment variables). A run
whose config sets `results_url` keeps its checkpoints in the run directory and its store at
`<results_url>/<name>-<model>/results.zarr`; the run directory then holds the URL in `results.url`.

A group is marked `complete` in its attributes only after all its arrays are written; readers
and restarts treat a group without the mark as unfinished.

Integrity: every array is written with a CRC-32C checksum on each chunk (after zstd), float
arrays are filled with NaN, and every chunk is written even when it equals the fill value. So a
garbled or truncated chunk fails its checksum, and a deleted chunk is a missing file, never
plausible zeros. `read` and `checked` turn either into a `CorruptDataError` that names the run,
the array and the chunk; `problems()` lists every such fault of a store (`adaptsym verify`).
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from ..errors import UserFacingError
from ..util import ceil_div

STORE_NAME = "results.zarr"
URL_POINTER = "results.url"  # in a run directory whose store lives at a URL: that URL


class StoreError(UserFacingError, FileNotFoundError):
    """No zarr store where one was expected."""


class CorruptDataError(UserFacingError, ValueError):
    """A chunk that is missing or fails its checksum; the message names the array and the chunk."""


def compressors() -> list:
    return [ZstdCodec(level=3), Crc32cCodec()]


ARRAY_CONFIG = {"write_empty_chunks": True}  # every chunk is a file: a missing one is a fault
# The same for arrays opened again later (workers, resumes): zarr keeps this setting per process,
# not in the array's metadata, and would skip a chunk equal to the fill value (an all-False
# `valid` chunk when H = 0), which then reads as missing.
zarr.config.set({"array.write_empty_chunks": True})


def default_fill(dtype) -> object:
    return np.nan if np.dtype(dtype).kind in "fc" else 0


def _chunk_range(sel, size: int, chunk: int) -> np.ndarray:
    n = ceil_div(size, chunk)
    if sel is Ellipsis or (isinstance(sel, slice) and sel == slice(None)):
        return np.arange(n)
    if isinstance(sel, slice):
        start, stop, _ = sel.indices(size)
        return np.arange(start // chunk, ceil_div(stop, chunk)) if stop > start else np.arange(0)
    return np.unique(np.asarray(sel, dtype=np.int64).ravel() // chunk)


def touched_chunks(arr, selection=Ellipsis) -> list[tuple[int, ...]]:
    """Chunk coordinates a (basic or orthogonal) selection reads."""
    sel = selection if isinstance(selection, tuple) else (selection,)
    if any(s is Ellipsis for s in sel):
        sel = tuple(slice(None) for _ in arr.shape)
    sel = sel + (slice(None),) * (len(arr.shape) - len(sel))
    ranges = [_chunk_range(s, n, c) for s, n, c in zip(sel, arr.shape, arr.chunks)]
    return [tuple(int(i) for i in t) for t in itertools.product(*ranges)]


def is_url(path) -> bool:
    """An fsspec URL (s3://, gs://, memory://...), not a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def chunk_key(arr, coords: tuple[int, ...]) -> str:
    return f"{arr.store_path.path}/{arr.metadata.encode_chunk_key(coords)}".lstrip("/")


def chunk_exists(arr, coords: tuple[int, ...]) -> bool:
    """Asked of the array's own zarr store: a file on disk (directly: every read checks this), an
    object in a bucket."""
    store = arr.store_path.store
    if isinstance(store, LocalStore):
        return (Path(store.root) / chunk_key(arr, coords)).is_file()
    return bool(sync(store.exists(chunk_key(arr, coords))))


def chunk_file(root, arr, coords: tuple[int, ...]) -> str:
    """Where a chunk lives, for messages: a path or a URL."""
    return f"{str(root).rstrip('/')}/{arr.path}/{arr.metadata.encode_chunk_key(coords)}"


def chunk_slices(arr, coords) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, arr.chunks, arr.shape))


def chunk_faults(root: Path, arr, coords_list, decode: bool = True) -> list[str]:
    """Missing or undecodable chunks among `coords_list`, one message each."""
    faults = []
    for coords in coords_list:
        f = chunk_file(root, arr, coords)
        if not chunk_exists(arr, coords):
            faults.append(f"chunk {coords} is missing ({f})")
        elif decode:
            try:
                arr[chunk_slices(arr, coords)]
            except Exception as exc:  # checksum mismatch, truncated zstd frame, ...
                why = "checksum mismatch" if "checksum" in str(exc).lower() else \
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                faults.append(f"chunk {coords} is corrupt ({f}): {why}")
    return faults


def checked(root: Path, arr, selection=Ellipsis, orthogonal: bool = False, label: str = "") -> np.ndarray:
    """arr[selection], or a CorruptDataError naming the missing or corrupt chunks it touches."""
    where = label or f"{root}/{arr.path}"
    coords = touched_chunks(arr, selection)
    missing = chunk_faults(root, arr, coords, decode=False)
    if missing:
        raise CorruptDataError(f"{where}: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                               + "; run `adaptsym verify` on the run, then `adaptsym measure` to recompute it")
    try:
        out = arr.get_orthogonal_selection(selection) if orthogonal else arr[selection]
    except Exception:
        bad = chunk_faults(root, arr, coords) or ["a chunk could not be decoded"]
        raise CorruptDataError(f"{where}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                               + "; run `adaptsym verify` on the run, then `adaptsym measure` to recompute it") from None
    return np.asarray(out)


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


def store_location(run_dir: str | os.PathLike) -> str | Path:
    """The run's store: `results.zarr` in the run directory, or the URL its `results.url` names."""
    pointer = Path(run_dir) / URL_POINTER
    if pointer.is_file():
        return pointer.read_text().strip()
    return Path(run_dir) / STORE_NAME


def store_exists(path: str | os.PathLike) -> bool:
    if is_url(path):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(path))
        return fs.exists(f"{root}/zarr.json")
    return Path(path).exists()


def open_group(path: str | os.PathLike, mode: str = "a") -> zarr.Group:
    """The zarr root group at a path or URL. At a URL, fsspec's listing cache is off: tiles that other
    processes write must be seen, and a cached directory listing would hide them."""
    if not is_url(path):
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    from zarr.storage import FsspecStore

    try:
        store = FsspecStore.from_url(str(path), storage_options={"use_listings_cache": False},
                                     read_only=mode == "r")
    except ImportError as exc:  # s3fs missing
        raise StoreError(f"cannot open {path}: {exc}; install adaptsym's `s3` extra (pip install -e '.[s3]')") from None
    return zarr.open_group(store, mode=mode, zarr_format=3)


class RunStore:
    """A run's zarr v3 store: a directory, or a URL (`s3://...`).

    `path` is a Path for a directory and the URL string otherwise; `url` is always a string every
    process can open the store with (an absolute path or the URL)."""

    def __init__(self, path: str | os.PathLike, mode: str = "a"):
        remote = is_url(path)
        self.path = str(path).rstrip("/") if remote else Path(path)
        self.url = self.path if remote else str(self.path.resolve())
        self.remote = remote
        if mode == "r" and not store_exists(self.path):
            raise StoreError(f"no zarr store at {self.path}; run `adaptsym train`/`measure` first")
        self.root = open_group(self.url, mode)

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike, mode: str = "a") -> "RunStore":
        return cls(store_location(run_dir), mode=mode)

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
                             dimension_names=list(dims), overwrite=True, compressors=compressors(),
                             fill_value=default_fill(data.dtype), config=ARRAY_CONFIG)
        if data.size:
            arr[...] = data
        if attrs:
            arr.attrs.update(_jsonable(attrs))
        return arr

    def create(self, group: str, name: str, shape, dims: Sequence[str], chunks, dtype="float64", fill_value=None):
        """An empty array that tiles fill chunk by chunk (chunk-aligned writes)."""
        g = self.group(group)
        if name in g:
            arr = g[name]
            if tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == tuple(chunks):
                return arr
            del g[name]
        return g.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks),
                              dimension_names=list(dims), compressors=compressors(), config=ARRAY_CONFIG,
                              fill_value=default_fill(dtype) if fill_value is None else fill_value)

    def read(self, group: str, name: str) -> np.ndarray:
        """The whole array; a missing or corrupt chunk is a CorruptDataError naming it."""
        return checked(self.path, self.root[group][name], label=f"{self.path}: {group}/{name}")

    def arrays(self, group=None, prefix: str = ""):
        """(path, array) of every array in the store, depth first."""
        for name, node in sorted((self.root if group is None else group).members()):
            if isinstance(node, zarr.Group):
                yield from self.arrays(node, f"{prefix}{name}/")
            else:
                yield f"{prefix}{name}", node

    def array_faults(self, group: str | None = None, unfinished_ok: Sequence[str] = ("h",)) -> list[str]:
        """Missing or corrupt chunks and arrays without checksums, in the whole store or in one
        group, one line each. In an unfinished checkpoint group, missing chunks of `unfinished_ok`
        arrays are the tiles still to compute, not faults."""
        out = []
        base = self.root[group] if group else None
        for path, node in self.arrays(base, f"{group}/" if group else ""):
            name, top = path.split("/")[-1], path.split("/")[0]
            unfinished = top.startswith("epoch_") and not self.is_complete(top)
            if "Crc32cCodec" not in [type(c).__name__ for c in node.metadata.codecs]:
                out.append(f"{path}: written without checksums (an older adaptsym); corruption cannot be detected")
            skip_missing = unfinished and name in unfinished_ok
            for fault in chunk_faults(self.path, node, touched_chunks(node)):
                if not (skip_missing and "is missing" in fault):
                    out.append(f"{path}: {fault}")
        return out

    def problems(self, unfinished_ok: Sequence[str] = ("h",)) -> list[str]:
        """Every fault of the store, one line each: `array_faults`, then unfinished checkpoint groups."""
        out = self.array_faults(unfinished_ok=unfinished_ok)
        for g in self.checkpoint_groups():
            if not self.is_complete(g):
                out.append(f"{g}: unfinished measurement (rerun `adaptsym measure` to finish it)")
        return out

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
            return xr.open_zarr(self.url, group=group, consolidated=False, zarr_format=3)

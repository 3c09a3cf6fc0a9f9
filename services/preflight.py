"""Before any tile: can every actor reach the run's result store?

Actors read and write the zarr store themselves (`adaptsym.observables.entry_blocks`), at the
driver's path. On a cluster whose nodes do not share that path, a tile would land on its node's
own disk and the driver would never see it; on object storage, a node without the bucket's
credentials or endpoint could not write at all. So the driver writes a fresh nonce into
`<store>/.preflight/nonce`; every actor reads it and writes its own token beside it; the driver then
reads every token back. An actor that cannot read the nonce, or whose token the driver cannot see,
fails the measurement at once, with one line naming its node and the path, before anything is
computed. The folder is removed afterwards.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import ray

from adaptsym.errors import UserFacingError

from .actors import PREFLIGHT_DIR


class StoreNotSharedError(UserFacingError, RuntimeError):
    """An actor's node does not share the run's store with the driver; the message names it."""


def store_preflight(actors: list, store_path: str | Path, info: list[dict] | None = None) -> None:
    root = str(store_path) if "://" in str(store_path) else str(Path(store_path).resolve())
    fs, froot = fsspec.core.url_to_fs(root)  # a directory or a bucket alike
    d = f"{froot}/{PREFLIGHT_DIR}"
    nonce = uuid.uuid4().hex
    fs.makedirs(d, exist_ok=True)
    try:
        fs.pipe_file(f"{d}/nonce", nonce.encode())
        results = ray.get([a.probe_store.remote(root, nonce, i) for i, a in enumerate(actors)])
        where = {i.get("node_id"): i.get("node_ip", "?") for i in (info or [])}
        problems = []
        for i, r in enumerate(results):
            node = f"node {r['node_id'][:12]} ({where.get(r['node_id'], '?')})"
            if not r["ok"]:
                problems.append(f"actor {i} on {node}: {r['why']}")
                continue
            mine = f"{d}/actor-{i}"
            if not fs.isfile(mine) or fs.cat_file(mine).decode() != r["token"]:
                problems.append(f"actor {i} on {node} wrote {root}/{PREFLIGHT_DIR}/actor-{i}, but the driver "
                                "does not see it")
        if problems:
            raise StoreNotSharedError(
                f"the result store {root} is not shared with every Ray node: " + "; ".join(problems)
                + ". Nothing was computed. Put the runs on a path every node mounts at the same place (a "
                "ReadWriteMany volume, NFS) or a bucket every node can write (results_url; docs/distributed.md), "
                "or run on the nodes that share it")
    finally:
        try:
            fs.rm(d, recursive=True)
        except (FileNotFoundError, OSError):
            pass

"""Ray actors. `MeasureActor` does the Hessian-entry tiles and blocks (`adaptsym.observables.entry_blocks`)
and holds a model replica with one shard of the pool for data-parallel HVPs and gradients. It
restarts after a crash (`max_restarts`) and rebuilds its state lazily from the object store, so a
restarted actor simply takes the next task."""

from __future__ import annotations

import os
import time

import numpy as np
import ray
import torch

from adaptsym.storage.provenance import resolve_device
from adaptsym.util import torch_dtype

MAX_RESTARTS = 4
PREFLIGHT_DIR = ".preflight"  # inside the run's store, removed after the check


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=-1)
class MeasureActor:
    """One worker: Hessian-entry tiles and blocks (`run`), and a model replica with one shard of
    the pool for data-parallel HVPs and gradients (`matvec_sum`, `gradient_sum`). Tasks are
    idempotent, so Ray resubmits a task whose actor died to the restarted actor."""

    def __init__(self, threads: int, use_gpu: bool):
        torch.set_num_threads(threads)
        self.device = resolve_device("auto" if use_gpu else "cpu")
        self.key, self.blocks = None, None
        self.shard_key, self.op = None, None

    def info(self) -> dict:
        import resource

        import socket

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "device": str(self.device), "threads": torch.get_num_threads(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu": torch.cuda.get_device_name(0) if self.device.type == "cuda" else None,
                "tensor_devices": self._tensor_devices()}

    def _tensor_devices(self) -> list[str]:
        """Devices of the tensors this actor computes with (its pool shard and its tile model)."""
        found = set()
        if self.op is not None:
            found |= {str(t.device) for t in (*self.op.weights, self.op.x)}
        if self.blocks is not None and self.blocks._model is not None:
            model, x, _ = self.blocks._model
            found |= {str(t.device) for t in (*model.params(), x)}
        return sorted(found)

    def probe_store(self, root: str, nonce: str, index: int) -> dict:
        """The store preflight (`services.preflight`): read the driver's nonce under `root`, then write
        this actor's token beside it. Never raises: a failure is returned with its reason."""
        import fsspec

        node = ray.get_runtime_context().get_node_id()
        shown = f"{root}/{PREFLIGHT_DIR}"
        try:
            fs, froot = fsspec.core.url_to_fs(root)
            d = f"{froot}/{PREFLIGHT_DIR}"
            got = fs.cat_file(f"{d}/nonce").decode()
        except Exception as exc:  # OSError, a missing bucket, refused credentials, no s3fs
            return {"ok": False, "node_id": node, "why": f"cannot read {shown}/nonce ({getattr(exc, 'strerror', None) or exc})"}
        if got != nonce:
            return {"ok": False, "node_id": node, "why": f"{shown} holds another nonce: a different store at the same path"}
        token = f"{nonce}:{node}:{os.getpid()}"
        try:
            fs.pipe_file(f"{d}/actor-{index}", token.encode())
        except Exception as exc:
            return {"ok": False, "node_id": node, "why": f"cannot write in {shown} ({getattr(exc, 'strerror', None) or exc})"}
        return {"ok": True, "node_id": node, "token": token}

    def run(self, key: tuple, work_ref: list, task):
        """(the task's result, compute seconds): `task.run` on this actor's `EntryBlocks`.
        `work_ref` is [ObjectRef]: fetched only for a new checkpoint."""
        from adaptsym.observables.entry_blocks import EntryBlocks

        if key != self.key:
            self.blocks = EntryBlocks(ray.get(work_ref[0]), self.device)
            self.key = key
        t0 = time.perf_counter()
        out = task.run(self.blocks)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    def _shard(self, key, payload_ref):
        if key != self.shard_key:
            from adaptsym.nets.checkpoint import model_from_checkpoint
            from adaptsym.curvature.hvp import PoolHessian

            p = ray.get(payload_ref[0])
            dtype = torch_dtype(p["dtype"])
            model = model_from_checkpoint(p, dtype=dtype, device=self.device)
            x, y = p["x"].to(self.device, dtype), p["y"].to(self.device, dtype)
            self.op = None  # the last checkpoint's graphs go before the next ones are built
            self.op = PoolHessian(model.plan, model.params(), x, y, chunk=p["chunk"],
                                  graph_budget_bytes=p.get("graph_budget_bytes"))
            self.shard_key = key
        return self.op

    def matmat_sum(self, key, payload_ref, M: np.ndarray) -> np.ndarray:
        """sum_k H_k M over this actor's shard (not divided by n), M a flat (N, m) batch."""
        op = self._shard(key, payload_ref)
        return (op.matmat(torch.as_tensor(M, device=self.device)) * op.n).cpu().numpy()

    def gradient_sum(self, key, payload_ref) -> list:
        op = self._shard(key, payload_ref)
        return [(g * op.n).cpu().numpy() for g in op.gradient()]

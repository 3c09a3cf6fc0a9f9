"""`RayExecutor`: runs `adaptsym.observables.entry_blocks` work on Ray actors, with retries and progress.

Same interface as `adaptsym.observables.executor.LocalExecutor`. One actor per GPU where the cluster has
GPUs, else CPU actors with a fixed torch thread count. Each actor has two tasks in flight (the
next one waits in its queue while the driver records the last result). A task
whose actor dies is resubmitted by Ray to the restarted actor; a task that raises is resubmitted
by this loop, up to `max_tile_retries` times, after which the measurement stops with a
`TileError` naming the tile and the last error. Results
reach `on_result` in the driver as they arrive (the driver marks tiles done there), so whatever
finished before a failure or a killed driver is kept and a rerun resumes.

Nodes: each actor's node is recorded at start. While waiting for results the loop polls every
`poll_s` seconds; an actor whose node Ray reports dead is dropped (it cannot restart where its
resources were) and its in-flight tiles go to the other actors, so the measurement finishes on the
remaining nodes (tiles are idempotent: a tile computed twice writes the same chunk). The pool
operator's products (`ShardedHessian`) need every shard: a node lost during them stops the
checkpoint with `NodeLostError`, and a rerun resumes from the finished checkpoints and tiles.
`check_store` is the preflight of `services.preflight`.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Callable, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from tqdm.auto import tqdm

from adaptsym.curvature.operator import HessianOperator
from adaptsym.errors import TileError, UserFacingError
from adaptsym.progress import bar_off
from adaptsym.protocols import R, Task

from .actors import MeasureActor


def _describe(task) -> str:
    """A task for a message: its type and its small integer fields, e.g. HTileTask(3, 1)."""
    small = [t for t in task if isinstance(t, (int, np.integer))]
    return f"{type(task).__name__}{tuple(int(t) for t in small)}"


class NodeLostError(UserFacingError, RuntimeError):
    """Every actor, or an actor the current step cannot do without, was on a node that died."""


def dead_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive", False)}


def wait_watching(refs: list, nodes: list[str], what: str, poll_s: float = 5.0) -> list:
    """ray.get(refs), but a NodeLostError instead of waiting forever when a node in `nodes` dies."""
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        lost = set(nodes) & dead_nodes()
        if pending and lost:
            raise NodeLostError(f"node(s) {', '.join(n[:12] for n in sorted(lost))} died during {what}; finished "
                                "checkpoints and tiles are kept: rerun the same command to resume on the nodes left")
    return ray.get(list(refs))


class RayExecutor:
    name = "ray"

    def __init__(self, n_actors: int | None = None, threads_per_actor: int = 1, max_tile_retries: int = 3,
                 on_progress: Callable | None = None, inflight_per_actor: int = 2, poll_s: float = 5.0,
                 start_timeout_s: float = 120.0, actor_resources: dict | None = None):
        res: dict = {}
        for node in ray.nodes():  # live nodes only: a node that just died may still be counted by Ray
            if node.get("Alive"):
                for k, v in node.get("Resources", {}).items():
                    res[k] = res.get(k, 0) + v
        gpus = int(res.get("GPU", 0))
        self.use_gpu = gpus > 0
        if self.use_gpu:
            n = n_actors or gpus
            opts = {"num_gpus": 1, "num_cpus": 1}
        else:
            n = n_actors or max(1, int(res.get("CPU", 1)) // threads_per_actor)
            opts = {"num_cpus": threads_per_actor}
        if actor_resources:  # custom resources pin the actors to chosen nodes (benchmarks)
            opts["resources"] = dict(actor_resources)
        self.actors = [MeasureActor.options(**opts).remote(threads_per_actor, self.use_gpu) for _ in range(n)]
        self.threads = threads_per_actor
        self.max_tile_retries = max_tile_retries
        self.inflight_per_actor = inflight_per_actor  # 2: the next task waits in the actor's queue
        self.on_progress = on_progress
        self._work_key, self._work_ref = None, None
        self.busy_seconds = 0.0  # compute time reported by actors (for the overhead benchmark)
        self.poll_s = poll_s
        self.dropped: list[dict] = []  # actors lost with their node: {"node_id"}
        self.nodes = self._started(start_timeout_s)  # each actor's node, in actor order

    def _started(self, timeout: float) -> list[str]:
        """Wait up to `timeout` s for the actors to start; those that cannot (their resources are not
        free, e.g. on a node that is going away) are dropped with a warning. Returns their nodes."""
        refs = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        keep = [i for i, r in enumerate(refs) if r in ready]
        if len(keep) < len(refs):
            for i in set(range(len(refs))) - set(keep):
                ray.kill(self.actors[i], no_restart=True)
            print(f"adaptsym: warning: {len(refs) - len(keep)} of {len(refs)} Ray actors did not start within "
                  f"{timeout:.0f} s (their resources are not free); going on with {len(keep)}", flush=True)
            if not keep:
                raise NodeLostError("no Ray actor could start: the cluster has no free resources for one "
                                    "(`ray status` shows them)")
        self.actors = [self.actors[i] for i in keep]
        return [ray.get(refs[i])["node_id"] for i in keep]

    def check_store(self, store_path) -> None:
        """Every actor can read and write the run's store at the driver's path (`services.preflight`)."""
        from .preflight import store_preflight

        store_preflight(self.actors, store_path, self.info())

    def _drop_lost(self, inflight: dict, queue: deque, idle: deque) -> None:
        """Drop the actors whose node died; their in-flight tasks go back to the queue."""
        dead = dead_nodes()
        lost = [a for a, n in zip(self.actors, self.nodes) if n in dead]
        if not lost:
            return
        for ref, (i, actor) in list(inflight.items()):
            if actor in lost:
                del inflight[ref]
                queue.appendleft(i)
        for actor in lost:
            k = self.actors.index(actor)
            self.dropped.append({"node_id": self.nodes[k]})
            del self.actors[k], self.nodes[k]
            ray.kill(actor, no_restart=True)
        for a in list(idle):
            if a in lost:
                idle.remove(a)
        if not self.actors:
            raise NodeLostError("every actor's node died; finished tiles are kept: rerun the same command to "
                                "resume on a cluster with live nodes")

    def info(self) -> list[dict]:
        return ray.get([a.info.remote() for a in self.actors])

    def actor_pids(self) -> list[int]:
        return [i["pid"] for i in self.info()]

    def _ref(self, work):
        if work.key != self._work_key:
            self._work_key, self._work_ref = work.key, ray.put(work)
        return self._work_ref

    def run(self, work, tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None], desc: str | None = None,
            progress: bool = False) -> None:
        ref = [self._ref(work)]
        queue = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        inflight: dict = {}
        idle = deque(a for _ in range(self.inflight_per_actor) for a in self.actors)
        kind = type(tasks[0]) if tasks else None
        bar = tqdm(total=len(tasks), desc=desc or getattr(kind, "__name__", "tasks"), disable=bar_off(progress),
                   unit="tile", leave=False)
        done = 0
        try:
            while queue or inflight:
                while queue and idle:
                    i, actor = queue.popleft(), idle.popleft()
                    inflight[actor.run.remote(work.key, ref, tasks[i])] = (i, actor)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
                if not ready:
                    self._drop_lost(inflight, queue, idle)
                for r in ready:
                    i, actor = inflight.pop(r)
                    idle.append(actor)
                    try:
                        result, seconds = ray.get(r)
                    except (RayActorError, RayTaskError) as exc:
                        attempts[i] += 1
                        if attempts[i] > self.max_tile_retries:
                            cause = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
                            raise TileError(
                                f"tile {_describe(tasks[i])} of {work.group} failed {attempts[i]} times; "
                                f"last error: {type(exc).__name__}: {cause}. Finished tiles are kept: fix the cause "
                                "and rerun the same command to resume") from exc
                        queue.appendleft(i)
                        continue
                    self.busy_seconds += seconds
                    on_result(tasks[i], result)
                    done += 1
                    bar.update(1)
                    if self.on_progress:
                        self.on_progress(kind, done, len(tasks))
        except BaseException:
            for r in inflight:
                ray.cancel(r, force=False)
            raise
        finally:
            bar.close()

    # ------------------------------------------------------------------ data-parallel operator
    def pool_hessian(self, model, ckpt: dict, x: torch.Tensor, y: torch.Tensor, dtype: str, chunk: int,
                     graph_budget_mb: float | None = None):
        return ShardedHessian(self.actors, model, ckpt, x, y, dtype, chunk, graph_budget_mb, list(self.nodes),
                              self.poll_s)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


class ShardedHessian(HessianOperator):
    """Pool products and gradients summed over shards held by the actors (the driver reduces).

    A `HessianOperator` like `PoolHessian`: its `_matmat` hook sends a batch of vectors to every
    actor, which multiplies it by the Hessian of its shard, and sums; `matvec` and the other
    products derive from it. `weights` is the driver's copy (shapes, dtype, device)."""

    def __init__(self, actors, model, ckpt: dict, x: torch.Tensor, y: torch.Tensor, dtype: str, chunk: int,
                 graph_budget_mb: float | None = None, nodes: list[str] | None = None, poll_s: float = 5.0):
        self.actors = list(actors)
        self.nodes, self.poll_s = nodes or [], poll_s
        self.weights = tuple(w.detach() for w in model.params())
        self.n = len(x)
        self.key = uuid.uuid4().hex
        shards = np.array_split(np.arange(self.n), len(actors))
        base = {"model_spec": ckpt["model_spec"], "input_shape": ckpt["input_shape"],
                "weights": [w.detach().cpu() for w in ckpt["weights"]], "dtype": dtype, "chunk": chunk,
                "graph_budget_bytes": None if graph_budget_mb is None else graph_budget_mb * 2**20}
        xc, yc = x.detach().cpu(), y.detach().cpu()
        self.refs = [ray.put({**base, "x": xc[idx], "y": yc[idx]}) for idx in shards]

    def _matmat(self, vs: tuple) -> tuple:
        m = vs[0].shape[0]
        M = torch.cat([t.reshape(m, -1) for t in vs], dim=1).T.detach().cpu().numpy()  # (N, m)
        parts = wait_watching([a.matmat_sum.remote(self.key, [r], M) for a, r in zip(self.actors, self.refs)],
                              self.nodes, "a pool Hessian product", self.poll_s)
        HM = torch.as_tensor(np.sum(parts, axis=0) / self.n, dtype=vs[0].dtype, device=vs[0].device)
        out, i = [], 0
        for w in self.weights:
            out.append(HM[i : i + w.numel()].T.reshape((m,) + tuple(w.shape)))
            i += w.numel()
        return tuple(out)

    def gradient(self) -> tuple:
        parts = wait_watching([a.gradient_sum.remote(self.key, [r]) for a, r in zip(self.actors, self.refs)],
                              self.nodes, "the pool gradient", self.poll_s)
        w0 = self.weights[0]
        return tuple(torch.as_tensor(sum(p[i] for p in parts) / self.n, dtype=w0.dtype, device=w0.device)
                     for i in range(len(self.weights)))

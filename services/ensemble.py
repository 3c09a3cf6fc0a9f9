"""Ray actors that train binary-weight networks for the effective-model ensemble
(`adaptsym.effective.binary_net`, `adaptsym.effective.collection`). Each actor uses one thread, so a task's bits do
not depend on which actor ran it; a restarted actor reruns its task to the same bits."""

from __future__ import annotations

import time

import ray
import torch

from adaptsym.effective.binary_net import BinaryNetSpec, TaskResult, train_task

MAX_RESTARTS = 4


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=-1)
class EnsembleActor:
    """Trains tasks of networks; holds the current scenario's data (fetched once per scenario)."""

    def __init__(self):
        torch.set_num_threads(1)
        self.key, self.data = None, None
        self.busy_s = 0.0

    def train(self, key: str, data_ref: list, spec: BinaryNetSpec, seed: int, task: int, batch: int,
              threshold: float) -> TaskResult:
        if key != self.key:
            self.data, self.key = ray.get(data_ref[0]), key
        t0 = time.perf_counter()
        out = train_task(spec, self.data, seed, task, batch, threshold)
        self.busy_s += time.perf_counter() - t0
        return out

    def busy_seconds(self) -> float:
        return self.busy_s


class RayTaskRunner:
    """Yields task results in task order from `n_actors` actors, each with `in_flight` tasks
    queued. Closing the generator cancels what is still queued."""

    def __init__(self, n_actors: int, in_flight: int = 2):
        self.actors = [EnsembleActor.options(num_cpus=1).remote() for _ in range(n_actors)]
        self.in_flight = in_flight

    def results(self, key: str, data: tuple, spec: BinaryNetSpec, seed: int, batch: int, threshold: float,
                first_task: int):
        data_ref = [ray.put(data)]
        pending: dict = {}  # task -> ObjectRef; results are awaited in task order
        next_submit, next_yield = first_task, first_task
        try:
            while True:
                while len(pending) < len(self.actors) * self.in_flight:
                    actor = self.actors[next_submit % len(self.actors)]
                    pending[next_submit] = actor.train.remote(key, data_ref, spec, seed, next_submit, batch, threshold)
                    next_submit += 1
                result = ray.get(pending.pop(next_yield))
                next_yield += 1
                yield result
        finally:
            for ref in pending.values():
                ray.cancel(ref, force=False)

    def busy_seconds(self) -> list[float]:
        return ray.get([a.busy_seconds.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)

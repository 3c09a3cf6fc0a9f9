"""The ensemble of the effective model: accepted binary weight configurations, collected task by
task and streamed into zarr, resumably.

Layout, in `<out>/<name>/results.zarr`, group `ensemble/<scenario>`:
    configs        (configuration, weight) int8 in {-1, +1}, chunks of 1024 configurations
    test_accuracy  (configuration,) float64
    network_seed   (configuration,) int64: task * batch + index in the task
and attributes `committed` (configurations stored), `tasks_committed` (tasks done, in order),
`networks_trained`, `networks_passed`. Results are committed strictly in task order, rows first
and the counters after them, so a killed collection resumes at its first uncommitted task and
rewrites the same rows with the same bits: nothing is duplicated or lost. The tasks run here
(`local_results`) or on Ray actors (`services.ensemble`).
"""

from __future__ import annotations

import numpy as np

from ..config import ConfigError
from ..errors import UserFacingError
from ..storage.store import RunStore
from .binary_net import BinaryNetSpec, TaskResult, train_task

CHUNK = 1024


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

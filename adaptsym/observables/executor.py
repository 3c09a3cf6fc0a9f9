"""Where block-level work runs. `LocalExecutor` runs it in this process, one task after another;
`services.executor.RayExecutor` runs the same tasks on Ray actors. Both call `task.run(blocks)` on
a worker's `EntryBlocks` and hand `on_result(task, result)` to the driver as results arrive, which
is where the driver records progress (`protocols.Executor`)."""

from __future__ import annotations

from typing import Callable, Sequence

from tqdm.auto import tqdm

from .entry_blocks import EntryBlocks, EntryWork
from ..progress import bar_off
from ..protocols import CurvatureOperator, R, Task
from ..curvature.hvp import PoolHessian


class LocalExecutor:
    name = "local"

    def __init__(self, device=None):
        self.device = device
        self._blocks: dict = {}

    def run(self, work: EntryWork, tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None],
            desc: str | None = None, progress: bool = False) -> None:
        if work.key not in self._blocks:
            self._blocks = {work.key: EntryBlocks(work, self.device)}  # one checkpoint at a time
        blocks = self._blocks[work.key]
        label = desc or (type(tasks[0]).__name__ if tasks else "tasks")
        for task in tqdm(tasks, desc=label, disable=bar_off(progress), unit="tile", leave=False):
            on_result(task, task.run(blocks))

    def pool_hessian(self, model, ckpt: dict, x, y, dtype: str, chunk: int,
                     graph_budget_mb: float | None = None) -> CurvatureOperator:
        budget = None if graph_budget_mb is None else graph_budget_mb * 2**20
        return PoolHessian(model.plan, model.params(), x, y, chunk=chunk, graph_budget_bytes=budget)

    def check_store(self, store_path) -> None:
        """In process: the store is this process's own."""

    def close(self) -> None:
        self._blocks = {}

"""The two seams that the measurement runs through, as structural types.

- `CurvatureOperator`: the pool Hessian as an operator. `adaptsym.curvature.hvp.PoolHessian` (this
  process) and `services.executor.ShardedHessian` (Ray actors, one pool shard each) satisfy it;
  `spectrum`, `gradients` and `measure` use nothing else of either.
- `Executor`: where the block work of the Hessian-entry measurement runs, and who builds the
  curvature operator. `adaptsym.observables.executor.LocalExecutor` and `services.executor.RayExecutor`
  satisfy it.

Both are `runtime_checkable`, and the tests check every implementation against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence, TypeVar, runtime_checkable

import torch

if TYPE_CHECKING:  # type names only: importing them here would be a cycle (entry_blocks uses the store)
    from .observables.entry_blocks import EntryBlocks, EntryWork

R = TypeVar("R", covariant=True)  # the result type of a task


@runtime_checkable
class CurvatureOperator(Protocol):
    """H = (1/n) sum_k Hessian of the loss of pool example k, by products only
    (`curvature.operator.HessianOperator` implements it from one product hook)."""

    weights: tuple[torch.Tensor, ...]  # the point H is taken at (shapes, dtype, device)
    n: int  # pool examples

    @property
    def n_params(self) -> int: ...

    def matmat(self, M: torch.Tensor) -> torch.Tensor:
        """H M for a flat (n_params, m) matrix."""
        ...

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector of length n_params."""
        ...

    def gradient(self) -> tuple[torch.Tensor, ...]:
        """The pool risk's gradient, one tensor per weight tensor."""
        ...


@runtime_checkable
class Task(Protocol[R]):
    """One unit of the Hessian-entry block work (`observables.entry_blocks.TASKS`): its type names
    the `EntryBlocks` method it runs and the frozen result that comes back."""

    def run(self, blocks: "EntryBlocks") -> R:
        """Do this unit of work on a worker's `EntryBlocks`."""
        ...


@runtime_checkable
class Executor(Protocol):
    name: str

    def run(self, work: "EntryWork", tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None],
            desc: str | None = None, progress: bool = False) -> None:
        """Run `task.run(blocks)` for every task on an `EntryBlocks` of `work`; the driver gets
        `on_result(task, result)` with the task's frozen result, as results arrive."""
        ...

    def pool_hessian(self, model, ckpt: dict, x: torch.Tensor, y: torch.Tensor, dtype: str, chunk: int,
                     graph_budget_mb: float | None = None) -> CurvatureOperator:
        """The curvature operator of `model` on the pool (x, y)."""
        ...

    def check_store(self, store_path) -> None:
        """Fail before any work when a worker cannot read and write the run's store at `store_path`."""
        ...

    def close(self) -> None: ...

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

from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:  # type names only: importing them here would be a cycle (entry_blocks uses the store)
    from .observables.entry_blocks import EntryWork


@runtime_checkable
class CurvatureOperator(Protocol):
    """H = (1/n) sum_k Hessian of the loss of pool example k, by products only."""

    weights: tuple[torch.Tensor, ...]  # the point H is taken at (shapes, dtype, device)
    n: int  # pool examples

    @property
    def n_params(self) -> int: ...

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector of length n_params."""
        ...

    def gradient(self) -> tuple[torch.Tensor, ...]:
        """The pool risk's gradient, one tensor per weight tensor."""
        ...


@runtime_checkable
class Executor(Protocol):
    name: str

    def run(self, work: "EntryWork", method: str, tasks: Sequence[tuple], on_result: Callable[[tuple, object], None],
            desc: str | None = None, progress: bool = False) -> None:
        """Run `EntryBlocks.<method>(*task)` for every task (an `entry_blocks` task NamedTuple); the
        driver gets `on_result(task, result)` with the method's frozen result."""
        ...

    def pool_hessian(self, model, ckpt: dict, x: torch.Tensor, y: torch.Tensor, dtype: str, chunk: int,
                     graph_budget_mb: float | None = None) -> CurvatureOperator:
        """The curvature operator of `model` on the pool (x, y)."""
        ...

    def close(self) -> None: ...

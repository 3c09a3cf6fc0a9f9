"""Losses of one output T(x) against labels y in {-1, +1}, and the risk R = mean_k l_k (SPEC section 1).

The measurement's loss is the hinge l = max(0, 1 - y T(x)). Since l'' = 0 almost everywhere, the
Hessian of R is then mean_k l'_k y_k grad^2 T(x_k) with l'_k = -1 where the margin y_k T(x_k) < 1
and 0 otherwise, and examples with margin > 1 contribute nothing.

The operators (`hvp.PoolHessian`, the per-example entries of `per_example`) take the loss as an
argument (`loss=`, hinge by default), as curvlinops takes `loss_func`: a `Loss` names the
per-example loss and, where it has one, the test that tells which examples can have a non-zero
gradient or Hessian (the others are skipped, exactly). Also here: the square loss
(T - y)^2 / 2 and the logistic loss log(1 + exp(-y T)) (binary cross-entropy on +-1 labels),
whose Hessians have the Gauss-Newton term that the hinge's lacks; every example counts for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .models import forward


def hinge(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example hinge loss."""
    return torch.clamp(1.0 - y * out, min=0.0)


def hinge_active(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Examples with margin y T(x) <= 1: the only ones with a non-zero hinge gradient or Hessian
    (torch's clamp passes the gradient at exactly 0, so margin 1 counts)."""
    return 1.0 - y * out >= 0


def square(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y) ** 2


def logistic(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.softplus(-y * out)


@dataclass(frozen=True)
class Loss:
    """A per-example loss l(T(x), y), and optionally which examples can contribute (None: all)."""

    name: str
    per_example: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    active: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_example(out, y)


def _hinge(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return hinge(out, y)  # looked up at call time: HINGE is always this module's `hinge`


HINGE = Loss("hinge", _hinge, hinge_active)
SQUARE = Loss("square", square)
LOGISTIC = Loss("logistic", logistic)
LOSSES = {loss.name: loss for loss in (HINGE, SQUARE, LOGISTIC)}


def risk(plan, weights, x, y, loss: Loss = HINGE) -> torch.Tensor:
    return loss(forward(plan, weights, x), y).mean()


def margin_active(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 where the example has margin < 1 (it contributes to gradient and Hessian)."""
    return (y * out < 1.0).to(out.dtype)

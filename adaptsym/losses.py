"""Hinge loss l = max(0, 1 - y T(x)) and the risk R = mean_k l_k (SPEC section 1).

Since l'' = 0 almost everywhere, the Hessian of R is mean_k l'_k y_k grad^2 T(x_k) with
l'_k = -1 where the margin y_k T(x_k) < 1 and 0 otherwise.
"""

from __future__ import annotations

import torch

from .models import forward


def hinge(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example hinge loss."""
    return torch.clamp(1.0 - y * out, min=0.0)


def risk(plan, weights, x, y) -> torch.Tensor:
    return hinge(forward(plan, weights, x), y).mean()


def margin_active(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 where the example has margin < 1 (it contributes to gradient and Hessian)."""
    return (y * out < 1.0).to(out.dtype)

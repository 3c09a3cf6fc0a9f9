"""Weight and gradient distributions against scipy.stats and autograd (SPEC section 3)."""

import numpy as np
import pytest
import torch
from scipy import stats

from adaptsym.observables.gradients import GRAD_EDGES, measure_gradients
from adaptsym.curvature.hvp import PoolHessian
from adaptsym.nets.losses import hinge
from adaptsym.observables.weights import measure_weights, weight_edges


def test_weight_moments_equal_scipy_and_bins_are_fixed(small):
    model, _, _ = small
    obs = measure_weights(model.params(), bins=32)
    for li, w in enumerate(model.params()):
        v = w.detach().numpy().ravel()
        assert obs.arrays["mean"][0][li] == pytest.approx(v.mean())
        assert obs.arrays["std"][0][li] == pytest.approx(v.std())
        assert obs.arrays["skew"][0][li] == pytest.approx(stats.skew(v))
        assert obs.arrays["exkurt"][0][li] == pytest.approx(stats.kurtosis(v))
        assert obs.arrays["hist"][0][li].sum() == v.size
        np.testing.assert_array_equal(obs.arrays["edges"][0][li], weight_edges(w.shape, 32))
    # doubling the weights changes the counts but not the bins
    doubled = measure_weights(tuple(2 * w for w in model.params()), bins=32)
    np.testing.assert_array_equal(doubled.arrays["edges"][0], obs.arrays["edges"][0])


def test_gradient_norm_and_omega(small):
    model, x, y = small
    op = PoolHessian(model.plan, model.params(), x, y)
    obs = measure_gradients(op, lr=0.1)
    w = tuple(t.detach().clone().requires_grad_(True) for t in model.params())
    from adaptsym.nets.models import forward

    g = torch.autograd.grad(hinge(forward(model.plan, w, x), y).mean(), w)
    n2 = sum(float((t**2).sum()) for t in g)
    assert obs.scalars["grad_norm2"] == pytest.approx(n2, rel=1e-10)
    assert obs.scalars["omega"] == pytest.approx(0.1 * n2, rel=1e-10)
    assert obs.arrays["hist"][0].sum(axis=1).tolist() == [t.numel() for t in g]
    assert len(obs.arrays["edges"][0]) == len(GRAD_EDGES)

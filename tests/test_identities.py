"""SPEC section 2: exact identities of bias-free ReLU nets, checked against brute-force Hessians."""

import numpy as np
import torch

from adaptsym.curvature.hvp import PoolHessian
from adaptsym.nets.losses import hinge
from adaptsym.nets.models import flatten_params, forward, unflatten_params


def brute_hessian(model, x, y):
    w0 = flatten_params(model.params()).detach()
    f = lambda v: hinge(forward(model.plan, unflatten_params(v, model.shapes), x), y).mean()
    return torch.autograd.functional.hessian(f, w0)


def test_same_layer_blocks_are_zero_and_trace_vanishes(small):
    model, x, y = small
    H = brute_hessian(model, x, y)
    assert H.abs().max() > 1e-3  # the test is not vacuous
    off = model.index.offsets
    for l in range(model.n_layers):
        assert torch.count_nonzero(H[off[l]:off[l + 1], off[l]:off[l + 1]]) == 0
    assert torch.trace(H).item() == 0.0
    # and the HVP operator agrees with the brute force everywhere
    Hop = PoolHessian(model.plan, model.params(), x, y, chunk=4).dense()
    assert torch.allclose(Hop, H, rtol=1e-8, atol=1e-12)


def test_homogeneity_h_theta_equals_L_minus_1_grad(small):
    model, x, y = small
    op = PoolHessian(model.plan, model.params(), x, y)
    theta = flatten_params(model.params()).detach()
    g = flatten_params(op.gradient())
    L = model.n_layers
    assert g.norm() > 1e-3
    assert torch.allclose(op.matvec(theta), (L - 1) * g, rtol=1e-9, atol=1e-12)
    dbl = PoolHessian(model.plan, model.params(), x, y, method="double-backward")
    assert torch.allclose(dbl.matvec(theta), (L - 1) * g, rtol=1e-9, atol=1e-12)


def test_examples_with_margin_at_least_one_contribute_nothing(small):
    model, x, y = small
    with torch.no_grad():
        t = model(x)
    # T is homogeneous of degree 1 in x: rescale some examples (T != 0) to margin exactly 2
    big = (torch.arange(len(x)) % 2 == 0) & (t.abs() > 1e-6)
    assert big.sum() >= 2 and (~big).sum() >= 2
    x2 = x.clone()
    x2[big] = x[big] * (2.0 / t[big].abs()).reshape((-1,) + (1,) * (x.dim() - 1))
    y2 = y.clone()
    y2[big] = torch.sign(t[big])
    with torch.no_grad():
        assert torch.all(y2[big] * model(x2[big]) >= 1.0 - 1e-12)
    H_all = brute_hessian(model, x2, y2) * len(x2)
    H_small = brute_hessian(model, x2[~big], y2[~big]) * int((~big).sum())
    assert H_small.abs().max() > 1e-3
    assert torch.allclose(H_all, H_small, rtol=1e-10, atol=1e-12)
    for k in np.nonzero(big.numpy())[0]:
        assert torch.count_nonzero(brute_hessian(model, x2[k:k + 1], y2[k:k + 1])) == 0

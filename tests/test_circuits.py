"""Basis circuits: exact path sums reproduce T(x), gradients and Hessian entries (SPEC section 3)."""

import numpy as np
import pytest
import torch

from adaptsym.observables.circuits import loss_slope, measure_circuits, walk
from adaptsym.config import ModelSpec
from adaptsym.nets.losses import hinge
from adaptsym.nets.models import BiasFreeNet, flatten_params, forward, unflatten_params

NETS = [(ModelSpec(kind="mlp", hidden=[4, 3]), (3,)),
        (ModelSpec(kind="cnn", conv=[2, "M", 2], hidden=[3]), (1, 4, 4))]


@pytest.fixture(params=range(len(NETS)), ids=["mlp", "cnn"])
def net(request):
    spec, shape = NETS[request.param]
    model = BiasFreeNet(spec, shape, seed=1, dtype=torch.float64)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return model, x


def test_path_sums_reproduce_t_gradient_and_hessian(net):
    model, x = net
    paths = walk(model.plan, model.params(), x, "all")
    T = model(x[None])[0].item()
    assert T != 0
    assert paths.value.sum() == pytest.approx(T, rel=1e-10)
    y = 1.0 if T < 0.5 else -1.0  # a margin below 1: l' = -1, the loss is active
    c = loss_slope(model.plan, model.params(), x, y)
    assert c == -y
    w0 = flatten_params(model.params()).detach()
    loss = lambda v: hinge(forward(model.plan, unflatten_params(v, model.shapes), x[None]), torch.tensor([y])).sum()
    g = torch.autograd.functional.jacobian(loss, w0).numpy()
    H = torch.autograd.functional.hessian(loss, w0).numpy()
    P, L = paths.w.shape
    grad = np.zeros_like(g)
    hess = np.zeros_like(H)
    for l in range(L):
        np.add.at(grad, paths.widx[:, l], c * paths.without(np.full((P, 1), l)))
        for m in range(l + 1, L):
            v = c * paths.without(np.stack([np.full(P, l), np.full(P, m)], axis=1))
            np.add.at(hess, (paths.widx[:, l], paths.widx[:, m]), v)
    assert np.abs(g).max() > 1e-3 and np.abs(H).max() > 1e-3
    np.testing.assert_allclose(grad, g, atol=1e-12)
    np.testing.assert_allclose(hess + hess.T, H, atol=1e-12)  # same-layer blocks are 0 on both sides


@pytest.mark.parametrize("mode", ["uniform", "active"])
def test_sampled_paths_give_unbiased_estimates_of_t(net, mode):
    model, x = net
    p = walk(model.plan, model.params(), x, mode, 40000, np.random.default_rng(0))
    est = p.value * np.exp(-p.logp)
    T = model(x[None])[0].item()
    assert abs(est.mean() - T) < 5 * est.std() / np.sqrt(len(est)) + 1e-12
    if mode == "active":
        assert np.all(p.gate == 1)  # conditioned on active gates: every path is alive


def test_measure_circuits_records_both_modes(net):
    model, x = net
    xs = torch.stack([x, -x, 2 * x])
    obs = measure_circuits(model.plan, model.params(), xs, torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64),
                           n_examples=3, n_paths=50, seed=0, epoch=0)
    for mode in ("uniform", "active"):
        for order in ("order0", "order1", "order2"):
            assert obs.arrays[f"{mode}_{order}"][0].shape == (150,)
    assert obs.scalars["active.order0_nonzero_fraction"] >= obs.scalars["uniform.order0_nonzero_fraction"]


def test_dead_network_gives_dead_active_paths():
    model = BiasFreeNet(ModelSpec(kind="mlp", hidden=[3]), (2,), seed=0, dtype=torch.float64)
    with torch.no_grad():
        model.weights[0].copy_(-model.weights[0].abs())  # every hidden unit off for x >= 0
    p = walk(model.plan, model.params(), torch.tensor([1.0, 2.0], dtype=torch.float64), "active", 10)
    assert np.all(p.value == 0) and np.all(np.isfinite(p.logp))

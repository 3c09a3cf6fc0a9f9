"""Stochastic Lanczos quadrature against closed forms and exact small-network spectra."""

import numpy as np
import pytest
import torch

from adaptsym.hvp import PoolHessian
from adaptsym.spectrum import (default_sigma, lanczos, measure_spectrum, ritz, slq, smoothed_density,
                               symmetry_score)


def semicircle_cdf(x):
    x = np.clip(x, -2, 2)
    return 0.5 + (x * np.sqrt(4 - x * x) / 4 + np.arcsin(x / 2)) / np.pi


def mp_density(x, g):
    lo, hi = (1 - np.sqrt(g)) ** 2, (1 + np.sqrt(g)) ** 2
    out = np.zeros_like(x)
    m = (x > lo) & (x < hi)
    out[m] = np.sqrt((hi - x[m]) * (x[m] - lo)) / (2 * np.pi * g * x[m])
    return out


@pytest.fixture(scope="module")
def goe():
    rng = np.random.default_rng(0)
    n = 1200
    a = rng.standard_normal((n, n))
    return torch.tensor((a + a.T) / np.sqrt(2 * n))


def test_slq_recovers_the_semicircle(goe):
    res = slq(lambda v: goe @ v, goe.shape[0], starts=8, steps=60, rng=np.random.default_rng(1))
    assert res.moment(2) == pytest.approx(1.0, abs=0.05)  # semicircle: m2 = 1, m4 = 2
    assert res.moment(4) == pytest.approx(2.0, abs=0.12)
    xs = np.linspace(-1.9, 1.9, 39)
    assert np.abs(res.cdf(xs) - semicircle_cdf(xs)).max() < 0.03
    lo, hi = res.extremes
    assert lo == pytest.approx(-2, abs=0.1) and hi == pytest.approx(2, abs=0.1)
    # smoothed density integrates to 1 and follows the law in the bulk
    sigma = default_sigma(res.nodes, res.weights, 0.02)
    grid = np.linspace(-2.5, 2.5, 501)
    rho = smoothed_density(res.nodes, res.weights, grid, sigma)
    assert np.trapezoid(rho, grid) == pytest.approx(1.0, abs=0.01)
    bulk = np.abs(grid) < 1.5
    assert np.abs(rho[bulk] - np.sqrt(4 - grid[bulk] ** 2) / (2 * np.pi)).max() < 0.06


def test_slq_recovers_marchenko_pastur():
    rng = np.random.default_rng(2)
    n, p = 2400, 1200
    g = p / n
    x = rng.standard_normal((n, p))
    W = torch.tensor(x.T @ x / n)
    res = slq(lambda v: W @ v, p, starts=8, steps=60, rng=rng)
    assert res.moment(1) == pytest.approx(1.0, abs=0.03)
    assert res.moment(2) == pytest.approx(1 + g, abs=0.06)
    grid = np.linspace(0.2, 2.7, 200)
    law = np.cumsum(mp_density(grid, g)) * (grid[1] - grid[0]) + (grid[0] > 0) * 0
    law += 1 - law[-1]  # mass below the grid start
    assert np.abs(res.cdf(grid) - law).max() < 0.04


def test_symmetry_score(goe):
    res = slq(lambda v: goe @ v, goe.shape[0], starts=4, steps=50, rng=np.random.default_rng(3))
    sigma = default_sigma(res.nodes, res.weights, 0.02)
    assert symmetry_score(res.nodes, res.weights, sigma) < 0.08
    shifted = slq(lambda v: goe @ v + 3 * v, goe.shape[0], starts=4, steps=50, rng=np.random.default_rng(3))
    assert symmetry_score(shifted.nodes, shifted.weights, sigma) > 0.95


def test_lanczos_moments_equal_exact_ones_on_a_network(small):
    model, x, y = small
    op = PoolHessian(model.plan, model.params(), x, y)
    H = op.dense().numpy()
    v = torch.as_tensor(np.random.default_rng(4).choice([-1.0, 1.0], H.shape[0]))
    m = 6
    theta, tau2 = ritz(*lanczos(op.matvec, v, m))
    q = v.numpy() / np.linalg.norm(v.numpy())
    for k in range(2 * m):
        exact = q @ np.linalg.matrix_power(H, k) @ q
        assert (tau2 * theta**k).sum() == pytest.approx(exact, rel=1e-7, abs=1e-10 * np.abs(H).max() ** k)
    # enough steps: the extreme Ritz values are the extreme eigenvalues
    eig = np.linalg.eigvalsh(H)
    theta, _ = ritz(*lanczos(op.matvec, v, 40))
    assert theta.max() == pytest.approx(eig.max(), rel=1e-6)
    assert theta.min() == pytest.approx(eig.min(), rel=1e-6)


def test_hutchinson_trace_is_near_zero_on_a_network(small):
    model, x, y = small
    op = PoolHessian(model.plan, model.params(), x, y)
    obs = measure_spectrum(op, starts=30, steps=8, grid=101, sigma_rel=0.02, seed=0, epoch=0)
    sc = obs.scalars
    assert abs(sc["trace_estimate"]) < 4 * sc["trace_stderr"]  # tr H = 0 exactly (SPEC section 2)
    assert sc["symmetry_score"] < 0.6
    assert obs.arrays["ritz_values"][0].shape == (30, 8)

"""Stochastic Lanczos quadrature against closed forms and exact small-network spectra."""

import numpy as np
import pytest
import torch

from adaptsym.curvature.hvp import PoolHessian
from adaptsym.observables.spectrum import (default_sigma, lanczos, measure_spectrum, ritz, slq, smoothed_density,
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


@pytest.fixture(scope="module")
def demo_cnn_op():
    """The demo CNN (N = 8,880) at initialisation on 128 digits, float64."""
    from adaptsym.config import load_config
    from adaptsym.nets.data import load_dataset
    from adaptsym.nets.models import BiasFreeNet

    cfg = load_config("configs/demo.yaml")
    data = load_dataset(cfg.data, 0)
    model = BiasFreeNet(cfg.models["cnn"], data.input_shape, seed=0, dtype=torch.float64)
    return PoolHessian(model.plan, model.params(), data.x_train[:128].double(), data.y_train[:128].double())


def test_spilled_basis_changes_no_bit(demo_cnn_op, monkeypatch):
    """A RAM budget of 10 rows spills the other 20 to disk; the coefficients are bitwise those of
    the all-in-RAM run (blocks of 4 rows, so blocks on disk and in RAM both hold several rows)."""
    import adaptsym.observables.spectrum as spectrum

    op = demo_cnn_op
    monkeypatch.setattr(spectrum, "BLOCK_BYTES", 4 * op.n_params * 4)
    v = torch.as_tensor(np.random.default_rng(0).choice([-1.0, 1.0], op.n_params))
    seen = []
    real = spectrum.LanczosBasis

    class Watched(real):
        def close(self):
            seen.append((len(self.mem), self.spilled, self.mem.nbytes))
            super().close()

    monkeypatch.setattr(spectrum, "LanczosBasis", Watched)
    full = lanczos(op.matvec, v, 30, basis_dtype=torch.float32)
    budget = 10 * op.n_params * 4
    spilled = lanczos(op.matvec, v, 30, basis_dtype=torch.float32, budget_bytes=budget)
    assert seen[0][1] == 0 and seen[1][1] == 22 and seen[1][2] <= budget  # 8 rows (2 whole blocks) in RAM
    np.testing.assert_array_equal(full[0], spilled[0])
    np.testing.assert_array_equal(full[1], spilled[1])


def test_float32_basis_matches_float64_full_reorthogonalisation(demo_cnn_op):
    """Holding the basis in float32 (half the memory) keeps the quadrature of a float64 operator:
    extreme Ritz values, the first four moments and the smoothed density agree with the float64
    basis on the demo CNN; without reorthogonalisation they do not (the check can fail)."""
    op = demo_cnn_op
    rng = np.random.default_rng(1)
    v = torch.as_tensor(rng.choice([-1.0, 1.0], op.n_params))
    ref = ritz(*lanczos(op.matvec, v, 60))
    half = ritz(*lanczos(op.matvec, v, 60, basis_dtype=torch.float32))
    none = ritz(*lanczos(op.matvec, v, 60, reorth=False))
    scale = np.abs(ref[0]).max()

    def gap(res):
        moments = max(abs((res[1] * res[0] ** k).sum() - (ref[1] * ref[0] ** k).sum()) / scale**k for k in range(1, 5))
        grid = np.linspace(-1.2 * scale, 1.2 * scale, 801)
        sigma = 0.01 * scale
        dens = lambda r: smoothed_density(r[0][None], r[1][None], grid, sigma)
        l1 = np.trapezoid(np.abs(dens(res) - dens(ref)), grid)
        ext = max(abs(res[0].max() - ref[0].max()), abs(res[0].min() - ref[0].min())) / scale
        return moments, l1, ext

    m, l1, ext = gap(half)
    assert m < 1e-10 and l1 < 1e-7 and ext < 1e-7  # measured 7e-14, 3e-9, 1e-9
    m_none, l1_none, _ = gap(none)
    assert l1_none > 100 * max(l1, 1e-7)  # ghost Ritz values: the test tells a bad basis apart


def test_extreme_eigenvalues_and_hutchinson_against_dense(small):
    from adaptsym.observables.spectrum import extreme_eigenvalues, hutchinson

    model, x, y = small
    op = PoolHessian(model.plan, model.params(), x, y)
    eig = np.linalg.eigvalsh(op.dense().numpy())
    v = torch.as_tensor(np.random.default_rng(5).choice([-1.0, 1.0], op.n_params))
    lo, hi, used = extreme_eigenvalues(op.matvec, v, tol=1e-8, max_steps=op.n_params)
    scale = np.abs(eig).max()
    assert abs(lo - eig.min()) < 1e-6 * scale and abs(hi - eig.max()) < 1e-6 * scale and used <= op.n_params
    tr, se = hutchinson(op.matvec, op.n_params, 400, np.random.default_rng(6))
    assert abs(tr - eig.sum()) < 4 * se + 1e-9 * scale and se > 0

"""The effective model's message passing and Boltzmann learning against exact enumeration."""

import numpy as np
import pytest

from adaptsym.effective.model import (NotConvergedError, belief_propagation, boltzmann_learning, data_moments,
                                      exact_landscape_point, exact_moments, exact_samples, fit_error,
                                      landscape_point, s_upper, sweep)


def sk_model(n, beta, seed, field=0.3):
    rng = np.random.default_rng(seed)
    J = np.triu(rng.normal(0, beta / np.sqrt(n), (n, n)), 1)
    return J + J.T, rng.normal(0, field, n)


def tree_model(n, seed, strength=0.8):
    rng = np.random.default_rng(seed)
    J = np.zeros((n, n))
    edges = []
    for i in range(1, n):
        p = int(rng.integers(0, i))
        J[i, p] = J[p, i] = rng.normal(0, strength)
        edges.append((i, p))
    return J, rng.normal(0, 0.5, n), edges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bp_is_exact_on_trees(seed):
    """On a tree BP is exact: magnetisations, edge correlations, free energy, energy, entropy."""
    J, h, edges = tree_model(12, seed)
    bp, ex = belief_propagation(J, h, tol=1e-13), exact_moments(J, h)
    np.testing.assert_allclose(bp.m, ex.m, atol=1e-9)
    for i, j in edges:
        assert abs(bp.C[i, j] - ex.C[i, j]) < 1e-9
    assert abs(bp.free_energy - ex.free_energy) < 1e-9
    assert abs(bp.energy - ex.energy) < 1e-9
    assert abs(bp.entropy - ex.entropy) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bp_close_to_exact_for_weak_couplings(seed):
    """Fully connected, J ~ N(0, 0.1^2 / N), N = 14: BP errors are O(J^2) (measured: m 2e-4,
    C 4e-3, per-spin free energy 2e-5 at N = 12)."""
    n = 14
    J, h = sk_model(n, 0.1, seed)
    bp, ex = belief_propagation(J, h), exact_moments(J, h)
    assert np.abs(bp.m - ex.m).max() < 2e-3
    assert np.abs(bp.C - ex.C).max() < 1e-2
    assert abs(bp.free_energy - ex.free_energy) / n < 2e-4
    assert abs(bp.energy - ex.energy) / n < 5e-4
    assert abs(bp.entropy - ex.entropy) / n < 5e-4


def test_bethe_energy_is_the_derivative_of_the_free_energy():
    """E = d(beta F)/d(beta) at a fixed point (eq. B4), by central differences in beta."""
    J, h = sk_model(10, 0.6, 5)
    eps = 1e-5
    fp = belief_propagation(J * (1 + eps), h * (1 + eps), tol=1e-14).free_energy
    fm = belief_propagation(J * (1 - eps), h * (1 - eps), tol=1e-14).free_energy
    assert abs((fp - fm) / (2 * eps) - belief_propagation(J, h, tol=1e-14).energy) < 1e-6


def test_independent_model_closed_form():
    h = np.array([0.3, -1.2, 0.0, 2.0])
    bp = belief_propagation(np.zeros((4, 4)), h)
    np.testing.assert_allclose(bp.m, np.tanh(h), atol=1e-14)
    assert abs(bp.free_energy + np.log(2 * np.cosh(h)).sum()) < 1e-12


def test_nonconvergence_is_reported_not_silent():
    """Strong couplings and too few iterations: a strict call raises with the residual; a lax one
    returns converged=False, the residual and the iteration count."""
    J, h = sk_model(12, 4.0, 3, field=0.5)
    with pytest.raises(NotConvergedError, match="last residual"):
        belief_propagation(J, h, max_iter=3)
    r = belief_propagation(J, h, max_iter=3, strict=False)
    assert not r.converged and r.residual > 1e-9 and r.iterations == 3


def test_landscape_point_matches_enumeration():
    J, h = sk_model(12, 0.15, 7)
    ref = np.sign(np.random.default_rng(0).normal(size=12))
    for x in (-1.5, 0.0, 0.7, 2.5):
        a, _ = landscape_point(J, h, ref, x)
        b = exact_landscape_point(J, h, ref, x)
        assert a.converged
        assert abs(a.d - b.d) < 5e-3 and abs(a.entropy - b.entropy) < 5e-3 and abs(a.energy - b.energy) < 5e-3


def test_landscape_exact_on_trees_and_entropy_bound():
    """On a tree every landscape quantity is exact; everywhere s(d) <= s_ub(d)."""
    J, h, _ = tree_model(10, 4)
    ref = np.sign(np.random.default_rng(1).normal(size=10))
    pts, _ = sweep(J, h, ref, np.linspace(3, -3, 13), tol=1e-12)
    for p in pts:
        b = exact_landscape_point(J, h, ref, p.x)
        assert abs(p.d - b.d) < 1e-8 and abs(p.entropy - b.entropy) < 1e-8
        assert p.entropy <= s_upper(p.d) + 1e-9
    for seed in range(3):
        J, h = sk_model(12, 0.5, seed)
        pts, _ = sweep(J, h, ref[:10].tolist() + [1.0, -1.0], np.linspace(3, -3, 25))
        for p in pts:
            assert p.entropy <= s_upper(p.d) + 1e-3


def test_s_upper_closed_form():
    assert s_upper(0.0) == 0 and s_upper(1.0) == 0
    assert abs(s_upper(0.5) - np.log(2)) < 1e-15
    d = 0.2
    assert abs(s_upper(d) - (-d * np.log(d) - (1 - d) * np.log(1 - d))) < 1e-15


def test_data_moments_and_fit_error():
    rng = np.random.default_rng(0)
    x = rng.choice([-1, 1], size=(1000, 5)).astype(np.int8)
    m, C = data_moments(x, chunk=64)
    np.testing.assert_allclose(m, x.mean(0))
    np.testing.assert_allclose(C, x.T.astype(float) @ x / 1000)
    assert fit_error(m, C, m, C) == 0
    m2 = m.copy()
    m2[0] += 0.1
    assert abs(fit_error(m, C, m2, C) - np.sqrt(0.01 / 5)) < 1e-12


def test_boltzmann_learning_recovers_planted_tree_with_exact_moments():
    """Exact samples of a planted tree model; with exact model moments the fit recovers (J, h)
    to sampling error (200,000 samples: standard error ~0.005), zeros off the tree included."""
    J0, h0, edges = tree_model(8, 11, strength=0.6)
    x = exact_samples(J0, h0, 200_000, np.random.default_rng(3))
    m, C = data_moments(x)
    fit = boltzmann_learning(m, C, eta=0.5, target=1e-4, max_steps=2000, moments="exact")
    assert fit.converged and fit.deltas[-1] < 1e-4
    assert np.abs(fit.h - h0).max() < 0.03
    assert np.abs(fit.J - J0).max() < 0.03


@pytest.mark.parametrize("seed", [0, 1])
def test_boltzmann_learning_with_bp_recovers_weak_planted_model(seed):
    """Belief-propagation moments, a weakly coupled dense planted model (J ~ N(0, 0.2^2 / 10),
    |J| up to 0.17): recovered within 0.05 (measured 0.02-0.03). BP ignores loops, so its fit is
    biased where couplings are strong (measured 0.06-0.1 at twice the strength)."""
    J0, h0 = sk_model(10, 0.2, seed)
    x = exact_samples(J0, h0, 200_000, np.random.default_rng(3))
    m, C = data_moments(x)
    fit = boltzmann_learning(m, C, eta=0.5, target=1e-4, max_steps=2000)
    assert fit.converged and fit.deltas[-1] < 1e-4
    assert np.abs(fit.J - J0).max() < 0.05 and np.abs(fit.h - h0).max() < 0.05


def test_boltzmann_learning_exact_moments_on_dense_model():
    """Fully connected planted model, exact model moments: recovers J to sampling error."""
    J0, h0 = sk_model(8, 1.0, 2)
    x = exact_samples(J0, h0, 200_000, np.random.default_rng(4))
    m, C = data_moments(x)
    fit = boltzmann_learning(m, C, eta=0.5, target=2e-4, max_steps=3000, moments="exact")
    assert fit.converged
    assert np.abs(fit.J - J0).max() < 0.06 and np.abs(fit.h - h0).max() < 0.06


def test_bad_model_shapes():
    with pytest.raises(ValueError, match="symmetric"):
        belief_propagation(np.array([[0, 1.0], [0.5, 0]]), np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        belief_propagation(np.zeros((3, 3)), np.zeros(2))


def test_energy_accuracy_correlation_is_pearsons(tmp_path):
    from scipy import stats

    from adaptsym.effective.report import energy_accuracy_correlation
    from adaptsym.storage.store import RunStore

    rng = np.random.default_rng(0)
    acc = rng.uniform(0.8, 1.0, 300)
    e = -0.5 * acc + rng.normal(0, 0.05, 300)
    store = RunStore(tmp_path / "r.zarr")
    store.write("effective/under/full", "energy_density", e, ("configuration",))
    store.write("effective/under/full", "test_accuracy", acc, ("configuration",))
    assert np.isclose(energy_accuracy_correlation(store, "under"), stats.pearsonr(e, acc)[0])
    store.write("effective/under/full", "test_accuracy", np.ones(300), ("configuration",))
    assert np.isnan(energy_accuracy_correlation(store, "under"))  # constant accuracy: undefined

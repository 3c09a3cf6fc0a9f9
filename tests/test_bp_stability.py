"""Belief propagation's fixed points are checked for stability (issue 23, step 1).

The ordered ferromagnet (N = 14, J = 0.2 on every pair, h = 0; exact connected correlations about
0.98) has the paramagnetic point M = 0 as a BP fixed point, reached by symmetry in one iteration
and wrong by 0.78 in its correlations. Its Jacobian repels the iteration: flagged and warned. The
power-iteration radius is checked against the eigenvalues of a finite-difference Jacobian of the
damped update (brute force), on that model and on a weak random one (stable, no warning)."""

import warnings

import numpy as np
import pytest

from adaptsym.effective.model import UnstableFixedPointWarning, belief_propagation, exact_moments


def damped_update(J, h, M, damping):
    t = np.tanh(J)
    u = np.arctanh(t * M.T)
    new = np.tanh((h + u.sum(1))[:, None] - u)
    np.fill_diagonal(new, 0.0)
    return damping * M + (1 - damping) * new


def brute_radius(J, h, M, damping, eps=1e-6):
    """Largest |eigenvalue| of the finite-difference Jacobian over the off-diagonal messages."""
    n = len(h)
    idx = [(i, j) for i in range(n) for j in range(n) if i != j]
    jac = np.zeros((len(idx), len(idx)))
    for c, (k, l) in enumerate(idx):
        dM = np.zeros_like(M)
        dM[k, l] = eps
        d = (damped_update(J, h, M + dM, damping) - damped_update(J, h, M - dM, damping)) / (2 * eps)
        jac[:, c] = [d[i, j] for i, j in idx]
    return np.abs(np.linalg.eigvals(jac)).max()


def test_paramagnetic_point_of_an_ordered_ferromagnet_is_flagged():
    n = 14
    J = np.full((n, n), 0.2)
    np.fill_diagonal(J, 0.0)
    h = np.zeros(n)
    with pytest.warns(UnstableFixedPointWarning, match="unstable fixed point"):
        bp = belief_propagation(J, h)
    assert bp.converged and np.abs(bp.m).max() < 1e-12  # the paramagnet, wrong but converged
    exact = exact_moments(J, h)
    assert np.abs(bp.C - exact.C).max() > 0.5  # what the flag protects against
    assert not bp.stable
    assert bp.jacobian_radius == pytest.approx(brute_radius(J, h, bp.messages, bp.damping), rel=1e-3)
    assert bp.jacobian_radius > 1.5


def test_a_weak_model_is_stable_and_silent():
    rng = np.random.default_rng(3)
    n = 10
    J = np.triu(rng.normal(0, 0.1, (n, n)), 1)
    J = J + J.T
    h = rng.normal(0, 0.2, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableFixedPointWarning)
        bp = belief_propagation(J, h)
    assert bp.stable and bp.jacobian_radius < 1
    assert bp.jacobian_radius == pytest.approx(brute_radius(J, h, bp.messages, bp.damping), rel=1e-3)


def test_power_iteration_agrees_with_the_dense_jacobian_on_the_ferromagnet():
    from adaptsym.effective.model import bp_jacobian_radius

    n = 14
    J = np.full((n, n), 0.2)
    np.fill_diagonal(J, 0.0)
    M = np.zeros((n, n))
    dense = bp_jacobian_radius(J, M, 0.5)
    power = bp_jacobian_radius(J, M, 0.5, dense_up_to=0)
    assert power == pytest.approx(dense, rel=1e-3)
    assert dense == pytest.approx(0.5 + 0.5 * (n - 2) * np.tanh(0.2), rel=1e-9)  # closed form at M = 0

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


def ferromagnet(n=14, coupling=0.2, field_std=0.0, seed=1):
    J = np.full((n, n), coupling)
    np.fill_diagonal(J, 0.0)
    h = np.random.default_rng(seed).normal(0, field_std, n) if field_std else np.zeros(n)
    return J, h


@pytest.mark.parametrize("field_std", [0.0, 0.05, 0.1])
def test_multi_start_bp_finds_both_phases_and_their_mixture_is_the_exact_measure(field_std):
    """The ordered ferromagnet, without and with random fields: the default start gives the
    unstable paramagnet (h = 0) or one phase (m off by 0.8-0.9 with fields). `bp_solve` finds the
    two stable phases, flags the model as non-unique with a warning, and refuses it when strict;
    the exp(-F)-weighted mixture of the two Bethe states matches enumeration (measured: to 5e-4)."""
    from adaptsym.effective.model import UnstableFixedPointError, bp_solve

    J, h = ferromagnet(field_std=field_std)
    exact = exact_moments(J, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableFixedPointWarning)
        default = belief_propagation(J, h)
    assert max(np.abs(default.m - exact.m).max(), np.abs(default.C - exact.C).max()) > 0.5  # one state is wrong
    with pytest.warns(UnstableFixedPointWarning, match="2 distinct stable fixed points"):
        res = bp_solve(J, h)
    assert res.n_stable_points == 2 and not res.unique and not res.ok
    assert res.best.stable and res.best.free_energy == min(p.free_energy for p in res.points)
    assert np.sign(res.points[0].m.mean()) != np.sign(res.points[1].m.mean())  # the two phases
    m, C, lnZ = res.mixture()
    assert np.abs(m - exact.m).max() < 2e-3 and np.abs(C - exact.C).max() < 2e-3
    assert lnZ == pytest.approx(-exact.free_energy, abs=5e-3)
    with pytest.raises(UnstableFixedPointError, match="more than one phase"):
        bp_solve(J, h, strict=True)


def test_multi_start_bp_on_a_weak_model_is_unique_silent_and_the_default_answer():
    from adaptsym.effective.model import bp_solve

    rng = np.random.default_rng(8)
    n = 12
    J = np.triu(rng.normal(0, 0.1, (n, n)), 1)
    J, h = J + J.T, rng.normal(0, 0.2, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableFixedPointWarning)
        res = bp_solve(J, h, starts=6, strict=True)
    assert res.unique and res.ok and all(res.stable)
    default = belief_propagation(J, h)
    np.testing.assert_allclose(res.best.m, default.m, atol=1e-7)
    np.testing.assert_allclose(res.mixture()[1], default.C, atol=1e-7)


def test_landscape_points_record_their_stability():
    """Sweeping the ferromagnet's field towards a reference from +x to -x, BP follows the aligned
    phase past x = 0 (hysteresis): stable points. At x = 0 from the symmetric start it reaches
    the paramagnet, and the point says it is unstable."""
    from adaptsym.effective.model import sweep

    J, h = ferromagnet(n=10, coupling=0.25)
    ref = np.ones(10)
    pts, _ = sweep(J, h, ref, np.linspace(0.5, -0.5, 11))
    assert all(p.converged for p in pts)
    assert all(p.stable is True for p in pts)  # the aligned branch is metastable but stable past x = 0
    # h = 0 from the symmetric start: the paramagnet, unstable, flagged on the point
    from adaptsym.effective.model import landscape_point

    p0, _ = landscape_point(J, h, ref, 0.0)
    assert p0.converged and not p0.stable


def test_the_kick_test_agrees_with_the_jacobian_radius():
    """`bp_attracts` (return after a 1e-4 kick) against the spectral radius (exact eigenvalues):
    the ferromagnet's paramagnet (radius 1.68) repels, its two ordered phases and a weak random
    model's point attract."""
    from adaptsym.effective.model import bp_attracts

    J, h = ferromagnet()
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableFixedPointWarning)
        cases.append((J, h, belief_propagation(J, h)))  # the paramagnet
    for sign in (1, -1):
        start = np.full(J.shape, 0.9 * sign)
        np.fill_diagonal(start, 0.0)
        cases.append((J, h, belief_propagation(J, h, start)))
    rng = np.random.default_rng(2)
    Jw = np.triu(rng.normal(0, 0.1, (9, 9)), 1)
    Jw, hw = Jw + Jw.T, rng.normal(0, 0.2, 9)
    cases.append((Jw, hw, belief_propagation(Jw, hw)))
    got = [bp_attracts(Jc, hc, r.messages) for Jc, hc, r in cases]
    want = [r.jacobian_radius < 1 for _, _, r in cases]
    assert got == want == [False, True, True, True]

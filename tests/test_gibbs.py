"""Gibbs-sampled moments of the Ising model and Boltzmann learning on them, against exact
enumeration."""

import numpy as np

from adaptsym.effective.model import data_moments, exact_moments, exact_samples, fit_error
from adaptsym.effective.gibbs import gibbs_sweep, pcd_learning, sampled_moments


def _model(n, scale, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(0, scale, (n, n))
    J = np.triu(A, 1)
    return J + J.T, rng.normal(0, 0.3, n)


def test_sampled_moments_match_enumeration_for_every_block_size():
    """The block scan is sequential Gibbs sampling exactly: leaving out the in-block field
    corrections moves C by ~0.1-0.7 here, far beyond the 0.03 allowed."""
    J, h = _model(10, 0.25, 3)
    ex = exact_moments(J, h)
    rng = np.random.default_rng(0)
    for block in (1, 4, 32):
        S = np.where(rng.random((4000, 10)) < 0.5, 1.0, -1.0)
        g = sampled_moments(S, J, h, rng, samples=30, burn=20, block=block)
        assert np.abs(g.m - ex.m).max() < 0.03 and np.abs(g.C - ex.C).max() < 0.03, block
        assert np.allclose(np.diag(g.C), 1) and np.allclose(g.C, g.C.T)
        assert g.samples == 30 * 4000 and 0 < g.noise < 0.02
        assert set(np.unique(S)) == {-1.0, 1.0}


def test_sweep_leaves_the_independent_model_exact():
    """J = 0: every site is drawn afresh from its own field, so one sweep from any start gives
    magnetisations tanh(h) up to sampling noise (binomial, 20000 chains)."""
    h = np.array([-1.0, -0.2, 0.0, 0.5, 2.0])
    rng = np.random.default_rng(1)
    S = np.ones((20000, 5))
    gibbs_sweep(S, np.zeros((5, 5)), h, rng)
    se = np.sqrt((1 - np.tanh(h) ** 2) / 20000)
    assert np.all(np.abs(S.mean(0) - np.tanh(h)) < 5 * se)


def test_persistent_contrastive_divergence_fits_data_of_a_known_model():
    """Data drawn exactly from a known model: the fitted model's exact moments match the data's
    to within sampling noise, and its couplings approach the true ones."""
    J, h = _model(8, 0.2, 5)
    rng = np.random.default_rng(2)
    x = exact_samples(J, h, 20000, rng).astype(np.float64)
    m, C = data_moments(x)
    fit = pcd_learning(m, C, x, chains=2000, eta=0.1, steps=300, eval_sweeps=30, target=0.02, seed=0)
    exact_fit = exact_moments(fit.J, fit.h)
    assert fit_error(m, C, exact_fit.m, exact_fit.C) < 0.01  # the model itself, not its samples
    assert fit.deltas[-1] < 0.02 and fit.converged and fit.noise < 0.01
    start = fit_error(m, C, np.tanh(np.arctanh(m)), np.outer(m, m) + np.diag(1 - m ** 2))
    assert fit.deltas[-1] < start / 3
    assert np.abs(fit.J - J).max() < 0.1  # 20000 samples of 8 spins pin J to a few hundredths


def test_fit_part_refines_the_bp_fit_on_sampled_moments(tmp_path):
    """`fit.moments: gibbs` on an ensemble drawn from a strongly coupled model, where BP's moments
    are biased: the stored BP history, then Gibbs steps that end below BP's Delta, and the log
    sees every step of both."""
    from adaptsym.effective.analysis import fit_part
    from adaptsym.effective.config import EffectiveConfig
    from adaptsym.storage.store import RunStore

    J, h = _model(12, 0.3, 7)
    x = exact_samples(J, h, 8000, np.random.default_rng(4))
    cfg = EffectiveConfig.model_validate({"scenarios": {"under": {"configurations": 8000}},
                                          "fit": {"moments": "gibbs", "max_steps": 60,
                                                  "gibbs": {"chains": 4000, "steps": 200, "eta": 0.1,
                                                            "eval_sweeps": 30}}})
    store = RunStore(tmp_path / "r.zarr")
    seen = []
    res = fit_part(store, cfg, "under", "full", x, log=lambda i, d: seen.append(i))
    g = "effective/under/full"
    bp = store.read(g, "delta_bp")
    assert res["moments"] == "gibbs" and res["delta_bp"] == bp[-1] and res["gibbs_steps"] == 200
    assert bp[-1] > 0.1  # BP's moments are far off on this model
    assert res["delta"] < bp[-1] / 4 and res["delta"] < 0.025 and 0 < res["delta_noise"] < 0.01
    assert seen == list(range(len(bp) + 200))
    exact_fit = exact_moments(store.read(g, "J"), store.read(g, "h"))
    m, C = data_moments(x)
    assert fit_error(m, C, exact_fit.m, exact_fit.C) < 0.02  # the stored model itself fits


def test_averaging_the_last_steps_removes_the_parameter_jitter():
    """Few chains (500): the sampled gradient makes the parameters jitter; the mean over the last
    half of the steps fits the data better, measured on the models' exact moments, for every seed."""
    J, h = _model(8, 0.2, 5)
    x = exact_samples(J, h, 20000, np.random.default_rng(2)).astype(np.float64)
    m, C = data_moments(x)
    for seed in range(3):
        err = []
        for average in (0.0, 0.5):
            f = pcd_learning(m, C, x, chains=500, eta=0.1, steps=300, eval_sweeps=10, seed=seed, average=average)
            ex = exact_moments(f.J, f.h)
            err.append(fit_error(m, C, ex.m, ex.C))
        assert err[1] < 0.8 * err[0], (seed, err)


def test_noise_estimate_matches_the_closed_form_when_sweeps_are_independent():
    """J = 0: every sweep draws each site afresh, so the per-sweep means are independent and the
    estimated noise must equal sqrt(mean_i var m_i + mean_{i<j} var C_ij) with var m_i = (1 - m_i^2) / M
    and var C_ij = (1 - m_i^2 m_j^2) / M, M = chains x samples (within 15%: over 20 seeds the ratio has sd 0.044)."""
    n, chains, samples = 6, 3000, 30
    h = np.linspace(-1.0, 1.0, n)
    rng = np.random.default_rng(3)
    S = np.ones((chains, n))
    g = sampled_moments(S, np.zeros((n, n)), h, rng, samples=samples, burn=1)
    m = np.tanh(h)
    iu = np.triu_indices(n, 1)
    M = chains * samples
    closed = np.sqrt(np.mean((1 - m ** 2) / M) + np.mean((1 - (m[:, None] * m[None, :]) ** 2)[iu] / M))
    assert abs(g.noise / closed - 1) < 0.15, (g.noise, closed)  # sd of the ratio over seeds: 0.044


def test_rhat_is_the_gelman_rubin_statistic_of_the_raw_draws():
    """Against the textbook formula on raw +-1 draws (chains x T x spins), computed here directly."""
    from adaptsym.effective.gibbs import rhat

    rng = np.random.default_rng(4)
    draws = np.where(rng.random((6, 50, 3)) < np.array([0.5, 0.8, 0.3])[None, None, :], 1.0, -1.0)
    draws[:3, :, 2] = 1.0  # spin 2: half the chains frozen at +1, half free
    T = draws.shape[1]
    means = draws.mean(1)
    W = draws.var(1, ddof=1).mean(0)
    B = T * means.var(0, ddof=1)
    brute = np.sqrt(((T - 1) / T * W + B / T) / W)
    got = rhat(means, (1 - means**2) * T / (T - 1), T)
    np.testing.assert_allclose(got, brute, rtol=1e-12)


def test_rhat_flags_chains_stuck_in_two_phases_and_passes_a_mixing_model():
    """The ordered ferromagnet with weak random fields (N = 14, J = 0.2): chains started in both
    phases never cross in 200 sweeps, so the sampled m is off while the noise estimate is tiny;
    R-hat is far above 1.1 and the moments say they are not mixed. A weak model mixes: R-hat near 1."""
    from adaptsym.effective.model import exact_moments

    n = 14
    J = np.full((n, n), 0.2)
    np.fill_diagonal(J, 0.0)
    h = np.random.default_rng(1).normal(0, 0.05, n)
    rng = np.random.default_rng(0)
    S = np.ones((200, n))
    S[::2] = -1.0  # half the chains in each phase: as chains drawn from a two-phase ensemble
    g = sampled_moments(S, J, h, rng, samples=200, burn=20)
    exact = exact_moments(J, h)
    assert np.abs(g.m - exact.m).max() > 5 * g.noise  # the error the noise estimate misses
    assert g.rhat > 3 and not g.mixed
    Jw = J * 0.1
    Sw = np.where(rng.random((200, n)) < 0.5, 1.0, -1.0)
    gw = sampled_moments(Sw, Jw, h, rng, samples=200, burn=20)
    assert gw.rhat < 1.05 and gw.mixed
    assert np.abs(gw.m - exact_moments(Jw, h).m).max() < 5 * max(gw.noise, 1e-3)

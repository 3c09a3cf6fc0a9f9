"""Calibration of every non-zero rule on the data the service produces (SPEC section 4).

Nulls: zero inflation through one activity mask shared by all entries (A of n = 512 pool
examples active), optionally entry-specific zeros on top, normal / heavy-tailed / skewed values.
Every rule must keep the realised false discovery rate <= 2q; where every hypothesis is null,
the fraction of tests declared non-zero must stay <= q. Fisher's z with n - 3, the rule these
tests replaced, fails them (`test_fisher_z_is_invalid_under_zero_inflation`).
"""

import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtri

from adaptsym.bootstrap import multinomial_counts, replicates
from adaptsym.comoments import comoment
from adaptsym.correlation import coupling_counts, standardise
from adaptsym.fdr import BD_CONSTANT, bh_reject, one_discovery_threshold, pvalue, two_sided_p
from adaptsym.nonzero import detectability, product_t
from adaptsym.nulls import drop_constant, null, planted
from jobs.calibration import fisher_abs_z

N, K, Q = 512, 200, 0.05
ACTIVE = (512, 64, 13, 3)


def declared_fraction(h, **kw):
    res = coupling_counts(standardise(h), q=Q, block=64, **kw)
    return res.n_nonzero / res.n_tests


@pytest.mark.parametrize("masks", ["shared", "entry"])
@pytest.mark.parametrize("law", ["normal", "lognormal", "skewed"])
@pytest.mark.parametrize("active", ACTIVE)
def test_correlation_null_declares_at_most_q(active, law, masks):
    rng = np.random.default_rng([active, len(law), len(masks)])
    h = drop_constant(null(N, K, active, law, masks, rng))
    assert h.shape[1] > K // 2
    for kw in ({}, {"pvalue": "bound"}, {"fdr": "by"}):
        assert declared_fraction(h, **kw) <= Q, kw


def test_fisher_z_is_invalid_under_zero_inflation():
    """The issue's table: with 13 of 512 examples active, Fisher's z declares most null pairs non-zero."""
    h = drop_constant(null(N, K, 13, "normal", "shared", np.random.default_rng(0)))
    Z = standardise(h)
    iu = np.triu_indices(h.shape[1], 1)
    fisher = bh_reject(two_sided_p(fisher_abs_z((Z.T @ Z / N)[iu], N)), Q).mean()
    assert fisher > 0.5
    assert declared_fraction(h) == 0.0


@pytest.mark.parametrize("law", ["normal", "skewed"])
@pytest.mark.parametrize("masks", ["shared", "entry"])
@pytest.mark.parametrize("active", [512, 256, 128, 64, 13])
def test_correlation_fdr_with_planted_structure(active, law, masks):
    """10 groups of 5 coupled entries among 150 free ones: realised FDR <= 2q at every activity."""
    fdps = []
    for rep in range(3):
        rng = np.random.default_rng([active, rep, len(law), len(masks)])
        h, label = drop_constant(*planted(N, 10, 5, active, law, masks, rng, k_null=150))
        res_T = product_t(standardise(h), standardise(h))[1]
        iu = np.triu_indices(h.shape[1], 1)
        rej = bh_reject(pvalue(np.abs(res_T[iu])), Q)
        truth = label[iu[0]] == label[iu[1]]
        fdps.append((rej & ~truth).sum() / max(rej.sum(), 1))
    assert np.mean(fdps) <= 2 * Q, fdps


def test_planted_coupling_size_within_10_percent_with_recall():
    """Full activity, enough power: the mean coupling count is the planted one within 10%."""
    rng = np.random.default_rng(11)
    h, label = planted(4000, 20, 6, 4000, "skewed", "shared", rng, k_null=80)
    res = coupling_counts(standardise(h), q=Q, block=50)
    truth = (label[:, None] == label[None, :]) & ~np.eye(len(label), dtype=bool)
    planted_mean = truth.sum(axis=1).mean()
    assert res.counts.mean() == pytest.approx(planted_mean, rel=0.1)
    # recall: planted partners found, per entry of a group (each has 5)
    Z = standardise(h)
    iu = np.triu_indices(h.shape[1], 1)
    rej = bh_reject(pvalue(np.abs(product_t(Z, Z)[1][iu])), Q)
    recall = (rej & truth[iu]).sum() / truth[iu].sum()
    assert recall >= 0.95, recall


@pytest.mark.parametrize("masks", ["shared", "entry"])
@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("law", ["normal", "lognormal", "skewed"])
@pytest.mark.parametrize("active", ACTIVE)
def test_comoment_null_declares_at_most_q(order, law, active, masks):
    """Entry-specific zeros are where treating the rho-terms as known declared 10-26% of null tuples."""
    rng = np.random.default_rng([order, active, len(law), len(masks)])
    h = drop_constant(null(N, 120, active, law, masks, rng))
    X = replicates(h, multinomial_counts(N, 32, 200, rng), 32)
    res = comoment(X, h, order, per_entry=64, rng=rng, q=Q)
    assert res.nonzero.mean() <= Q
    assert np.all(res.active <= active)


def test_comoment_values_equal_brute_force():
    """The influence-corrected products average to the textbook co-skewness / excess co-kurtosis."""
    rng = np.random.default_rng(3)
    h, _ = planted(300, 2, 4, 200, "skewed", "shared", rng, k_null=2)
    X = replicates(h, multinomial_counts(300, 8, 500, rng), 8)
    for order in (3, 4):
        res = comoment(X, h, order, per_entry=5, rng=rng)
        for t, v, p in zip(res.tuples[:12], res.value[:12], res.pool_value[:12]):
            for data, got in ((X, v), (h, p)):
                z = (data - data.mean(0)) / data.std(0)
                m = np.mean(np.prod(z[:, t], axis=1))
                if order == 4:
                    r = lambda i, j: np.mean(z[:, t[i]] * z[:, t[j]])
                    m -= r(0, 1) * r(2, 3) + r(0, 2) * r(1, 3) + r(0, 3) * r(1, 2)
                assert got == pytest.approx(m, rel=1e-9, abs=1e-12)


def test_detectability_matches_simulated_power():
    """At the reported min detectable |rho|, a single test is passed about half the time."""
    A, m = 400, 5000
    det = detectability(A, m, Q)
    rho = det.min_detectable_rho
    assert 0 < rho < 1 and not det.untestable
    rng = np.random.default_rng(5)
    hits = []
    for _ in range(400):
        u = rng.standard_normal((A, 2))
        u[:, 1] = rho * u[:, 0] + np.sqrt(1 - rho**2) * u[:, 1]
        h = np.zeros((N, 2))
        h[:A] = u
        T = product_t(standardise(h), standardise(h))[1][0, 1]
        hits.append(abs(T) >= det.threshold)
    assert 0.35 <= np.mean(hits) <= 0.65, np.mean(hits)


def test_untestable_at_few_active_examples():
    m = K * (K - 1) // 2
    t = one_discovery_threshold(m, Q)
    assert t == pytest.approx(-ndtri(Q / m / 2))
    low = detectability(3, m, Q)
    assert low.untestable and "3 active examples" in low.reason and np.isnan(low.min_detectable_rho)
    assert not detectability(512, m, Q).untestable
    assert not detectability(3, m, Q, found=2).untestable  # discoveries are never called untestable
    # co-moments: untestable only when no tuple can reach the threshold at all (sqrt(A) < t)
    assert detectability(int(t * t) - 1, m, Q, order=3).untestable
    assert "hessian_entries.cokurt.min_detectable_rho" not in detectability(500, m, Q, order=4).scalars(
        "hessian_entries.cokurt")
    assert not detectability(int(t * t) + 1, m, Q, order=3).untestable


def test_bound_pvalue_covers_rademacher_sums():
    """The 'bound' p-value is valid at any A for symmetric products: check exceedances exactly."""
    rng = np.random.default_rng(8)
    for A in (2, 5, 12):
        w = rng.lognormal(0, 1.5, A)
        signs = rng.choice([-1.0, 1.0], (200000, A))
        T = np.abs(signs @ w) / np.sqrt(np.sum(w**2))
        for t in (1.0, 1.5, 2.0, 2.5):
            assert np.mean(T >= t) <= BD_CONSTANT * two_sided_p(t) + 3e-3
    assert BD_CONSTANT == pytest.approx(1 / (4 * stats.norm.sf(np.sqrt(2))))

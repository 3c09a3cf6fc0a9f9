"""Calibration of every non-zero rule, in both readings, on the data the service produces (SPEC section 4).

Nulls: zero inflation through one activity mask shared by all entries (A of n = 512 pool
examples active), optionally entry-specific zeros and per-example scale factors on top; mean-zero
values from symmetric, heavy-tailed and skewed laws up to skewness 1.2e4 (`adaptsym.stats.nulls`).
Every rule must keep the realised false discovery rate <= 2q; where every hypothesis is null,
the share of tests counted non-zero must stay <= q. The readings (`docs/statistics.md`):
marginal (over the pool) and active (over the pool examples with margin < 1). Fisher's z with
n - 3, the rule of issue 11, and the pool test alone, the rule of issues 11 to 20, fail these
(`test_the_rules_before_are_invalid`).
"""

import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtri

from adaptsym.stats.bootstrap import multinomial_counts, replicates
from adaptsym.stats.comoments import comoment, reading_comoments
from adaptsym.stats.correlation import coupling_counts, reading_decisions, standardise, standardise_over
from adaptsym.stats.fdr import BD_CONSTANT, bh_reject, one_discovery_threshold, pvalue, two_sided_p
from adaptsym.stats.nonzero import detectability, product_t
from adaptsym.stats.nulls import drop_constant, null, one_signed, planted
from jobs.calibration import fisher_abs_z

N, K, Q = 512, 200, 0.05
ACTIVE = (512, 64, 13, 3)


LAWS = ("normal", "lognormal", "skewed", "chi2", "gamma", "lognormal-skew", "extreme")


def keep_varying(h, *rest):
    keep = h.std(axis=0) > 0
    return (h[:, keep],) + tuple(r[keep] if r is not None and r.ndim == 1 and r.size == keep.size else r for r in rest)


@pytest.mark.parametrize("scales", ["none", "lognormal"])
@pytest.mark.parametrize("masks", ["shared", "entry"])
@pytest.mark.parametrize("law", LAWS)
def test_correlation_null_counts_at_most_q_in_both_readings(law, masks, scales):
    for active in ACTIVE:
        rng = np.random.default_rng([active, len(law), len(masks), len(scales), 1])
        h, mask = null(N, K, active, law, masks, rng, scales, return_mask=True)
        h = drop_constant(h)
        assert h.shape[1] > K // 2
        for reading, dec in reading_decisions(h, mask, q=Q, rng=rng).items():
            assert dec.counted / dec.n_tests <= Q, (reading, active)


def test_the_rules_before_are_invalid():
    """Fisher's z declares most null pairs with 13 of 512 active (issue 11); the pool test alone
    declares pairs of strongly skewed mean-zero entries under a shared mask (issue 20), which both
    readings now count as nothing."""
    h = drop_constant(null(N, K, 13, "normal", "shared", np.random.default_rng(0)))
    Z = standardise(h)
    iu = np.triu_indices(h.shape[1], 1)
    fisher = bh_reject(two_sided_p(fisher_abs_z((Z.T @ Z / N)[iu], N)), Q).mean()
    assert fisher > 0.5
    rng = np.random.default_rng(2)
    h, mask = null(N, K, 13, "extreme", "shared", rng, return_mask=True)
    h = drop_constant(h)
    pool_alone = coupling_counts(standardise(h), q=Q)
    assert pool_alone.n_nonzero / pool_alone.n_tests > Q
    assert all(d.counted == 0 for d in reading_decisions(h, mask, q=Q, rng=rng).values())


def planted_fdp(law, masks, active, rep, scales="none"):
    rng = np.random.default_rng([active, rep, len(law), len(masks), len(scales)])
    h, label, mask = planted(N, 10, 5, active, law, masks, rng, k_null=150, scales=scales, return_mask=True)
    keep = h.std(axis=0) > 0
    h, label = h[:, keep], label[keep]
    iu = np.triu_indices(h.shape[1], 1)
    truth = label[iu[0]] == label[iu[1]]
    return {reading: (dec.declared & ~truth).sum() / max(dec.declared.sum(), 1)
            for reading, dec in reading_decisions(h, mask, q=Q, rng=rng).items()}


@pytest.mark.parametrize("law", ["gamma", "extreme"])
@pytest.mark.parametrize("masks", ["shared", "entry"])
def test_active_fdr_on_strongly_skewed_planted_structure(law, masks):
    """The active reading's pairs test keeps FDR <= 2q where the pool's studentised test does not
    (products of two strongly skewed entries lean one way): skewness 6.3 and 1.2e4."""
    for active in (512, 256, 128, 64, 13):
        f = [planted_fdp(law, masks, active, rep)["active"] for rep in range(3)]
        assert np.mean(f) <= 2 * Q, (active, f)


def test_marginal_limit_on_samples_without_their_tails():
    """The documented limit of the marginal reading (docs/statistics.md): an entry of gamma(0.1) - 0.1
    values whose rare large values are missing from the sample looks like a nearly constant negative
    value, so the part of the marginal correlation that the mask carries (a non-zero mean over the
    active examples) is declared where the population has none. The active reading is unaffected."""
    f = [planted_fdp("gamma", "entry", 64, rep) for rep in range(3)]
    assert max(x["marginal"] for x in f) > 2 * Q
    assert np.mean([x["active"] for x in f]) <= 2 * Q


@pytest.mark.parametrize("law", ["normal", "lognormal", "skewed", "chi2"])
@pytest.mark.parametrize("masks", ["shared", "entry"])
def test_correlation_fdr_with_planted_structure_in_both_readings(law, masks):
    """10 groups of 5 coupled entries among 150 free ones: realised FDR <= 2q at every activity,
    averaged over 3 data sets, in both readings."""
    for active in (512, 256, 128, 64, 13):
        fdps = {"marginal": [], "active": []}
        for rep in range(3):
            rng = np.random.default_rng([active, rep, len(law), len(masks)])
            h, label, mask = planted(N, 10, 5, active, law, masks, rng, k_null=150, return_mask=True)
            keep = h.std(axis=0) > 0
            h, label = h[:, keep], label[keep]
            iu = np.triu_indices(h.shape[1], 1)
            truth = label[iu[0]] == label[iu[1]]
            for reading, dec in reading_decisions(h, mask, q=Q, rng=rng).items():
                fdps[reading].append((dec.declared & ~truth).sum() / max(dec.declared.sum(), 1))
        for reading, f in fdps.items():
            assert np.mean(f) <= 2 * Q, (reading, active, f)


def test_mask_coupling_is_marginal_only():
    """Independent one-signed values under a shared mask: every pair is correlated over the pool
    (the mask) and none over the active examples. The marginal reading finds them; the active one
    does not (a reading that standardised over all rows would, being the marginal one)."""
    for active in (256, 128):
        rng = np.random.default_rng(4)
        h, mask = one_signed(N, 120, active, "shared", rng)
        dec = reading_decisions(drop_constant(h), mask, q=Q, rng=rng)
        assert dec["marginal"].counted / dec["marginal"].n_tests > 0.9
        assert dec["active"].counted / dec["active"].n_tests <= Q


def test_active_reading_is_over_the_active_rows_only():
    """The active reading's statistics equal their brute-force values on h[active] alone: columns
    standardised over the active rows (not the pool), co-moments over them; the marginal ones over
    the pool. Standardising over all rows in the active reading fails this."""
    rng = np.random.default_rng(6)
    h, label, mask = planted(300, 4, 5, 120, "skewed", "shared", rng, k_null=20, return_mask=True)
    ha = h[mask]
    brute = (ha - ha.mean(0)) / ha.std(0)
    np.testing.assert_allclose(standardise_over(h, mask), brute)
    np.testing.assert_allclose(standardise_over(h), standardise(h))
    X = replicates(h, multinomial_counts(300, 8, 300, rng), 8)
    for order in (3, 4):
        res = comoment(X, h, order, 3, np.random.default_rng(order), rows=mask, s=8)
        for t, v in zip(res.tuples[:10], res.pool_value[:10]):
            m = np.mean(np.prod(brute[:, t], axis=1))
            if order == 4:
                r = lambda i, j: np.mean(brute[:, t[i]] * brute[:, t[j]])  # noqa: E731
                m -= r(0, 1) * r(2, 3) + r(0, 2) * r(1, 3) + r(0, 3) * r(1, 2)
            assert v == pytest.approx(m, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(res.value, res.pool_value / 8 ** ((order - 2) / 2))


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
@pytest.mark.parametrize("law", ["normal", "lognormal", "skewed", "gamma", "extreme"])
def test_comoment_null_counts_at_most_q_in_both_readings(order, law, masks):
    """Entry-specific zeros are where treating the rho-terms as known declared 10-26% of null tuples."""
    for active in ACTIVE:
        rng = np.random.default_rng([order, active, len(law), len(masks)])
        h, mask = null(N, 120, active, law, masks, rng, return_mask=True)
        keep = h.std(axis=0) > 0
        h = h[:, keep]
        X = replicates(h, multinomial_counts(N, 32, 200, rng), 32)
        out = reading_comoments(X, h, order, 64, rng, mask, q=Q, s=32)
        for reading in ("marginal", "active"):
            assert out[reading][0].mean() <= Q, (reading, active)
        res = comoment(X, h, order, 8, rng)
        assert np.all(res.n_nonzero <= active)


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
    assert not detectability(3, m, Q, found=2).untestable  # the active reading: discoveries count
    strict = detectability(3, m, Q, found=2, strict=True)  # the marginal pool test: below its limit, never
    assert strict.untestable and "declared 2 anyway" in strict.reason
    paired = detectability(int(3 * t * t) + 2, m, Q, paired=True)  # pairs: half as many products
    assert paired.untestable and "two by two" in paired.reason
    assert not detectability(int(6 * t * t) + 2, m, Q, paired=True).untestable
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

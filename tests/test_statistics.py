"""Bootstrap statistics, non-zero tests and coupling set sizes (SPEC section 4)."""

import numpy as np
import pytest
from scipy import stats

from adaptsym.curvature.identities import replicates_direct
from adaptsym.stats.bootstrap import check_pool, multinomial_counts, replicates
from adaptsym.stats.comoments import comoment, sample_tuples
from adaptsym.stats.correlation import coupling_counts, standardise
from adaptsym.stats.coupling import coupling_summary, log_partner_tuples
from adaptsym.curvature.entries import block_design
from adaptsym.stats.entry_stats import moments, predicted_moments, scaling_check, z_fraction_uncertainty
from adaptsym.stats.fdr import StreamingBH, bh_reject, pvalue, two_sided_p
from adaptsym.stats.mardia import mardia
from adaptsym.curvature.per_example import design_entries


def planted(n=3000, groups=4, size=10, seed=0):
    """h with independent groups of entries sharing one skewed factor each (centred exponential).

    Within a group: correlation 1/2, co-skewness and excess co-kurtosis non-zero (the factor's
    third and fourth cumulants are 2 and 6); across groups every joint cumulant is zero."""
    rng = np.random.default_rng(seed)
    f = rng.exponential(size=(n, groups)) - 1.0
    h = np.repeat(f, size, axis=1) + rng.standard_normal((n, groups * size))
    return h, np.repeat(np.arange(groups), size)


def test_moments_equal_scipy():
    X = np.random.default_rng(0).gamma(2.0, size=(500, 7))
    m = moments(X)
    np.testing.assert_allclose(m["mean"], X.mean(axis=0))
    np.testing.assert_allclose(m["std"], np.std(X, axis=0))
    np.testing.assert_allclose(m["skew"], stats.skew(X, axis=0), rtol=1e-12)
    np.testing.assert_allclose(m["exkurt"], stats.kurtosis(X, axis=0), rtol=1e-12)


def test_reweighting_equals_direct_replicates(small):
    model, x, y = small
    rng = np.random.default_rng(0)
    d = block_design(model.index, 8, 4, rng)
    h = design_entries(model.plan, model.params(), x, y, d)
    counts = multinomial_counts(len(x), 5, 6, rng)
    assert np.all(counts.sum(axis=1) == 5)
    fast = replicates(h, counts, 5)
    slow = replicates_direct(model.plan, model.params(), x, y, d.rows, d.cols, d.row_pos, d.col_pos, counts)
    assert np.abs(slow).max() > 1e-4
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-13)


def test_pool_smaller_than_minibatch_is_rejected():
    with pytest.raises(ValueError, match="exceeds the pool size"):
        check_pool(10, 20)


@pytest.mark.parametrize("s", [4, 32])
def test_bootstrap_agrees_with_exact_scaling(s):
    h, _ = planted(n=400, groups=2, size=4)
    rng = np.random.default_rng(s)
    X = replicates(h, multinomial_counts(len(h), s, 40000, rng), s)
    check = scaling_check(X, h, s)
    for key in ("mean", "std", "skew", "exkurt"):
        assert check[f"{key}_within_3se"] >= 0.85, (key, check)
    pred = predicted_moments(h, s)
    est = moments(X)
    # skewness scales as 1/sqrt(s) and excess kurtosis as 1/s from the pool's values
    assert np.all(np.abs(est["skew"] - pred["skew"]) < 6 * np.sqrt(6 / 40000))
    assert np.all(np.abs(est["exkurt"] - pred["exkurt"]) < 8 * np.sqrt(24 / 40000) + 0.05 * np.abs(pred["exkurt"]))
    # correlations do not depend on s
    np.testing.assert_allclose(np.corrcoef(X.T), np.corrcoef(h.T), atol=0.03)


@pytest.mark.parametrize("kind,method", [("normal", "bh"), ("bound", "bh"), ("normal", "by")])
def test_streaming_bh_equals_scipy(kind, method):
    rng = np.random.default_rng(1)
    for trial in range(10):
        m = int(rng.integers(50, 5000))
        z = np.abs(rng.standard_normal(m))
        k = int(rng.integers(0, m // 3))
        z[:k] += rng.uniform(0, 6, k)
        ref = stats.false_discovery_control(pvalue(z, kind), method=method) <= 0.05
        assert np.array_equal(bh_reject(pvalue(z, kind), 0.05, method), ref)
        bh = StreamingBH(0.05, bins=int(rng.integers(20, 3000)), pvalue=kind, method=method)
        parts = np.array_split(z, 5)
        for p in parts:
            bh.observe(p)
        bh.plan()
        for p in parts:
            _, und = bh.split(p)
            bh.keep(p[und])
        assert np.array_equal(z >= bh.resolve(), ref)


def test_streaming_correlation_counts_equal_full_matrix():
    """Tiles + streaming BH against a pair-by-pair studentised product sum and scipy's BH."""
    h, _ = planted(n=300, groups=5, size=6, seed=2)
    h[np.random.default_rng(0).random(300) < 0.6] = 0.0  # zero-inflated through a shared mask
    res = coupling_counts(standardise(h), q=0.05, block=7)
    K = h.shape[1]
    c = h - h.mean(axis=0)
    iu = np.triu_indices(K, 1)
    T = np.array([np.sum(c[:, a] * c[:, b]) / np.sqrt(np.sum((c[:, a] * c[:, b]) ** 2)) for a, b in zip(*iu)])
    rej = stats.false_discovery_control(two_sided_p(T)) <= 0.05
    assert 0 < rej.sum() < len(rej)
    full = np.zeros((K, K), dtype=bool)
    full[iu] = rej
    full = full | full.T
    np.testing.assert_array_equal(res.counts, full.sum(axis=1))
    assert res.n_tests == len(iu[0])
    R = np.corrcoef(h.T)
    assert res.mean_abs == pytest.approx(np.abs(R[iu]).mean())


def test_planted_coupling_sets_are_recovered_with_fdr_near_q():
    h, group = planted(n=12000, groups=4, size=10)
    K, q = h.shape[1], 0.05
    rng = np.random.default_rng(3)
    X = replicates(h, multinomial_counts(len(h), 64, 2000, rng), 64)
    corr = coupling_counts(standardise(h), q=q, block=16)
    assert np.all(corr.counts >= 9)  # every planted partner is found (strong correlations)
    assert np.mean(corr.counts - 9) / corr.counts.mean() <= 2 * q  # false discoveries among them
    # every entry has exactly 9 planted partners
    assert corr.counts.mean() == pytest.approx(9.0, abs=0.9)
    summ = coupling_summary(corr.counts, K - 1, n_params=1000, order=2, rng=rng)
    assert summ["relative"] == pytest.approx(9 / (K - 1), rel=0.1)

    for order in (3, 4):
        res = comoment(X, h, order, per_entry=300, rng=rng, q=q)
        truth = np.all(group[res.tuples] == group[res.tuples[:, :1]], axis=1)
        assert truth.sum() > 100
        fdp = (res.nonzero & ~truth).sum() / max(res.nonzero.sum(), 1)
        power = (res.nonzero & truth).sum() / truth.sum()
        assert fdp <= 2 * q, (order, fdp)
        assert power >= 0.8, (order, power)
        planted_rel = truth.mean()
        summ = coupling_summary(res.counts, 300, n_params=1000, order=order, rng=rng)
        assert summ["relative"] == pytest.approx(planted_rel, rel=0.25)


def test_sample_tuples_are_distinct_and_start_with_the_entry():
    t = sample_tuples(10, 50, 4, np.random.default_rng(0))
    assert t.shape == (500, 4)
    assert np.array_equal(t[:, 0], np.repeat(np.arange(10), 50))
    assert all(len(set(r)) == 4 for r in t)


def test_coupling_summary_extrapolation():
    counts = np.array([1, 2, 3, 2])
    s = coupling_summary(counts, 10, n_params=100, order=2, rng=np.random.default_rng(0))
    c = 0.2
    assert s["relative"] == pytest.approx(c)
    assert s["exponent"] == pytest.approx(np.log(c * (100**2 - 1)) / np.log(100))
    assert s["log10_absolute"] == pytest.approx(np.log10(c * (100**2 - 1)))
    assert log_partner_tuples(100, 3) == pytest.approx(np.log((100**2 - 1) * (100**2 - 2) / 2))
    zero = coupling_summary(np.zeros(4), 10, n_params=100, order=2, rng=np.random.default_rng(0))
    assert zero["exponent_is_upper_bound"] and np.isfinite(zero["exponent"])


def test_z_fraction_uncertainty_shrinks_with_n():
    rng = np.random.default_rng(5)
    small = z_fraction_uncertainty(rng.standard_normal((100, 300)) + 0.01, 16, 0.15, 50, rng)
    large = z_fraction_uncertainty(rng.standard_normal((6400, 300)) + 0.01, 16, 0.15, 50, rng)
    assert 0 < large < small


def test_mardia_matches_brute_force_and_detects_non_gaussianity():
    rng = np.random.default_rng(6)
    data = rng.standard_normal((60, 3))
    m = mardia(data)
    d = data - data.mean(0)
    Sinv = np.linalg.inv(d.T @ d / 60)
    b1 = sum((d[i] @ Sinv @ d[j]) ** 3 for i in range(60) for j in range(60)) / 60**2
    b2 = sum((d[i] @ Sinv @ d[i]) ** 2 for i in range(60)) / 60
    assert m["b1"] == pytest.approx(b1) and m["b2"] == pytest.approx(b2)
    gauss_p = [mardia(rng.standard_normal((500, 4)))["skew_p"] for _ in range(40)]
    assert 0.3 < np.mean(gauss_p) < 0.7  # p-values ~ uniform under normality
    skewed = mardia(rng.exponential(size=(500, 4)))
    assert skewed["skew_p"] < 1e-6 and skewed["kurt_p"] < 1e-6


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("stat", ["skew", "kurtosis"])
def test_confidence_interval_agrees_with_scipy(method, stat):
    """Endpoints within 5% of the interval width of scipy.stats.bootstrap, on skewed samples."""
    from adaptsym.stats.bootstrap import confidence_interval

    rng = np.random.default_rng(12)
    x = rng.lognormal(0.0, 0.6, 150)
    f = getattr(stats, stat)
    lo, hi = confidence_interval(x, f, n_resamples=20000, method=method, rng=np.random.default_rng(1))
    ref = stats.bootstrap((x,), f, n_resamples=20000, method="BCa" if method == "bca" else "percentile",
                          random_state=np.random.default_rng(2)).confidence_interval
    width = ref.high - ref.low
    assert abs(lo - ref.low) <= 0.05 * width and abs(hi - ref.high) <= 0.05 * width, (lo, hi, ref)


def test_confidence_interval_refuses_too_few_examples_and_flags_zero_variance():
    from adaptsym.stats.bootstrap import IntervalError, confidence_interval

    with pytest.raises(IntervalError, match="at least 20"):
        confidence_interval(np.arange(10.0), np.mean)
    data = np.zeros((50, 3))
    data[:, 1] = np.random.default_rng(0).standard_normal(50)
    lo, hi = confidence_interval(data, lambda x: x.mean(axis=0), n_resamples=300, rng=np.random.default_rng(0))
    assert np.isnan(lo[0]) and np.isnan(hi[2]) and lo[1] < 0 < hi[1]


def test_power_law_fit_matches_linregress_without_error_bars():
    """Equal weights: ordinary least squares on log-log, so slope, standard error and the t
    interval are scipy.stats.linregress's."""
    from adaptsym.stats.scaling import fit_power_law

    rng = np.random.default_rng(0)
    n = np.array([584, 1296, 3104, 8256, 24704, 82176], dtype=float)
    y = 3.0 * n ** -0.5 * np.exp(rng.normal(0, 0.3, n.size))
    f = fit_power_law(n, y)
    ref = stats.linregress(np.log(n), np.log(y))
    t = stats.t.ppf(0.975, n.size - 2)
    assert np.isclose(f["exponent"], ref.slope) and np.isclose(f["exponent_std"], ref.stderr)
    assert np.isclose(f["exponent_ci_low"], ref.slope - t * ref.stderr)
    assert np.isclose(f["exponent_ci_high"], ref.slope + t * ref.stderr)
    assert np.isclose(f["log_prefactor"], ref.intercept)


def _coverage(sd, error_bars, sweeps=4000):
    from adaptsym.stats.scaling import fit_power_law

    rng = np.random.default_rng(1)
    n = np.geomspace(500, 1e5, 6)
    hit = 0
    for _ in range(sweeps):
        y = 0.2 * n ** -0.7 * np.exp(rng.normal(0, sd, n.size))
        f = fit_power_law(n, y, y * sd if error_bars else None)
        hit += f["exponent_ci_low"] <= -0.7 <= f["exponent_ci_high"]
    return hit / sweeps


def test_power_law_interval_covers_the_true_exponent_at_its_level():
    """6 sizes, equal lognormal scatter, no error bars: the t interval covers the true exponent
    in 95% of 4,000 sweeps (binomial band +-1.5%); the normal quantile on 4 degrees of freedom
    would give ~0.89."""
    assert abs(_coverage(np.full(6, 0.3), False) - 0.95) < 0.015


def test_power_law_interval_with_error_bars_never_undercovers():
    """Known, unequal errors: the scale is inflated by chi^2 when the points scatter more than
    their bars, never deflated, so the interval is conservative: coverage in [0.95, 0.99]."""
    cov = _coverage(np.array([0.1, 0.3, 0.2, 0.5, 0.15, 0.4]), True)
    assert 0.95 - 0.01 < cov < 0.99, cov

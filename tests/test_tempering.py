"""The entropy landscape by parallel tempering (issue 23, item 3), against exact enumeration.

N = 12: an ordered ferromagnet with weak random fields (two phases: single-spin Gibbs sampling
does not cross between them, BP's sweeps show hysteresis) and a strongly coupled random model.
Every sampled q, d, e, f and s lies within 4 standard errors (plus 2e-3 for the bisection and the
finite ladder) of enumeration, the copies agree (R-hat < 1.1), and the ferromagnet's d(x) has a
band of d that no rung reaches: its two phases."""

import numpy as np
import pytest

from adaptsym.effective.analysis import gap_verdict
from adaptsym.effective.model import exact_landscape_point
from adaptsym.effective.tempering import bar, tempered_landscape


def ferromagnet(n=12, coupling=0.25, field_std=0.05, seed=1):
    J = np.full((n, n), coupling)
    np.fill_diagonal(J, 0.0)
    return J, np.random.default_rng(seed).normal(0, field_std, n)


def strong_random(n=12, seed=0):
    rng = np.random.default_rng(seed)
    J = np.triu(rng.normal(0, 1.5 / np.sqrt(n), (n, n)), 1)
    return J + J.T, rng.normal(0, 0.3, n)


CASES = {"two-phase ferromagnet": (ferromagnet, np.ones(12)),
         "strong random": (strong_random, np.where(np.random.default_rng(5).random(12) < 0.5, 1.0, -1.0))}


@pytest.fixture(scope="module", params=list(CASES))
def sampled(request):
    make, ref = CASES[request.param]
    J, h = make()
    xs = np.linspace(-1.5, 1.5, 31)
    return request.param, J, h, ref, tempered_landscape(J, h, ref, xs, lambda_steps=16, chains=16, sweeps=1000,
                                                         burn=100, seed=3)


def test_the_sampled_landscape_matches_enumeration_within_its_error_bars(sampled):
    name, J, h, ref, L = sampled
    exact = [exact_landscape_point(J, h, ref, x) for x in L.x]
    for key in ("q", "d", "energy", "free_energy", "entropy"):
        want = np.array([getattr(p, key) for p in exact])
        got, se = getattr(L, key), getattr(L, f"{key}_se")
        assert np.all(np.abs(got - want) <= 4 * se + 2e-3), (name, key, np.abs(got - want).max(), se.max())
    assert L.rhat.max() < 1.1 and L.swap_rate.min() > 0.2
    np.testing.assert_allclose(L.d_histogram.sum(1), 1.0)


def test_the_two_phases_leave_a_gap_in_d_and_the_random_model_none(sampled):
    """At N = 12 the ferromagnet's tilted measures are bimodal at the crossing: d between the
    phases is reached by no rung (the exact distribution of d, by enumeration, agrees)."""
    name, J, h, ref, L = sampled
    width, lo, hi = L.gap()
    n = len(h)
    # the exact largest probability of each d over the same x grid
    from adaptsym.effective.model import all_states, energies

    s = all_states(n)
    k = np.rint((n - s @ ref) / 2).astype(int)
    cov = np.zeros(n + 1)
    for x in L.x:
        logw = -energies(J, h, s) + x * (s @ ref)
        p = np.exp(logw - np.logaddexp.reduce(logw))
        cov = np.maximum(cov, np.bincount(k, weights=p, minlength=n + 1))
    inside = (np.arange(n + 1) / n > L.d.min()) & (np.arange(n + 1) / n < L.d.max())
    if name == "two-phase ferromagnet":
        assert width >= 0.4 and gap_verdict(width, lo, 0.0, n) == "gap between states"
        assert cov[inside & (L.coverage() <= 1e-3)].max() < 3e-3  # exactly rare where the sampler says so
    else:
        assert width == 0.0 and cov[inside].min() > 1e-3


def test_bar_recovers_a_known_log_partition_ratio():
    """Independent spins with fields h_a and h_b = h_a + delta, exact samples: ln Z_b / Z_a is
    sum_i ln cosh(h_b) - ln cosh(h_a), and Delta(s) = delta . s."""
    rng = np.random.default_rng(0)
    n, T, C = 20, 4000, 6
    ha = rng.normal(0, 0.5, n)
    delta = rng.normal(0, 0.3, n)
    hb = ha + delta

    def draws(hf):
        return np.where(rng.random((T, C, n)) < 1 / (1 + np.exp(-2 * hf)), 1.0, -1.0)

    u, v = draws(ha) @ delta, draws(hb) @ delta
    want = np.log(np.cosh(hb)).sum() - np.log(np.cosh(ha)).sum()
    got = bar(u, v)
    assert got.shape == (C,) and np.abs(got - want).max() < 0.05


@pytest.mark.parametrize("steps, want", [(9, "x grid too coarse"), (61, "connected")])
def test_independent_spins_have_no_gap_however_coarse_the_grid(steps, want):
    """A null built to have no gap: independent spins (N = 200), every P_x(d) unimodal, few samples
    (4 copies x 100 sweeps). With 9 x steps the rungs' distributions do not overlap and their sparse
    tails leave empty bins; this must not read as a gap (the rule without the straddle test and the
    sample-size floor called it a "gap between states")."""
    from adaptsym.effective.tempering import GAP_LEVEL

    rng = np.random.default_rng(0)
    n = 200
    h, ref = rng.normal(0, 0.3, n), np.sign(rng.normal(size=n))
    L = tempered_landscape(np.zeros((n, n)), h, ref, np.linspace(-2, 2, steps), lambda_steps=4, chains=4,
                           sweeps=100, burn=20)
    width, lo, _ = L.gap()
    d_min = np.flatnonzero(L.coverage() > GAP_LEVEL)[0] / n
    assert gap_verdict(width, lo, d_min, n, L.unresolved()) == want


def test_gap_verdicts():
    assert gap_verdict(0.5, 0.2, 0.0, 10) == "gap between states"  # d = 0 and 0.1 reached: a phase
    assert gap_verdict(0.5, 0.1, 0.0, 10) == "isolated reference"  # only d = 0: the reference alone
    assert gap_verdict(0.0, np.nan, 0.0, 100, unresolved=0.1) == "x grid too coarse"
    assert gap_verdict(0.0, np.nan, 0.0, 100) == "connected"
    assert gap_verdict(0.015, 0.3, 0.0, 100) == "connected"  # within 2/N
    assert gap_verdict(0.2, 0.01, 0.0, 100) == "isolated reference"
    assert gap_verdict(0.2, 0.3, 0.0, 100) == "gap between states"


def test_a_part_gets_its_sampled_landscape_beside_bps_and_a_verdict(tmp_path):
    """One part of the analysis on the two-phase ferromagnet (N = 10): the BP fit of its ensemble
    records that BP has two stable fixed points there; BP's landscape and the sampled one of the
    model are stored side by side, the sampled d(x) is enumeration's, and the verdict names the gap
    between the phases."""
    from adaptsym.effective.analysis import fit_part, landscape_part, sampled_landscape_part
    from adaptsym.effective.config import EffectiveConfig
    from adaptsym.effective.model import exact_samples
    from adaptsym.storage.store import RunStore

    J, h = ferromagnet(n=10, coupling=0.3, field_std=0.05)
    cfg = EffectiveConfig.model_validate({
        "scenarios": {"under": {"configurations": 5000}}, "fit": {"max_steps": 100},
        "landscape": {"x_max": 1.0, "x_steps": 21, "references": 1,
                      "sampled": {"chains": 8, "sweeps": 600, "burn": 60, "lambda_steps": 12}}})
    store = RunStore(tmp_path / "r.zarr")
    res = fit_part(store, cfg, "under", "full", exact_samples(J, h, 5000, np.random.default_rng(2)))
    attrs = store.attrs("effective/under/full")
    assert attrs["bp_fixed_points"] == res["bp_fixed_points"] >= 1 and "bp_stable" in attrs
    refs = np.stack([np.ones(10), -np.ones(10)])
    bp = landscape_part(store, cfg, "under", "full", J, h, refs)
    out = sampled_landscape_part(store, cfg, "under", "full", J, h, refs)
    g = "effective/under/full/sampled"
    assert store.read(g, "d").shape == (2, 21) and store.read(g, "d_histogram").shape == (2, 21, 11)
    assert store.read("effective/under/full", "stable").shape == (2, 2, 21)
    for r in range(2):
        want = np.array([exact_landscape_point(J, h, refs[r], xv).d for xv in store.read(g, "x")])
        assert np.abs(store.read(g, "d")[r] - want).max() < 4 * store.read(g, "d_se")[r].max() + 2e-3
    assert out["sampled_verdict"] == "gap between states" and out["sampled_mixed"]
    assert bp["hysteresis_max_gap"] > 0.5  # BP's sweeps jump between the phases too
    # at the crossing the equilibrium mean d mixes both phases, which no single Bethe state is
    assert 0.3 < out["bp_vs_sampled_d_max"] <= 1.0
    assert store.attrs("effective/under/full")["sampled_verdict"] == out["sampled_verdict"]

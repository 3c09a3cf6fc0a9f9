"""The `textures` task: its loader, its determinism, its spectra, and its exact Bayes error checked
against the Bayes rule applied to generated images and against plain Monte Carlo."""

import numpy as np
import pytest
import torch
from scipy import stats

from adaptsym.config import DataSpec, TextureSpec
from adaptsym.nets import textures
from adaptsym.nets.data import load_dataset


def small(**kw) -> DataSpec:
    return DataSpec(name="textures", textures=TextureSpec(**{"n_samples": 1200, **kw}))


def test_loader_shape_labels_split_and_normalisation():
    ds = load_dataset(small(), seed=0)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) + len(ds.x_test) == 1200
    y = torch.cat([ds.y_train, ds.y_test])
    assert set(y.unique().tolist()) == {-1.0, 1.0} and int(y.sum()) == 0  # exactly half of each class
    assert abs(ds.x_train.mean().item()) < 1e-5 and ds.x_train.std().item() == pytest.approx(1, abs=1e-3)
    assert 0.1 < float((ds.y_train > 0).float().mean()) < 0.9 and len(ds.x_test) == 240  # shuffled, then split


def test_loader_is_deterministic_and_seeded():
    a, b = load_dataset(small(), seed=0), load_dataset(small(), seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, load_dataset(small(), seed=1).x_train)  # the split's seed
    assert not torch.equal(a.x_train, load_dataset(small(seed=7), seed=0).x_train)  # the images' seed


def test_the_first_images_do_not_depend_on_how_many_are_drawn():
    spec = TextureSpec()
    x1, y1 = textures.generate(spec, 700)
    x2, y2 = textures.generate(spec, 2300)
    assert np.array_equal(x1, x2[:700]) and np.array_equal(y1, y2[:700])
    assert x2.dtype == np.float32 and x2.shape == (2300, 3, 32, 32)


def test_images_have_the_stated_power_spectrum_in_every_channel():
    """E |DFT(opponent channel)|^2 = M S_y(k): the mean periodogram over 2,000 images of each class
    matches it (each frequency's mean of chi-square variables, within 5 of its standard errors)."""
    spec = TextureSpec()
    x, y = textures.generate(spec, 4000)
    opp = np.einsum("oc,nchw->nohw", textures.OPPONENT, x.astype(np.float64))
    power = np.abs(np.fft.fft2(opp)) ** 2 / textures.SIDE**2
    for label, S in zip((1.0, -1.0), textures.spectra(spec)):
        mean = power[y == label].mean(axis=0)
        se = S / np.sqrt((y == label).sum())  # an exponential (chi^2_2 / 2) per frequency: sd = mean
        assert np.all(np.abs(mean - S) < 5 * se * np.sqrt(2)), label
    # the label is only in the luminance of the band: the two classes' spectra differ nowhere else
    sp, sm = textures.spectra(spec)
    r, _ = textures.frequencies()
    band = (r >= spec.band[0]) & (r <= spec.band[1])
    assert np.array_equal(sp[1:], sm[1:]) and np.array_equal(sp[0][~band], sm[0][~band])
    assert np.abs(sp[0] - sm[0])[band].max() > 0.5 * spec.anisotropy * sp[0][band].min()
    # the classes have equal determinants, so the Bayes rule has no constant term
    assert np.log(sp).sum() == pytest.approx(np.log(sm).sum(), rel=1e-12)


@pytest.mark.parametrize("kw", [{}, {"anisotropy": 0.2, "band": (4.0, 6.0)}])
def test_bayes_error_is_the_error_of_the_bayes_rule_on_generated_images(kw):
    spec = TextureSpec(**kw)
    exact = textures.bayes_error(spec)
    x, y = textures.generate(spec, 6000)
    wrong = int((np.sign(textures.bayes_statistic(spec, x)) != y).sum())
    lo, hi = stats.binomtest(wrong, len(y)).proportion_ci(0.999)
    assert lo < exact < hi, (exact, wrong / len(y))
    # and against Monte Carlo on its own chi-square representation (an independent draw)
    lam, nu = textures._chi_square_terms(spec)
    rng = np.random.default_rng(0)
    q = sum(l_ * rng.chisquare(n_, 40_000) for l_, n_ in zip(lam, nu) if l_ != 0)
    lo, hi = stats.binomtest(int((q < 0).sum()), len(q)).proportion_ci(0.999)
    assert lo < exact < hi


def test_bayes_error_limits():
    assert textures.bayes_error(TextureSpec(anisotropy=1e-6)) == pytest.approx(0.5, abs=1e-3)  # no signal
    assert textures.bayes_error(TextureSpec(anisotropy=0.95, band=(1.0, 16.0))) < 1e-6  # overwhelming signal
    errs = [textures.bayes_error(TextureSpec(anisotropy=a)) for a in (0.2, 0.3, 0.4, 0.5)]
    assert np.all(np.diff(errs) < 0)  # a stronger cue, a smaller error


def test_bad_texture_settings_are_refused():
    with pytest.raises(ValueError, match="band must be 0 < low <= high"):
        TextureSpec(band=(5.0, 2.0))
    with pytest.raises(ValueError, match="chroma powers must be > 0"):
        TextureSpec(chroma=(0.3, 0.0))

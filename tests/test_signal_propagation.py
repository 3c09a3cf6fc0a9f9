"""The length map and chi_1 at initialisation against their closed forms (ReLU: sigma_w^2 / 2)."""

import numpy as np
import pytest
import torch

from adaptsym.config import ModelSpec
from adaptsym.nets.models import build_plan
from adaptsym.nets.signal_propagation import init_weights, measure, q_map


def _check(r, min_units_ok):
    ok = np.isfinite(r["q_ratio"])
    ok[:, ~min_units_ok] = False
    assert ok.any()
    assert np.all(np.abs(r["q_ratio"][ok] - 1) < 4 * r["q_ratio_se"][ok] + 0.03)
    okc = np.isfinite(r["chi1_ratio"])
    okc[:, ~min_units_ok] = False
    assert okc.any()
    assert np.all(np.abs(r["chi1_ratio"][okc] - 1) < 4 * r["chi1_ratio_se"][okc] + 0.03)


def test_relu_mlp_length_map_and_chi1():
    """q^l = sigma_w^2 / 2 q^(l-1) and chi_1 = sigma_w^2 / 2 (hidden layers; the single output
    unit is too narrow for a mean over units)."""
    plan, shapes = build_plan(ModelSpec(kind="mlp", hidden=[256] * 4), (32,))
    r = q_map(plan, shapes, (32,), [1.0, 1.414, 2.0], draws=6, n_examples=16)
    assert r["after"] == ["input", "relu", "relu", "relu", "relu"]
    wide = np.array([s[0] > 1 for s in shapes])
    _check(r, wide)
    # the map itself: chi_1 grows as sigma_w^2 / 2 (ordered below sqrt 2, chaotic above)
    chi = np.nanmean(r["chi1"][:, 1:4], axis=1)
    np.testing.assert_allclose(chi, np.array([1.0, 1.414, 2.0]) ** 2 / 2, rtol=0.05)


def test_conv_family_with_padding_factor():
    """A VGG-style net: conv layers after a ReLU follow the map with the zero-padding factor; layers
    after a max-pool have no closed form (NaN)."""
    spec = ModelSpec(kind="cnn", conv=[16, 16, "M", 32, 32], hidden=[64])
    plan, shapes = build_plan(spec, (3, 12, 12))
    r = q_map(plan, shapes, (3, 12, 12), [1.2, 1.6], draws=6, n_examples=8)
    assert r["after"][:4] == ["input", "relu", "pool", "relu"]
    assert np.all(np.isnan(r["q_ratio"][:, 2]))
    _check(r, np.array([s[0] > 1 for s in shapes]))


def test_measured_q_is_the_mean_square_preactivation():
    plan, shapes = build_plan(ModelSpec(kind="mlp", hidden=[8]), (5,))
    g = torch.Generator().manual_seed(0)
    w = init_weights(shapes, 1.3, g)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    res = measure(plan, w, x, 1.3, generator=g)
    z1 = x @ w[0].T
    assert res[0].q == pytest.approx(float((z1 ** 2).mean()), rel=1e-12)
    assert res[1].q == pytest.approx(float(((torch.relu(z1) @ w[1].T) ** 2).mean()), rel=1e-12)
    # chi_1 of layer 2 exactly: J = W2 diag(relu'(z1)); E||J v||^2 / n = ||J||_F^2 / n, here n = 1
    exact = float(((w[1] * (z1 > 0)) ** 2).sum(1).mean())
    res = measure(plan, w, x, 1.3, probes=4000, generator=g)
    assert res[1].chi1 == pytest.approx(exact, rel=0.1)


def test_job_writes_zarr_figure_and_json(tmp_path):
    import json

    from jobs.signal_propagation import main
    from adaptsym.storage.store import RunStore

    assert main(["--out", str(tmp_path), "--networks", "mlp-512x6", "--sigmas", "1.0", "2.0", "--draws", "2",
                 "--examples", "8", "--no-mlflow"]) == 0
    out = tmp_path / "signal-propagation"
    s = json.loads((out / "signal_propagation.json").read_text())["mlp-512x6"]
    assert s["layers_compared"] == 6 and abs(s["chi1_by_sigma"]["2.0"] - 2.0) < 0.1
    assert (out / "signal_propagation.png").stat().st_size > 10_000
    assert RunStore(out / "results.zarr", mode="r").read("mlp-512x6", "q").shape == (2, 7)

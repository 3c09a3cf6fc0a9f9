import numpy as np
import pytest
import torch

from adaptsym.config import ModelSpec
from adaptsym.nets.models import BiasFreeNet, flatten_params, unflatten_params


def test_vgg12_has_the_papers_weight_count():
    m = BiasFreeNet(ModelSpec(kind="vgg12"), (3, 32, 32), seed=0)
    assert m.n_params == 9_664_704
    assert m.n_layers == 12
    assert sum(1 for op in m.plan if op[0] == "conv") == 10
    assert m(torch.randn(2, 3, 32, 32)).shape == (2,)


def test_vgg12_eighth_width():
    m = BiasFreeNet(ModelSpec(kind="vgg12", width_multiplier=1 / 8), (3, 32, 32), seed=0)
    assert 1.4e5 < m.n_params < 1.6e5


def test_no_biases_and_he_init():
    m = BiasFreeNet(ModelSpec(kind="mlp", hidden=[400, 300]), (500,), seed=0)
    assert all(p.dim() >= 2 for p in m.parameters())  # weight matrices only, no bias vectors
    for w in m.weights:
        fan_in = w.shape[1]
        tol = 5 * (2.0 / w.numel()) ** 0.5  # 5 standard errors of a sample variance
        assert w.var().item() == pytest.approx(2.0 / fan_in, rel=tol)


def test_index_map_round_trips():
    m = BiasFreeNet(ModelSpec(kind="cnn", conv=[3, "M", 5], hidden=[4]), (2, 8, 8), seed=0)
    idx = m.index
    assert idx.n_params == m.n_params
    flat = flatten_params(m.params())
    rng = np.random.default_rng(0)
    for g in rng.integers(0, idx.n_params, 200):
        layer, tidx = idx.to_tensor_index(int(g))
        assert m.weights[layer][tidx].item() == flat[g].item()
        assert idx.from_tensor_index(layer, tidx) == g
    g = np.arange(idx.n_params)
    layer, local = idx.to_local(g)
    assert np.array_equal(idx.to_global(layer, local), g)
    with pytest.raises(IndexError):
        idx.layer_of([idx.n_params])
    back = unflatten_params(flat, m.shapes)
    assert all(torch.equal(a, b) for a, b in zip(back, m.params()))


def test_too_many_pools_is_a_clear_error():
    with pytest.raises(ValueError, match="max-pool"):
        BiasFreeNet(ModelSpec(kind="cnn", conv=[2, "M", "M", "M", "M"]), (1, 8, 8))

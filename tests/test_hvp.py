"""The Hessian engine against brute force (SPEC section 2, identity 4; section 4)."""

import numpy as np
import pytest
import torch

from adaptsym.curvature.entries import DesignError, block_design, pairs_design
from adaptsym.curvature.hvp import PoolHessian
from adaptsym.nets.losses import hinge
from adaptsym.nets.models import flatten_params, forward, unflatten_params
from adaptsym.curvature.per_example import (design_entries, per_example_entries, per_example_entries_vmap,
                                  per_example_gradients)


def per_example_brute(model, x, y, loss=hinge):
    w0 = flatten_params(model.params()).detach()
    out = []
    for k in range(len(x)):
        f = lambda v: loss(forward(model.plan, unflatten_params(v, model.shapes), x[k:k + 1]), y[k:k + 1]).sum()
        out.append(torch.autograd.functional.hessian(f, w0).numpy())
    return np.stack(out)


def test_pool_hvp_chunking_and_methods_agree(small):
    model, x, y = small
    v = torch.randn(model.n_params, dtype=x.dtype)
    a = PoolHessian(model.plan, model.params(), x, y).matvec(v)
    b = PoolHessian(model.plan, model.params(), x, y, chunk=2).matvec(v)
    c = PoolHessian(model.plan, model.params(), x, y, chunk=3, method="double-backward").matvec(v)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    assert torch.allclose(a, c, rtol=1e-10, atol=1e-13)
    # the one hook: a batch of vectors equals the products one by one, for every strategy
    M = torch.randn(model.n_params, 3, dtype=x.dtype)
    for method in ("auto", "fwd-rev", "double-backward"):
        op = PoolHessian(model.plan, model.params(), x, y, chunk=3, method=method)
        torch.testing.assert_close(op.matmat(M), torch.stack([op.matvec(M[:, j]) for j in range(3)], dim=1),
                                   rtol=1e-10, atol=1e-13)


def test_per_example_entries_equal_brute_force(small):
    model, x, y = small
    hb = per_example_brute(model, x, y)
    N = model.n_params
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(N, 12, replace=False), rng.choice(N, 7, replace=False)
    h = per_example_entries(model.plan, model.params(), x, y, rows, cols, example_chunk=4, column_chunk=3)
    ref = hb[:, rows][:, :, cols]
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(h, ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(per_example_entries_vmap(model.plan, model.params(), x, y, rows, cols), ref,
                               rtol=1e-8, atol=1e-12)
    # per-example rows average to the pool HVP
    pool = PoolHessian(model.plan, model.params(), x, y).columns(cols).numpy()[rows]
    np.testing.assert_allclose(h.mean(axis=0), pool, rtol=1e-8, atol=1e-13)


def test_per_example_gradients_equal_brute_force(small):
    model, x, y = small
    rows = np.arange(0, model.n_params, 3)
    g = per_example_gradients(model.plan, model.params(), x, y, rows).numpy()
    for k in range(len(x)):
        w = tuple(t.detach().clone().requires_grad_(True) for t in model.params())
        gk = torch.autograd.grad(hinge(forward(model.plan, w, x[k:k + 1]), y[k:k + 1]).sum(), w)
        np.testing.assert_allclose(g[k], flatten_params(gk).numpy()[rows], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["block", "pairs"])
def test_designs_give_brute_force_entries_and_flag_same_layer(small, kind):
    model, x, y = small
    hb = per_example_brute(model, x, y)
    rng = np.random.default_rng(1)
    d = block_design(model.index, 10, 6, rng) if kind == "block" else pairs_design(model.index, 40, rng)
    h = design_entries(model.plan, model.params(), x, y, d, example_chunk=4, column_chunk=4)
    np.testing.assert_allclose(h, hb[:, d.p, d.q], rtol=1e-8, atol=1e-12)
    assert d.structural_zero.any() and (~d.structural_zero).any()
    assert np.all(h[:, d.structural_zero] == 0.0)
    assert np.array_equal(d.layer_p, model.index.layer_of(d.p))


def test_design_asking_for_too_many_entries(small):
    model, _, _ = small
    with pytest.raises(DesignError, match="only"):
        block_design(model.index, model.n_params + 1, 2, np.random.default_rng(0))
    with pytest.raises(DesignError, match="only"):
        pairs_design(model.index, model.n_params**2 + 1, np.random.default_rng(0))


def test_stratified_rows_cover_every_layer(small):
    model, _, _ = small
    d = block_design(model.index, model.n_layers * 2, 3, np.random.default_rng(0), stratify=True)
    assert set(model.index.layer_of(d.rows)) == set(range(model.n_layers))
    assert len(np.unique(d.rows)) == len(d.rows)


def test_inactive_examples_are_dropped_exactly_and_an_empty_pool_is_flat(small):
    """Examples with margin > 1 carry no gradient or Hessian: the operator over the pool equals
    the one over its active part (divided by the whole n), and a pool with none is flat."""
    from adaptsym.curvature.hvp import active_examples

    model, x, y = small
    with torch.no_grad():
        out = model(x)
    y2 = y.clone()
    y2[::2] = torch.sign(out[::2]) * 1.0  # these now have margin |T| ...
    x2 = x.clone()
    x2[::2] *= 10.0 / out[::2].abs().clamp(min=1e-3).view(-1, *([1] * (x.dim() - 1)))  # ... |T| = 10 (homogeneous)
    op = PoolHessian(model.plan, model.params(), x2, y2, method="fwd-rev")
    assert op.n_active == len(x) - len(x[::2])
    v = torch.randn(model.n_params, dtype=x.dtype)
    keep = active_examples(model.plan, model.params(), x2, y2, 4)
    full = PoolHessian(model.plan, model.params(), x2[keep], y2[keep], method="fwd-rev").matvec(v)
    torch.testing.assert_close(op.matvec(v) * len(x), full * len(keep))
    empty = PoolHessian(model.plan, model.params(), x[:0], y[:0])
    assert empty.n_active == 0 and all(float(g.abs().max()) == 0 for g in empty.gradient())


def test_local_seams_satisfy_the_protocols(small):
    """`PoolHessian` is a `CurvatureOperator` and `LocalExecutor` an `Executor` (the Ray pair is
    checked in tests/test_distributed.py)."""
    from adaptsym.observables.executor import LocalExecutor
    from adaptsym.curvature.hvp import PoolHessian
    from adaptsym.protocols import CurvatureOperator, Executor

    model, x, y = small
    op = PoolHessian(model.plan, model.params(), x, y)
    assert isinstance(op, CurvatureOperator) and isinstance(LocalExecutor(), Executor)
    assert not isinstance(object(), CurvatureOperator)


@pytest.mark.parametrize("name", ["square", "logistic"])
def test_loss_is_an_argument_of_the_operators(small, name):
    """Square and logistic losses: pool HVPs (every method), per-example entries (fast path and
    the vmap reference) and per-example gradients against autograd Hessians of that loss. Their
    Hessians carry the Gauss-Newton term the hinge lacks, and no example is skipped."""
    from adaptsym.nets.losses import LOSSES

    loss = LOSSES[name]
    model, x, y = small
    hb = per_example_brute(model, x, y, loss)
    dense = PoolHessian(model.plan, model.params(), x, y, loss=loss).dense().numpy()
    np.testing.assert_allclose(dense, hb.mean(0), rtol=1e-8, atol=1e-12)
    hinge_dense = PoolHessian(model.plan, model.params(), x, y).dense().numpy()
    assert np.abs(dense - hinge_dense).max() > 1e-3  # the loss really changed
    v = torch.randn(model.n_params, dtype=x.dtype)
    ref = PoolHessian(model.plan, model.params(), x, y, loss=loss, method="fwd-rev").matvec(v)
    for method in ("graph", "double-backward"):
        got = PoolHessian(model.plan, model.params(), x, y, chunk=3, loss=loss, method=method).matvec(v)
        assert torch.allclose(ref, got, rtol=1e-10, atol=1e-13)
    N = model.n_params
    rng = np.random.default_rng(1)
    rows, cols = rng.choice(N, 10, replace=False), rng.choice(N, 6, replace=False)
    h = per_example_entries(model.plan, model.params(), x, y, rows, cols, example_chunk=4, column_chunk=3, loss=loss)
    np.testing.assert_allclose(h, hb[:, rows][:, :, cols], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(per_example_entries_vmap(model.plan, model.params(), x, y, rows, cols, loss=loss),
                               hb[:, rows][:, :, cols], rtol=1e-8, atol=1e-12)
    g = per_example_gradients(model.plan, model.params(), x, y, rows, loss=loss)
    w0 = flatten_params(model.params()).detach()
    for k in range(len(x)):
        gk = torch.autograd.functional.jacobian(
            lambda v: loss(forward(model.plan, unflatten_params(v, model.shapes), x[k:k + 1]), y[k:k + 1]).sum(), w0)
        np.testing.assert_allclose(g[k].numpy(), gk.numpy()[rows], rtol=1e-8, atol=1e-12)

"""Block spectra and traces against the dense blocks of small networks' Hessians, and the
observable registry that runs them."""

import numpy as np
import pytest
import torch

from adaptsym.observables.block_spectra import block_matvec, blocks_of, layer_slices, measure_block_spectra
from adaptsym.curvature.hvp import PoolHessian


@pytest.fixture
def op(small):
    """The square loss: its diagonal blocks have a non-zero trace (with the hinge every diagonal
    entry is 0, T being linear in each single weight, so a trace would test little)."""
    from adaptsym.nets.losses import SQUARE

    model, x, y = small
    return PoolHessian(model.plan, model.params(), x, y, loss=SQUARE)


def test_block_operator_is_the_dense_principal_block(op):
    H = op.dense()
    for name, idx in blocks_of(op.weights, [(0, 2)]):
        mv = block_matvec(op, idx)
        B = H[idx][:, idx]
        v = torch.randn(len(idx), dtype=torch.float64)
        torch.testing.assert_close(mv(v), B @ v, rtol=1e-10, atol=1e-12)
    layers = [f"L{i}" for i in range(len(op.weights))]
    assert [n for n, _ in blocks_of(op.weights, [(0, 2)])] == layers + ["L0+L2"]
    assert sum(s.stop - s.start for s in layer_slices(op.weights)) == op.n_params
    with pytest.raises(ValueError, match="not a pair"):
        blocks_of(op.weights, [(1, 1)])


def test_block_spectra_against_dense_blocks(op):
    """Lanczos with as many steps as the block has rows recovers its eigenvalue range; the
    quadrature's first two moments and Hutchinson's trace match the dense block."""
    H = op.dense().numpy()
    obs = measure_block_spectra(op, starts=24, steps=200, samples=400, grid=101, sigma_rel=0.01, pairs=[(0, 1)],
                                seed=0, epoch=0)
    names = obs.attrs["blocks"]
    nodes, wts = obs.arrays["ritz_values"][0], obs.arrays["ritz_weights"][0]
    tr, se = obs.arrays["trace_estimate"][0], obs.arrays["trace_stderr"][0]
    for b, (name, idx) in enumerate(blocks_of(op.weights, [(0, 1)])):
        assert names[b] == name
        B = H[idx.numpy()][:, idx.numpy()]
        ev = np.linalg.eigvalsh(B)
        n = len(idx)
        assert obs.arrays["size"][0][b] == n
        assert abs(obs.arrays["lambda_max"][0][b] - ev.max()) < 1e-6 * max(1.0, abs(ev).max())
        assert abs(obs.arrays["lambda_min"][0][b] - ev.min()) < 1e-6 * max(1.0, abs(ev).max())
        for k in (1, 2):  # (1/n) tr B^k from the quadrature, averaged over starts
            # Gauss quadrature is exact in degree k, so each start gives v'B^k v / |v|^2 exactly
            # (checked to 1e-7 per start in tests/test_spectrum.py, which catches a 3% error in the
            # weights) and the only error here is Hutchinson's: within 5 standard errors over the
            # 24 starts (10-20% of the moment for these blocks)
            per_start = (wts[b] * nodes[b] ** k).sum(axis=1)
            est, se_k = per_start.mean(), per_start.std(ddof=1) / np.sqrt(len(per_start))
            exact = np.trace(np.linalg.matrix_power(B, k)) / n
            assert abs(est - exact) <= 5 * se_k + 1e-12 * np.abs(ev).max() ** k, (name, k, est, exact, se_k)
        assert abs(np.trace(B)) > 1e-3  # a trace worth testing
        assert abs(tr[b] - np.trace(B)) <= 5 * se[b] + 1e-10, (name, tr[b], np.trace(B), se[b])
        assert se[b] < 0.2 * abs(np.trace(B))


def test_registry_names_match_the_config_and_run_the_new_observable(tmp_path):
    """The registry holds the config's observables; `block_spectra` asked for by name is measured,
    stored and drawn in the report; the default list leaves it out."""
    from adaptsym.config import MeasureSpec
    from adaptsym.measure import measure_run
    from adaptsym.registry import observables
    from adaptsym.report.render import render_report
    from adaptsym.storage.store import RunStore
    from adaptsym.train import train

    from .test_train_checkpoint import tiny_config

    reg = observables()
    assert tuple(reg) == ("weights", "gradients", "hessian_entries", "spectrum", "circuits", "block_spectra")
    assert "block_spectra" not in MeasureSpec().observables
    assert MeasureSpec().observables == [n for n, o in reg.items() if o.default]
    cfg = tiny_config(epochs=1, checkpoints=(0, 1))
    cfg = cfg.model_copy(update={"measure": cfg.measure.model_copy(update={"observables": ["block_spectra"]})})
    res = train(cfg, "mlp", tmp_path, progress=False)
    measure_run(res.run_dir, cfg=cfg, progress=False)
    store = RunStore.for_run(res.run_dir, mode="r")
    g = store.checkpoint_groups()[-1]
    assert set(k for k, _ in store.root[g].groups()) == {"block_spectra"}
    assert store.attrs(f"{g}/block_spectra")["blocks"] == ["L0", "L1", "L2"]
    assert np.all(store.read(f"{g}/block_spectra", "size") == [10 * 12, 12 * 8, 8])
    rep = render_report(res.run_dir, out_dir=tmp_path / "rep", log=lambda *_: None)
    assert "block_spectra" in rep.figures

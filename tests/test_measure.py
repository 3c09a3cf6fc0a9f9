"""`adaptsym measure` end to end on a real tiny run: zarr, MLflow, restarts and bad input."""

import numpy as np
import pytest

from adaptsym.nets.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jobs.cli import main
from adaptsym.curvature.entries import DesignError
from adaptsym.errors import UserFacingError
from adaptsym.observables.hessian_entries import NonFiniteEntryError
from adaptsym.measure import measure_run
from adaptsym.storage.store import RunStore
from adaptsym.storage.tracking import Tracker
from adaptsym.train import train

from .test_train_checkpoint import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_config()
    res = train(cfg, "mlp", root, progress=False)
    return cfg, res.run_dir


def test_measure_writes_zarr_and_mlflow(trained, tmp_path):
    import mlflow

    cfg, run_dir = trained
    tracker = Tracker(run_dir.parent, cfg.name)
    res = measure_run(run_dir, cfg=cfg, tracker=tracker, progress=False)
    assert res.epochs == [0, 1, 3]
    store = RunStore.for_run(run_dir, mode="r")
    for epoch in res.epochs:
        g = f"epoch_{epoch:04d}"
        assert store.is_complete(g)
        ds = store.open_xarray(f"{g}/hessian_entries")
        K = 12 * 6
        assert ds["h"].dims == ("example", "entry") and ds["h"].shape == (64, K)
        assert ds["corr_submatrix"].dims == ("sub_a", "sub_b")
        sc = store.attrs(g)["scalars"]
        for key in ("marginal.z_fraction", "marginal.z_fraction_exact_std", "active.z_fraction_exact",
                    "marginal.z_forced_fraction_per_example", "active.z_forced_fraction_per_example"):
            assert np.isfinite(sc[f"hessian_entries.{key}"]), key
        # every coupling statistic, in both readings, is a number or untestable with its reason, never a silent 0
        untestable = store.attrs(f"{g}/hessian_entries").get("untestable", {})
        A = int(sc["hessian_entries.n_active_examples"])
        for name in [f"{r}.{st}" for r in ("marginal", "active") for st in ("corr", "coskew", "cokurt")]:
            assert sc[f"hessian_entries.{name}.n_active"] == A
            if sc[f"hessian_entries.{name}.untestable"]:
                assert np.isnan(sc[f"hessian_entries.{name}.exponent"])
                assert f"{A} active examples" in untestable[name]
            else:
                assert np.isfinite(sc[f"hessian_entries.{name}.exponent"]) and name not in untestable
        assert np.all(ds["n_nonzero"].values == np.count_nonzero(ds["h"].values, axis=0))
        # the active examples: exactly the rows with margin <= 1, and every non-zero row among them
        active = ds["active_example"].values
        assert active.sum() == A and not np.any(ds["h"].values[~active])
        h = ds["h"].values
        # structural zeros are exactly 0; the exact mean over S is the pool mean of the stored h
        valid = ds["valid"].values
        assert np.all(h[:, ds["structural_zero"].values] == 0)
        np.testing.assert_allclose(ds["pred_mean"].values[valid], h[:, valid].mean(0))
    mlflow.set_tracking_uri(tracker.uri)
    runs = mlflow.search_runs(experiment_names=[cfg.name], output_format="list")
    measure = [r for r in runs if r.data.tags.get("kind") == "measure"]
    assert len(measure) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == measure[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["epoch_0000", "epoch_0001", "epoch_0003"]
    assert {"hessian_entries.marginal.z_fraction", "hessian_entries.active.z_fraction_exact",
            "hessian_entries.active.corr.n_active"} <= set(children[0].data.metrics)


def test_stored_counts_equal_the_in_memory_references(trained):
    """The tiled, streaming pipeline against the in-memory references of both readings."""
    from adaptsym.stats.comoments import decide, pool_statistics, tuple_statistics
    from adaptsym.stats.correlation import reading_decisions, standardise, standardise_over
    from adaptsym.observables.entry_blocks import STREAM_COUNTS, STREAM_PAIRS, stream
    from adaptsym.stats.bootstrap import multinomial_counts, replicates
    from adaptsym.stats.nonzero import pair_rows

    cfg, run_dir = trained
    measure_run(run_dir, cfg=cfg, epochs=[0], progress=False)
    store = RunStore.for_run(run_dir, mode="r")
    g = "epoch_0000/hessian_entries"
    h, valid, active = store.read(g, "h"), store.read(g, "valid"), store.read(g, "active_example")
    assert valid.sum() > 20
    mc = cfg.measure.hessian_entries
    pairs = pair_rows(np.nonzero(active)[0], stream(cfg.seed, 0, STREAM_PAIRS))
    ref = reading_decisions(h[:, valid], active, q=mc.fdr_q, pvalue=mc.pvalue, fdr=mc.fdr, active_test=mc.active_test,
                            mild_skew=mc.mild_skew, pairs=pairs)
    for reading, tag in (("marginal", ""), ("active", "active_")):
        np.testing.assert_array_equal(store.read(g, f"{tag}corr_count")[valid], ref[reading].counts(int(valid.sum())))
    s = mc.minibatch
    counts = multinomial_counts(h.shape[0], s, mc.replicates, stream(cfg.seed, 0, STREAM_COUNTS))
    X = replicates(h, counts, s)
    np.testing.assert_allclose(store.read(g, "mean")[valid], X.mean(axis=0)[valid], rtol=1e-12)
    for name in ("coskew", "cokurt"):
        tup = store.read(g, f"{name}_tuples")
        u, local = np.unique(tup, return_inverse=True)
        local = local.reshape(tup.shape)
        value, _, tstat = tuple_statistics(standardise(X[:, u]), standardise(h[:, u]), local)
        np.testing.assert_allclose(store.read(g, f"{name}_value"), value, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(store.read(g, f"{name}_tstat"), tstat, rtol=1e-10, atol=1e-12)
        a_value, a_tstat = pool_statistics(standardise_over(h[:, u], active), local)
        np.testing.assert_allclose(store.read(g, f"active_{name}_tstat"), a_tstat, rtol=1e-10, atol=1e-12)
        order = tup.shape[1]
        np.testing.assert_allclose(store.read(g, f"active_{name}_value"), a_value / s ** ((order - 2) / 2),
                                   rtol=1e-10, atol=1e-12)
        nonzero = decide(a_value, a_tstat, mc.nonzero, mc.fdr_q, mc.threshold, mc.pvalue, mc.fdr)
        if not store.attrs(g).get("untestable", {}).get(f"active.{name}"):
            np.testing.assert_array_equal(store.read(g, f"active_{name}_nonzero"), nonzero)
        np.testing.assert_array_equal(store.read(g, f"{name}_n_nonzero"), np.all(h[:, tup] != 0, axis=2).sum(axis=0))


def test_the_bounds_the_docs_state_hold_on_stored_data(trained):
    """Every bound docs/statistics.md states, checked on real measured, stored data (all checkpoints of
    a trained network): |mean / sd| <= sqrt(p / (1 - p)) per entry in both readings (p over the
    pool, and over its active examples), forced entries below the cut, |T| <= sqrt(A) for every
    stored test statistic of the active reading and <= sqrt(n) for the marginal one; and the
    statement the docs withdrew (|T| <= sqrt(examples where every member is non-zero)) is not
    relied on: the check uses the rows behind each reading."""
    from adaptsym.stats.entry_stats import sparsity_bound

    cfg, run_dir = trained
    measure_run(run_dir, cfg=cfg, progress=False)
    store = RunStore.for_run(run_dir, mode="r")
    s, cut = cfg.measure.hessian_entries.minibatch, cfg.measure.hessian_entries.z_cut
    for epoch in (0, 1, 3):
        g = f"epoch_{epoch:04d}/hessian_entries"
        sc = store.attrs(f"epoch_{epoch:04d}")["scalars"]
        h, valid, active = store.read(g, "h"), store.read(g, "valid"), store.read(g, "active_example")
        n, A = h.shape[0], int(active.sum())
        p, p_act = store.read(g, "p_nonzero"), store.read(g, "p_nonzero_active")
        np.testing.assert_allclose(p, np.count_nonzero(h, axis=0) / n)
        # the active reading is over the active rows alone (not the pool standardised, then cut)
        ha, act_valid = h[active], store.read(g, "active_valid")
        np.testing.assert_allclose(store.read(g, "active_z")[act_valid],
                                   (np.sqrt(s) * ha.mean(0) / ha.std(0))[act_valid], rtol=1e-10)
        for z, pp, ok in ((h.mean(0) / np.where(h.std(0) > 0, h.std(0), 1), p, valid),
                          (store.read(g, "active_z") / np.sqrt(s), p_act, store.read(g, "active_valid"))):
            assert np.all(np.abs(z[ok]) <= sparsity_bound(pp[ok]) * (1 + 1e-9) + 1e-12)
        forced = (np.sqrt(s) * sparsity_bound(p) < cut) & valid
        assert sc["hessian_entries.marginal.z_forced_fraction"] == pytest.approx(forced.sum() / valid.sum())
        z_s = np.sqrt(s) * h.mean(0)[forced] / h.std(0)[forced]
        assert np.all(np.abs(z_s) < cut)
        for name in ("coskew", "cokurt"):
            if store.has(g, f"{name}_tstat"):
                assert np.all(np.abs(store.read(g, f"active_{name}_tstat")) <= np.sqrt(A) + 1e-9)
                assert np.all(np.abs(store.read(g, f"{name}_tstat")) <= np.sqrt(n) + 1e-9)
        # the same, as the identity the nightly runs on its own run
        from adaptsym.curvature.identities import documented_bounds

        checks = documented_bounds(store, f"epoch_{epoch:04d}", s, cut)
        assert len(checks) == 5 and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_rerun_skips_complete_and_resumes_unfinished_tiles(trained):
    cfg, run_dir = trained
    measure_run(run_dir, cfg=cfg, epochs=[1], progress=False)
    store = RunStore.for_run(run_dir)
    g = "epoch_0001/hessian_entries"
    before = store.read(g, "h")
    scalars = store.attrs("epoch_0001")["scalars"]
    total = scalars["hessian_entries.tiles_total"]
    assert total >= 2
    # a complete checkpoint is skipped
    again = measure_run(run_dir, cfg=cfg, epochs=[1], progress=False)
    np.testing.assert_equal(again.scalars[1], scalars)
    # as if the process died after half the tiles: those not marked done are recomputed, only those
    done = store.root[g]["tile_done"]
    flags = np.asarray(done[...])
    lost = [tuple(t) for t in np.argwhere(flags)[::2]]
    for t in lost:
        done[t] = 0
    store.mark_complete("epoch_0001", False)
    res = measure_run(run_dir, cfg=cfg, epochs=[1], progress=False)
    assert res.scalars[1]["hessian_entries.tiles_computed"] == len(lost)
    assert store.is_complete("epoch_0001")
    np.testing.assert_array_equal(store.read(g, "h"), before)
    for key in ("hessian_entries.marginal.z_fraction", "hessian_entries.marginal.corr.relative",
                "hessian_entries.active.corr.relative", "hessian_entries.active.cokurt.relative"):
        np.testing.assert_equal(res.scalars[1][key], scalars[key])


def test_unknown_checkpoint_is_named(trained):
    cfg, run_dir = trained
    with pytest.raises(CheckpointError, match=r"epoch\(s\) \[7\].*available: \[0, 1, 3\]"):
        measure_run(run_dir, cfg=cfg, epochs=[7], progress=False)


def _rejected_without_touching_results(run_dir, cfg, bad, error, match):
    measure_run(run_dir, cfg=cfg, epochs=[0], progress=False)
    store = RunStore.for_run(run_dir)
    before = store.read("epoch_0000/hessian_entries", "h")
    with pytest.raises(error, match=match):
        measure_run(run_dir, cfg=bad, epochs=[0], progress=False)
    # a config rejected up front leaves the finished measurement as it was
    assert store.is_complete("epoch_0000")
    np.testing.assert_array_equal(store.read("epoch_0000/hessian_entries", "h"), before)


def test_design_larger_than_network(trained):
    cfg, run_dir = trained
    bad = cfg.model_copy(deep=True)
    bad.measure.hessian_entries.design.rows = 10_000
    _rejected_without_touching_results(run_dir, cfg, bad, DesignError, "only 224 parameters")


def test_pool_smaller_than_minibatch(trained):
    from adaptsym.config import ConfigError

    cfg, run_dir = trained
    bad = cfg.model_copy(deep=True)
    bad.measure.hessian_entries.minibatch = 500
    _rejected_without_touching_results(run_dir, cfg, bad, ConfigError, "minibatch size s=500 exceeds the pool size")


def test_non_finite_entry_is_named_and_nothing_is_marked_complete(trained, tmp_path):
    cfg, run_dir = trained
    ck = load_checkpoint(run_dir / "checkpoints" / "epoch_0003.pt")
    ck["weights"][2] = ck["weights"][2].clone()
    ck["weights"][2][0, 0] = float("inf")
    import shutil

    broken = tmp_path / run_dir.name
    shutil.copytree(run_dir, broken)
    save_checkpoint(broken / "checkpoints" / "epoch_0003.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    with pytest.raises(NonFiniteEntryError, match=r"checkpoint epoch 3: Hessian entry \d+ \(p="):
        measure_run(broken, cfg=cfg, epochs=[3], progress=False, overwrite=True)
    store = RunStore.for_run(broken, mode="r")
    assert not store.is_complete("epoch_0003")


def test_cli_train_and_measure(tmp_path, capsys):
    import yaml

    cfg = tiny_config(epochs=1, checkpoints=(1,), name="cli")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    assert main(["measure", "--run", str(tmp_path / "runs" / "cli-mlp"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "results.zarr" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {m: {kind: mlp}}\ntrain: {epochz: 3}\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "train: unknown key 'epochz'" in err and "epochs" in err
    assert main(["measure", "--run", str(tmp_path / "nowhere"), "--no-mlflow"]) == 2
    assert "no zarr store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # a failed command leaves nothing behind


def test_measure_whose_arrays_exceed_memory_is_refused_before_any_work(trained, tmp_path, monkeypatch, capsys):
    """The counted arrays (weights, basis, h, bootstrap statistics) against the available memory,
    before Ray, MLflow or the store is touched; `--force` goes on; a remote cluster's actors are
    not counted here."""
    import shutil

    from adaptsym.planning.cost import check_memory_floor, counted_arrays_mb

    cfg, run_dir = trained
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    groups = sorted(p.name for p in (copy / "results.zarr").iterdir())
    n_params = RunStore.for_run(copy, mode="r").attrs()["n_params"]
    need = counted_arrays_mb(cfg, n_params, None)["driver"]
    monkeypatch.setattr("adaptsym.planning.cost.available_memory_mb", lambda: need * 0.99)
    assert main(["measure", "--run", str(copy), "--quiet", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert f"at least {need:,.0f} MB of arrays" in err and f"N = {n_params:,}" in err and "--force" in err
    assert sorted(p.name for p in (copy / "results.zarr").iterdir()) == groups  # nothing measured
    assert not (copy / "mlflow.db").exists() and not (tmp_path / "mlflow.db").exists()
    monkeypatch.setattr("adaptsym.planning.cost.available_memory_mb", lambda: need * 1.01)
    check_memory_floor(cfg, n_params, None)  # fits: no error
    c = counted_arrays_mb(cfg, n_params, 3)
    monkeypatch.setattr("adaptsym.planning.cost.available_memory_mb", lambda: c["driver"] + 2 * c["actor"])
    check_memory_floor(cfg, n_params, 3, actors_here=False)
    with pytest.raises(UserFacingError, match="3 actors x"):
        check_memory_floor(cfg, n_params, 3)
    assert main(["measure", "--run", str(copy), "--no-mlflow", "--quiet", "--epochs", "0", "--force"]) == 0


def _pool_activity(model, px, py) -> int:
    import torch

    with torch.no_grad():
        return int((py * model(px) < 1).sum())


def test_fixed_active_pool_has_the_same_A_at_every_size():
    """`measure.pool: fixed-active`: exactly pool_active examples with margin < 1 and pool_size in
    all, whatever the network; the seeded 'all' pool (the old sweep) has an A that moves with N."""
    import torch

    from adaptsym.config import ConfigError, ModelSpec
    from adaptsym.measure import checkpoint_pool, select_pool
    from adaptsym.nets.data import load_dataset
    from adaptsym.nets.models import BiasFreeNet

    cfg = tiny_config()
    data = load_dataset(cfg.data, cfg.seed)
    x, y = select_pool(data.x_train, data.y_train, 64, cfg.seed)
    fixed = cfg.model_copy(update={"measure": cfg.measure.model_copy(update={"pool": "fixed-active",
                                                                             "pool_active": 24})})
    seen_all = []
    for width, gain in ((4, 2.0), (16, 4.0), (64, 8.0)):  # different activity over the training set
        model = BiasFreeNet(ModelSpec(kind="mlp", hidden=[width, width]), data.input_shape, seed=width)
        with torch.no_grad():
            model.weights[-1].mul_(gain)
        px, py = checkpoint_pool(model, data, x, y, fixed)
        assert len(px) == 64 and _pool_activity(model, px, py) == 24
        # the examples are training examples, each once, balanced by nothing but the permutation
        rows = {tuple(r.tolist()) for r in px}
        assert len(rows) == 64 and rows <= {tuple(r.tolist()) for r in data.x_train}
        seen_all.append(_pool_activity(model, *checkpoint_pool(model, data, x, y, cfg)))
    assert len(set(seen_all)) > 1, "the size-sensitive control: the seeded pool's A must differ across these nets"
    # too few active, or too few inactive, examples: a clear error, not a smaller pool
    big = fixed.model_copy(update={"measure": fixed.measure.model_copy(update={"pool_size": 220, "pool_active": 200})})
    with pytest.raises(ConfigError, match="pool_active=200, but only 1[0-9][0-9] of the 240"):
        checkpoint_pool(model, data, x, y, big)
    with torch.no_grad():
        model.weights[-1].zero_()  # output 0: every margin is 0, every example active
    with pytest.raises(ConfigError, match="needs 40 examples with margin >= 1, but only 0 of the 240"):
        checkpoint_pool(model, data, x, y, fixed)


def test_fixed_active_pool_config_is_checked():
    from adaptsym.config import parse_config

    base = tiny_config().model_dump(mode="json")
    for measure, message in (({"pool": "fixed-active"}, "needs measure.pool_active"),
                             ({"pool_active": 8}, "only read with measure.pool: fixed-active"),
                             ({"pool": "fixed-active", "pool_active": 99}, "exceeds measure.pool_size=64")):
        bad = {**base, "measure": {**base["measure"], **measure}}
        with pytest.raises(Exception, match=message):
            parse_config(bad)


def test_measure_with_a_fixed_active_pool_stores_A(trained, tmp_path):
    import shutil

    cfg, run_dir = trained
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    m = cfg.measure.model_copy(update={"pool": "fixed-active", "pool_active": 20, "observables": ["hessian_entries"]})
    fixed = cfg.model_copy(update={"measure": m})
    res = measure_run(copy, cfg=fixed, epochs=[3], progress=False, overwrite=True)
    sc = res.scalars[3]
    assert sc["hessian_entries.n_active_examples"] == 20 and sc["hessian_entries.pool_size"] == 64
    assert int(RunStore.for_run(copy, mode="r").read("epoch_0003/hessian_entries", "active_example").sum()) == 20


def test_results_table_prints_the_training_history(trained, capsys):
    from jobs.results_table import main as table

    cfg, run_dir = trained
    measure_run(run_dir, cfg=cfg, epochs=[3], progress=False)
    assert table([str(run_dir), "--training"]) == 0
    out = capsys.readouterr().out
    store = RunStore.for_run(run_dir, mode="r")
    active, acc = store.read("training", "train_active"), store.read("training", "test_acc")
    lines = [line for line in out.splitlines() if line.startswith(f"| {run_dir.name} | ") and line.count("|") == 6]
    assert len(lines) == len(active) == 4  # epochs 0-3
    cells = lines[-1].strip("|").split("|")
    assert float(cells[2]) == pytest.approx(active[-1], abs=0.005) and float(cells[4]) == pytest.approx(acc[-1], abs=0.005)


def test_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch):
    """Without a terminal (Ray job logs, CI, nohup) train and measure print one line per epoch,
    per observable and per checkpoint with the elapsed time and an ETA, then the MLflow run's
    URL and the next command; `--quiet` prints none of them."""
    import re

    import yaml

    cfg = tiny_config(epochs=2, checkpoints=(1, 2), name="lines")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    runs = tmp_path / "runs"
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert main(["train", "--config", str(path), "--out", str(runs)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^train mlp: epoch \d \(loss [\d.]+, acc [\d.]+\) done in \d+ s \(\d/3; elapsed \d+ s",
                          out, re.M)) == 3, out
    assert "ETA" in out and "finished" in out
    assert main(["measure", "--run", str(runs / "lines-mlp"), "--epochs", "1", "2"]) == 0
    out = capsys.readouterr().out
    for epoch in (1, 2):
        for name in cfg.measure.observables:
            assert re.search(rf"^measure lines-mlp: epoch {epoch}: {name} done in \d+ s \(elapsed \d+ s\)$", out, re.M), \
                (name, out)
    assert re.search(r"^measure lines-mlp: epoch 1 \(checkpoint\) done in \d+ s \(1/2; elapsed \d+ s, ETA \d+ s\)$",
                     out, re.M), out
    assert re.search(r"^measure lines-mlp: epoch 2 \(checkpoint\) done in .* \(2/2; .*finished\)$", out, re.M), out
    run_id = RunStore.for_run(runs / "lines-mlp", mode="r").attrs()["measure_mlflow_run_id"]
    assert re.search(rf"^MLflow run {run_id}: http://127\.0\.0\.1:5000/#/experiments/\d+/runs/{run_id}\?workflowType="
                     r"machine_learning  \(open with `make mlflow-ui`", out, re.M), out
    assert f"next: adaptsym report --run {runs / 'lines-mlp'}" in out
    assert main(["measure", "--run", str(runs / "lines-mlp"), "--epochs", "1", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "measure lines-mlp:" not in out and "measured 2 checkpoint(s)" in out
    assert main(["measure", "--run", str(runs / "lines-mlp"), "--epochs", "1", "2"]) == 0
    assert "epoch 1: already measured, kept (1/2)" in capsys.readouterr().out

"""One registration per observable: a new observable is one module and one registration line, and
the service validates its settings in a config, measures it, stores it in zarr, logs it to MLflow
and draws its figure in the report, with no other edit."""

import numpy as np
import pytest

from adaptsym.config import ConfigError, parse_config
from adaptsym.measure import measure_run
from adaptsym.registry import Figure, Observable, observables, register, unregister
from adaptsym.report.render import figures, render_report
from adaptsym.storage.store import RunStore
from adaptsym.storage.tracking import Tracker
from adaptsym.train import train

from . import toy_observable as toy


def config(measure: dict):
    return parse_config({
        "name": "toy", "seed": 1, "device": "cpu",
        "data": {"name": "teacher", "teacher": {"n_samples": 200, "input_dim": 6, "hidden": [6]}},
        "models": {"mlp": {"kind": "mlp", "hidden": [8]}},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "checkpoints": [0, 1]},
        "measure": {"pool_size": 32, **measure}})


@pytest.fixture
def toy_registered():
    register(Observable("toy", toy.measure, settings=toy.Settings, figures=(Figure("fig_toy", toy.figure, (5, 3)),),
                        default=False))
    yield
    unregister("toy")


def test_the_built_in_registrations():
    reg = observables()
    assert list(reg) == ["weights", "gradients", "hessian_entries", "spectrum", "circuits", "block_spectra"]
    assert [n for n, o in reg.items() if not o.default] == ["block_spectra"]
    # config names and defaults derive from the registry
    assert config({}).measure.observables == ["weights", "gradients", "hessian_entries", "spectrum", "circuits"]
    names = {f.name for f, _ in figures()}
    assert {"fig3a_weights", "fig7c_coupling", "fig8b_loss_accuracy"} <= names and "block_spectra" not in names


def test_a_toy_observable_is_one_module_and_one_registration_line(toy_registered, tmp_path):
    with pytest.raises(ConfigError, match=r"measure.toy.scale: Input should be greater than 0"):
        config({"observables": ["toy"], "toy": {"scale": -1}})
    with pytest.raises(ConfigError, match=r"measure.toy: unknown key 'bogus'"):
        config({"observables": ["toy"], "toy": {"bogus": 1}})
    cfg = config({"observables": ["weights", "toy"], "toy": {"scale": 2.0}})
    assert cfg.measure.toy.scale == 2.0 and cfg.measure.model_dump()["toy"] == {"scale": 2.0}
    res = train(cfg, "mlp", tmp_path, progress=False)
    tracker = Tracker(tmp_path, cfg.name)
    m = measure_run(res.run_dir, cfg=cfg, tracker=tracker, progress=False)
    store = RunStore.for_run(res.run_dir, mode="r")
    for epoch in (0, 1):
        g = f"epoch_{epoch:04d}"
        norms = store.read(f"{g}/toy", "scaled_norms")
        assert store.open_xarray(f"{g}/toy")["scaled_norms"].dims == ("layer",)
        assert m.scalars[epoch]["toy.total"] == pytest.approx(np.sqrt(np.sum(norms**2)))
        assert not store.has_group(f"{g}/spectrum")  # only what the config asked for
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    runs = mlflow.search_runs(experiment_names=[cfg.name], output_format="list")
    assert any("toy.total" in r.data.metrics for r in runs)
    rep = render_report(res.run_dir, out_dir=tmp_path / "report", log=lambda *_: None)
    assert "fig_toy" in rep.figures and rep.figures["fig_toy"].stat().st_size > 1000
    assert "tests.toy_observable.figure" in rep.html.read_text()


def test_an_unregistered_observable_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"unknown observable 'toy'; registered: weights"):
        config({"observables": ["toy"]})
    with pytest.raises(ConfigError, match=r"measure: unknown key 'toy'"):
        config({"toy": {"scale": 2}})

import pickle

import numpy as np
import pytest
import torch

from adaptsym.nets.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from adaptsym.config import parse_config
from adaptsym.storage.store import RunStore
from adaptsym.storage.tracking import Tracker
from adaptsym.train import train


def tiny_config(epochs=3, checkpoints=(0, 1, 3), name="tiny"):
    return parse_config({
        "name": name, "seed": 5, "device": "cpu",
        "data": {"name": "teacher", "teacher": {"n_samples": 300, "input_dim": 10, "hidden": [8]}},
        "models": {"mlp": {"kind": "mlp", "hidden": [12, 8]}},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "checkpoints": list(checkpoints)},
        "measure": {"pool_size": 64, "example_chunk": 32,
                    "hessian_entries": {"minibatch": 16, "replicates": 200,
                                        "design": {"kind": "block", "rows": 12, "cols": 6}, "tuples_per_entry": 8,
                                        "uncertainty_resamples": 20, "mardia_sets": 2, "mardia_dim": 3,
                                        "column_chunk": 2, "corr_block": 16},
                    "spectrum": {"starts": 2, "steps": 8}, "circuits": {"examples": 4, "paths": 32}},
    })


def test_checkpoints_are_self_describing_and_safe(tmp_path):
    cfg = tiny_config()
    res = train(cfg, "mlp", tmp_path, progress=False)
    names = sorted(p.name for p in (res.run_dir / "checkpoints").glob("epoch_*.pt"))
    assert names == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0003.pt"]
    ck = load_checkpoint(res.run_dir / "checkpoints" / "epoch_0003.pt")
    assert ck["epoch"] == 3 and ck["model_spec"]["hidden"] == [12, 8] and ck["data_spec"]["name"] == "teacher"
    assert "optimizer" in ck and ck["seeds"] == {"seed": 5}
    model = model_from_checkpoint(ck)
    assert torch.equal(model.weights[0].detach(), ck["weights"][0])
    # training made progress on this separable problem
    assert res.history["train_loss"][-1] < res.history["train_loss"][0]
    # the recorded active fraction is that of the checkpoint's own margins (brute force)
    from adaptsym.nets.data import load_dataset

    data = load_dataset(cfg.data, cfg.seed)
    with torch.no_grad():
        margins = data.y_train * model(data.x_train)
    assert res.history["epoch"][-1] == 3
    assert res.history["train_active"][-1] == int((margins < 1).sum()) / len(margins)
    assert 0 < res.history["train_active"][-1] < res.history["train_active"][0] <= 1


def test_truncated_foreign_and_unsafe_checkpoints_fail_clearly(tmp_path):
    res = train(tiny_config(epochs=1, checkpoints=(1,)), "mlp", tmp_path, progress=False)
    good = res.run_dir / "checkpoints" / "epoch_0001.pt"
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not an adaptsym checkpoint"):
        load_checkpoint(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as f:
        pickle.dump({"format": Evil()}, f)
    with pytest.raises(CheckpointError):  # weights_only=True refuses arbitrary objects
        load_checkpoint(unsafe)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full = train(tiny_config(epochs=4, checkpoints=(0, 4)), "mlp", tmp_path / "a", progress=False)
    # "interrupted" after epoch 2: the same run directory is then trained to epoch 4
    train(tiny_config(epochs=2, checkpoints=(0, 2)), "mlp", tmp_path / "b", progress=False)
    resumed = train(tiny_config(epochs=4, checkpoints=(0, 4)), "mlp", tmp_path / "b", progress=False)
    a = load_checkpoint(full.run_dir / "checkpoints" / "epoch_0004.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "epoch_0004.pt")
    for wa, wb in zip(a["weights"], b["weights"]):
        assert torch.equal(wa, wb)
    assert resumed.history["epoch"] == [0, 1, 2, 3, 4]
    assert np.allclose(resumed.history["train_loss"], full.history["train_loss"])


def test_history_in_zarr_and_mlflow(tmp_path):
    import mlflow

    cfg = tiny_config()
    tracker = Tracker(tmp_path, cfg.name)
    res = train(cfg, "mlp", tmp_path, tracker=tracker, progress=False)
    ds = RunStore.for_run(res.run_dir, mode="r").open_xarray("training")
    assert list(ds["train_loss"].dims) == ["epoch"]
    assert ds["epoch"].values.tolist() == [0, 1, 2, 3]
    assert np.allclose(ds["omega"].values, 0.05 * ds["grad_norm2"].values)
    root = RunStore.for_run(res.run_dir, mode="r").attrs()
    assert root["config"]["name"] == "tiny" and root["n_params"] == 10 * 12 + 12 * 8 + 8
    assert "git_commit" in root and root["versions"]["torch"].startswith("2.13")

    mlflow.set_tracking_uri(tracker.uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_id == res.mlflow_run_id
    assert runs[0].data.tags["zarr_path"].endswith("results.zarr")
    hist = mlflow.MlflowClient().get_metric_history(res.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in hist) == [0, 1, 2, 3]
    assert runs[0].data.params["train.lr"] == "0.05"


def test_mlflow_shows_runs_dataset_figure_and_own_model_only(tmp_path):
    """The experiment is tagged as model training (MLflow 3's UI then opens on the runs), the
    training run carries its data set as an input, its loss/accuracy figure, and only its own
    model's config among its params."""
    from mlflow import MlflowClient

    cfg = tiny_config()
    cfg = cfg.model_copy(update={"models": {**cfg.models, "other": cfg.models["mlp"].model_copy(
        update={"hidden": [3]})}})
    tracker = Tracker(tmp_path, cfg.name)
    res = train(cfg, "mlp", tmp_path, tracker=tracker, progress=False)
    client = MlflowClient(tracking_uri=tracker.uri)
    exp = client.get_experiment_by_name(cfg.name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(res.mlflow_run_id)
    assert any(k.startswith("models.mlp.") for k in run.data.params)
    assert not any(k.startswith("models.other.") for k in run.data.params)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == f"{cfg.data.name}-train"
    assert [t.value for t in inputs[0].tags if t.key == "mlflow.data.context"] == ["training"]
    assert "training_curves.png" in [a.path for a in client.list_artifacts(res.mlflow_run_id)]

"""The report renders headless from a run's zarr store alone; missing arrays skip one figure."""

import shutil

import numpy as np
import pytest
from PIL import Image

from jobs.cli import main
from adaptsym.measure import measure_run
from adaptsym.report import FIGURES, render_report
from adaptsym.train import train

from .test_train_checkpoint import tiny_config


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    cfg = tiny_config(epochs=3, checkpoints=(0, 1, 3), name="rep")
    res = train(cfg, "mlp", root, progress=False)
    measure_run(res.run_dir, cfg=cfg, progress=False)
    # only the zarr store travels: the figures must come from it alone
    only_store = root / "copy" / res.run_dir.name
    only_store.mkdir(parents=True)
    shutil.copytree(res.run_dir / "results.zarr", only_store / "results.zarr")
    return only_store


def test_every_figure_renders_from_the_store(measured, tmp_path):
    rep = render_report(measured, out_dir=tmp_path / "r")
    assert rep.skipped == {}
    assert set(rep.figures) == {name for name, _, _ in FIGURES}
    for path in rep.figures.values():
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG"
    text = rep.html.read_text()
    assert text.startswith("<!doctype html>") and text.count("data:image/png;base64,") == len(FIGURES)
    assert "hessian_entries.z_fraction" in text


def test_missing_arrays_skip_only_their_figure(measured, tmp_path):
    import zarr

    broken = tmp_path / measured.name
    shutil.copytree(measured, broken)
    root = zarr.open_group(str(broken / "results.zarr"), mode="a")
    for g in [k for k, _ in root.groups() if k.startswith("epoch_")]:
        del root[f"{g}/spectrum"]
    messages = []
    rep = render_report(broken, log=messages.append)
    assert set(rep.skipped) == {"fig8a_spectrum"}
    assert "spectrum/ritz_values" in rep.skipped["fig8a_spectrum"]
    assert any("fig8a_spectrum" in m and "spectrum/ritz_values" in m for m in messages)
    assert len(rep.figures) == len(FIGURES) - 1
    assert "skipped: missing spectrum/ritz_values" in rep.html.read_text()


def test_report_cli(measured, capsys):
    assert main(["report", str(measured), "--no-mlflow"]) == 0
    assert "report.html" in capsys.readouterr().out

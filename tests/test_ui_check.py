"""`make ui-check` in a real browser: MLflow's UI opens on the runs table (issue 24).

A real MLflow store with a train run and a measure run (with a nested checkpoint run), served by
`mlflow ui --app-name adaptsym-runs`, looked at by headless Chromium in fresh profiles. The
control, plain `mlflow ui`, must fail the same assertions (it opens on the GenAI overview)."""

import json
import shutil

import pytest

from adaptsym.storage.tracking import Tracker
from jobs import ui_check

pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")),
                                reason="no Chromium (apt-get install chromium)")


def test_ui_opens_on_the_runs_table(tmp_path, capsys):
    tracker = Tracker(tmp_path, "uicheck")
    with tracker.run("train-uicheck-mlp", params={"lr": 0.1}, tags={"kind": "train"}):
        tracker.log_metrics({"train_loss": 0.5}, step=1)
    with tracker.run("measure-uicheck-mlp", tags={"kind": "measure"}):
        with tracker.run("epoch_0001", tags={"epoch": 1}, nested=True):
            tracker.log_metrics({"z": 0.1}, step=1)
    rc = ui_check.main(["--runs", str(tmp_path), "--experiment", "uicheck", "--out", str(tmp_path / "shots"),
                        "--control"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["runs"] == ["measure-uicheck-mlp", "train-uicheck-mlp"]  # top level only
    assert out["problems"] == [] and any("GenAI overview" in p for p in out["control_problems"])
    for shot in out["screenshots"]:
        assert (tmp_path / "shots" / shot.split("/")[-1]).stat().st_size > 10_000
    assert ui_check.runs_table_problems("<a>Detect Issues</a>", ["x"]) == [
        "run 'x' is not on the page", "no 'Runs' entry in the sidebar", "the GenAI overview shows ('Detect Issues')"]


def test_ui_check_without_a_store_says_what_to_do(tmp_path, capsys):
    assert ui_check.main(["--runs", str(tmp_path)]) == 2
    assert "run `make demo` first" in capsys.readouterr().err

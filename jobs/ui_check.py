"""`make ui-check`: what a user sees in MLflow's UI, checked in a real browser (headless Chromium).

    python -m jobs.ui_check [--runs runs] [--experiment demo] [--out docs] [--control] [--report HTML]

Starts `mlflow ui --app-name adaptsym-runs` (`adaptsym/storage/mlflow_ui.py`) on the store
`<runs>/mlflow.db`, on 127.0.0.1 and a free port; opens, each in a fresh browser profile (a user
who never chose a view), the landing page and the experiment's link; screenshots both to
`<out>/mlflow_ui_home.png` and `<out>/mlflow_ui_experiment.png` and asserts on their DOM
(`chromium --dump-dom`): the landing page lists the experiment, the experiment page is the runs
table with every top-level run of the experiment by name, and nothing of the GenAI overview shows
("Detect Issues", "No data available"). `--control` repeats the experiment page on plain
`mlflow ui` and requires the same assertions to fail there (the check can fail). `--report`
also screenshots an HTML report to `<out>/report.png`. Every server is stopped at the end.
Prints one JSON object; exits 1 naming each failed assertion.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

APP = "adaptsym-runs"
GENAI_MARKERS = ("Detect Issues", "No data available")


class UICheckError(RuntimeError):
    pass


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise UICheckError("no Chromium here: `apt-get install chromium` (Debian) installs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store: Path, app: str | None, timeout: float = 120.0):
    """A running `mlflow ui` on the sqlite store (127.0.0.1, a free port): yields its base URL."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{store.resolve()}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"] + (["--app-name", app] if app else [])
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                log.seek(0)
                raise UICheckError(f"`{' '.join(cmd)}` did not answer on {url} within {timeout:.0f} s:\n"
                                   + log.read().decode(errors="replace")[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def browse(url: str, screenshot: Path | None, budget_ms: int = 20000) -> str:
    """The page's DOM after `budget_ms` of virtual time in a fresh profile; optionally a 1400x1000 PNG
    (taken in another fresh profile, so neither run sees what the other stored)."""

    def run(*extra: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as profile:
            return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                                   f"--user-data-dir={profile}", "--window-size=1400,1000",
                                   f"--virtual-time-budget={budget_ms}", *extra, url],
                                  capture_output=True, timeout=180, check=False)

    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)
        run(f"--screenshot={screenshot.resolve()}")
        if not screenshot.is_file():
            raise UICheckError(f"Chromium wrote no screenshot of {url}")
    return run("--dump-dom").stdout.decode(errors="replace")


def experiment_runs(store: Path, experiment: str) -> tuple[str, list[str]]:
    """The experiment's id and the names of its top-level runs (those the runs table lists)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store.resolve()}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UICheckError(f"no experiment {experiment!r} in {store}; run `make demo` first (or pass --experiment)")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    names = sorted({r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags})
    return exp.experiment_id, names


def runs_table_problems(dom: str, run_names: list[str]) -> list[str]:
    """What keeps the page from being the runs table a user expects (empty: it is)."""
    out = [f"run {name!r} is not on the page" for name in run_names if name not in dom]
    if ">Runs<" not in dom:
        out.append("no 'Runs' entry in the sidebar")
    out += [f"the GenAI overview shows ({m!r})" for m in GENAI_MARKERS if m in dom]
    return out


def check(runs: Path, experiment: str, out: Path, control: bool, report: Path | None) -> dict:
    store = runs / "mlflow.db"
    if not store.is_file():
        raise UICheckError(f"no MLflow store at {store}; run `make demo` first (or pass --runs)")
    exp_id, names = experiment_runs(store, experiment)
    result = {"store": str(store), "experiment": experiment, "runs": names, "screenshots": [], "problems": []}
    t0 = time.monotonic()
    with mlflow_ui(store, APP) as url:
        home = browse(url + "/", out / "mlflow_ui_home.png")
        if experiment not in home:
            result["problems"].append(f"landing page: experiment {experiment!r} is not listed")
        page = browse(f"{url}/#/experiments/{exp_id}", out / "mlflow_ui_experiment.png")
        result["problems"] += [f"experiment page: {p}" for p in runs_table_problems(page, names)]
        result["screenshots"] += [str(out / "mlflow_ui_home.png"), str(out / "mlflow_ui_experiment.png")]
    if control:
        with mlflow_ui(store, None) as url:
            plain = runs_table_problems(browse(f"{url}/#/experiments/{exp_id}", None), names)
        result["control_problems"] = plain
        if not plain:
            result["problems"].append("control: plain `mlflow ui` passed the same assertions, so they cannot fail")
    if report is not None:
        browse(report.resolve().as_uri(), out / "report.png", budget_ms=5000)
        result["screenshots"].append(str(out / "report.png"))
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.ui_check", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="folder holding mlflow.db (default runs, what `make demo` writes)")
    ap.add_argument("--experiment", default="demo", help="experiment whose link is opened (default demo)")
    ap.add_argument("--out", default="docs", help="folder of the screenshots (default docs)")
    ap.add_argument("--control", action="store_true", help="also require plain `mlflow ui` to fail the check")
    ap.add_argument("--report", default=None, help="an HTML report to screenshot too (e.g. runs/demo-cnn/report/report.html)")
    args = ap.parse_args(argv)
    try:
        result = check(Path(args.runs), args.experiment, Path(args.out), args.control,
                       Path(args.report) if args.report else None)
    except UICheckError as exc:
        print(f"ui-check: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    for p in result["problems"]:
        print(f"ui-check: FAILED: {p}", file=sys.stderr)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Jobs, submission and infra against real components: a `ray start --head` cluster on 127.0.0.1
with token auth, a real `mlflow server`, the nightly regression, the scale sweep, the manifests."""

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from adaptsym.config import ConfigError
from adaptsym.train import train

from .test_train_checkpoint import tiny_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_HOME": str(home), "MLFLOW_PORT": str(port), "MLFLOW_BIN": str(BIN / "mlflow")}
    proc = subprocess.Popen(["bash", str(ROOT / "infra/mlflow/server.sh")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, 9)
        pytest.fail("mlflow server did not start")
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head():
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    yield f"http://127.0.0.1:{dash}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_submit_runs_a_measure_job_logged_over_http(ray_head, mlflow_server, tmp_path):
    import mlflow

    from jobs.submit import submit

    cfg = tiny_config(epochs=1, checkpoints=(1,), name="submitted")
    run = train(cfg, "mlp", tmp_path, progress=False)
    out = io.StringIO()
    rc = submit("measure", ["--run", str(run.run_dir), "--ray", "auto", "--quiet"], ray_head, working_dir=str(ROOT),
                tracking_uri=mlflow_server, timeout=600, out=out)
    log = out.getvalue()
    assert rc == 0, log[-3000:]
    job_id = log.split("submitted Ray job ")[1].split()[0]
    assert "SUCCEEDED" in log and "actor(s)" in log
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("submitted")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.ray_job_id = '{job_id}'")
    kinds = sorted(r.data.tags.get("kind", "nested") for r in runs)
    assert kinds == ["measure", "nested"]  # the measure run and its checkpoint's nested run
    assert any("hessian_entries.marginal.z_fraction" in r.data.metrics for r in runs)


def test_submit_rejects_a_bad_config_before_anything_is_sent(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    from jobs.submit import submit

    before = len(JobSubmissionClient(ray_head).list_jobs())
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {m: {kind: mlp}}\nmeasure: {pool_sise: 10}\n")
    with pytest.raises(ConfigError, match="pool_sise"):
        submit("train", ["--config", str(bad)], ray_head)
    assert len(JobSubmissionClient(ray_head).list_jobs()) == before


def test_mlflow_server_receives_runs_over_http(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    from adaptsym.storage.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = tiny_config(epochs=1, checkpoints=(1,), name="over-http")
    res = train(cfg, "mlp", tmp_path, tracker=Tracker(tmp_path, cfg.name), progress=False)
    run = mlflow.MlflowClient(tracking_uri=mlflow_server).get_run(res.mlflow_run_id)
    assert run.data.metrics["train_loss"] >= 0 and run.data.tags["kind"] == "train"
    assert not (tmp_path / "mlflow.db").exists()


def test_mlflow_server_down_fails_fast_or_falls_back_when_asked(tmp_path, monkeypatch, capsys):
    from adaptsym.storage.tracking import Tracker, TrackingError

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=dead.replace(".", r"\.")):
        Tracker(tmp_path, "x")
    assert time.monotonic() - t0 < 10
    monkeypatch.setenv("ADAPTSYM_MLFLOW_FALLBACK", "local")
    cfg = tiny_config(epochs=1, checkpoints=(1,), name="fallback")
    tracker = Tracker(tmp_path, cfg.name)
    assert "logging to the local store" in capsys.readouterr().out
    res = train(cfg, "mlp", tmp_path, tracker=tracker, progress=False)
    import mlflow

    local = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert local.get_run(res.mlflow_run_id).data.metrics["train_loss"] >= 0


def test_scale_sweep_fits_an_exponent_over_four_sizes_at_fixed_power(tmp_path, capsys):
    from jobs.scale_sweep import main as sweep

    cfg = {"name": "sweep", "seed": 0, "device": "cpu",
           "data": {"name": "teacher", "teacher": {"n_samples": 800, "input_dim": 8, "hidden": [8]}},
           "models": {f"w{w}": {"kind": "mlp", "hidden": [w, w]} for w in (4, 8, 16, 32)},
           "train": {"epochs": 2, "batch_size": 32, "lr": 0.02, "checkpoints": [2]},
           "measure": {"pool_size": 320, "pool": "fixed-active", "pool_active": 160, "observables": ["hessian_entries"],
                       "hessian_entries": {"minibatch": 16, "replicates": 200, "tuples_per_entry": 16,
                                           "design": {"kind": "block", "rows": 16, "cols": 8},
                                           "uncertainty_resamples": 30, "mardia_sets": 0}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert sweep(["--config", str(path), "--out", str(tmp_path), "--quiet", "--resamples", "40"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["families"]["mlp"]["models"] == ["w4", "w8", "w16", "w32"]
    from adaptsym.storage.store import RunStore

    store = RunStore(tmp_path / "sweep-sweep" / "sweep.zarr", mode="r")
    fits = store.attrs()["families"]["mlp"]["fits"]
    # the same power at every size: A and n fixed by the pool
    assert np.all(store.read("mlp", "n_active") == 160) and np.all(store.read("mlp", "pool_size") == 320)
    for reading, tag in (("marginal", ""), ("active", "active_")):
        fit = fits[f"corr_absolute.{reading}"]
        detected = int(np.sum(store.read("mlp", f"{tag}corr_relative") > 0))  # a size may find nothing
        assert fit["points"] == detected >= 3 and np.isfinite(fit["exponent"]) and fit["exponent_std"] > 0
        assert fit["exponent_ci_low"] < fit["exponent"] < fit["exponent_ci_high"] and fit["ci_level"] == 0.95
        assert len(fit["leave_one_out"]) == 4 and fit["resamples"] == 40
        reps = store.read("mlp", f"corr_relative_replicates_{reading}")
        assert reps.shape == (4, 40) and np.all(reps.std(axis=1) > 0)
        assert np.all(store.read("mlp", f"{tag}corr_untestable") == 0)
        assert np.all(np.isfinite(store.read("mlp", f"{tag}corr_min_detectable_rho")))
    n = store.read("mlp", "n_params")
    assert len(n) == 4 and np.all(np.diff(n) > 0) and n[0] < 200 < 1000 < n[-1]
    assert np.all(store.read("mlp", "train_seconds") > 0) and np.all(store.read("mlp", "measure_seconds") > 0)
    assert (tmp_path / "sweep-sweep" / "scale_sweep.png").stat().st_size > 10_000
    assert sweep(["--table", str(tmp_path / "sweep-sweep" / "sweep.zarr")]) == 0
    md = capsys.readouterr().out
    assert "| w32 | " in md and "| corr_absolute.active | " in md and " / 320 | " in md


def _manifests():
    for path in sorted((ROOT / "cluster").rglob("*.yaml")) + sorted((ROOT / "infra").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    elif isinstance(obj, str):
        yield obj


def test_manifests_parse_and_name_only_what_the_code_provides():
    kinds = {}
    for path, doc in _manifests():
        if "kind" in doc:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            kinds.setdefault(doc["kind"], []).append(path.name)
            if doc["kind"] in ("RayCluster", "RayJob"):
                assert doc["apiVersion"] == "ray.io/v1"
        strings = list(_walk(doc))
        nested = [yaml.safe_load(s) for s in strings if s.lstrip().startswith("apiVersion:")]
        for s in strings + [x for n in nested for x in _walk(n)]:
            for token in s.split():
                if token.startswith("jobs."):
                    assert importlib.util.find_spec(token) is not None, (path, token)
                if token.startswith(("configs/", "jobs/", "infra/", "cluster/")):  # files of this repository
                    assert (ROOT / token).is_file(), (path, token)
        starts_ray = doc.get("kind") in ("RayCluster", "RayJob") or path.name.startswith("ray-cluster") \
            or any(n.get("kind") == "RayJob" for n in nested)
        if starts_ray:  # every Ray process keeps token authentication on
            assert "RAY_AUTH_MODE" in " ".join(strings) and "token" in " ".join(strings), path
    assert {"RayCluster", "RayJob", "CronJob", "ConfigMap"} <= set(kinds)
    launcher = yaml.safe_load((ROOT / "cluster/ray-cluster-aws-gpu.yaml").read_text())
    assert launcher["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    dockerfile = (ROOT / "infra/Dockerfile.gpu").read_text()
    for part in ("adaptsym", "services", "jobs", "configs"):
        assert f"COPY {part} ./{part}" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert "mlflow-server:" in makefile and "infra/mlflow/server.sh" in makefile
    assert "--host \"${MLFLOW_HOST:-127.0.0.1}\"" in (ROOT / "infra/mlflow/server.sh").read_text()


def _pod_specs(obj):
    """Every pod spec (a mapping with 'containers') anywhere in a manifest, nested YAML strings included."""
    if isinstance(obj, dict):
        if "containers" in obj:
            yield obj
        for v in obj.values():
            yield from _pod_specs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _pod_specs(v)
    elif isinstance(obj, str) and obj.lstrip().startswith("apiVersion:"):
        yield from _pod_specs(yaml.safe_load(obj))


def test_every_container_is_locked_down_and_ray_shares_one_token():
    pods = [(path, pod) for path, doc in _manifests() for pod in _pod_specs(doc)]
    assert len(pods) >= 6
    for path, pod in pods:
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0, (path, psc)
        for c in pod["containers"]:
            where = (path.name, c["name"])
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), (where, kind)
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), where  # a version tag (or a digest)
            if c["name"].startswith("ray-"):
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["RAY_AUTH_MODE"]["value"] == "token", where
                assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "adaptsym-ray-token",
                                                                              "key": "auth_token"}, where
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, where  # Ray's session files, with a read-only root
    launcher = yaml.safe_load((ROOT / "cluster/ray-cluster-aws-gpu.yaml").read_text())
    assert "~/.ray/auth_token" in launcher["file_mounts"].values()
    assert any("RAY_AUTH_TOKEN_PATH" in o for o in launcher["docker"]["run_options"])
    dockerfile = (ROOT / "infra/Dockerfile.gpu").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    compose = (ROOT / "infra/mlflow/docker-compose.yaml").read_text()
    assert "POSTGRES_PASSWORD: mlflow" not in compose and "${MLFLOW_DB_PASSWORD:?" in compose


def test_every_cli_option_has_help_with_its_default():
    """`adaptsym <command> --help` explains every option; options with a default say it."""
    import argparse

    from jobs.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for name, parser in sub.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in action.help, (name, action.dest, action.help)


def test_only_adaptsym_is_installed_and_the_command_runs_from_anywhere(tmp_path):
    """`pip install -e .` installs the `adaptsym` package and the command, not top-level `jobs` or
    `services` packages (they would collide in a shared environment); the command finds them in
    the checkout from any working directory, and `import adaptsym` pulls in neither."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for mod in ("jobs", "services"):
        p = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=tmp_path, env=env, capture_output=True)
        assert p.returncode != 0 and b"No module named" in p.stderr, mod
    code = "import sys, adaptsym; assert not any(m.split('.')[0] in ('jobs', 'services', 'ray') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    exe = os.path.join(os.path.dirname(sys.executable), "adaptsym")
    out = subprocess.run([exe, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "measure" in out

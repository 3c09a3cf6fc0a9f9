"""The effective-model ensemble: mean-field binary networks, the collector (local and Ray, killed
and resumed), and the fit/landscape/report job on the collected store."""

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adaptsym.effective.binary_net import BinaryNetSpec, mean_field_logits, train_task
from adaptsym.config import ConfigError
from adaptsym.effective.analysis import parts, pick_references
from adaptsym.effective.config import EffectiveConfig, load_effective_config
from adaptsym.effective.data import load_pca_data, scenario_data
from adaptsym.storage.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "effective-tiny.yaml"
ARRAYS = ("configs", "test_accuracy", "network_seed")


def run_job(module, *args, check=True, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{module} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def write_config(tmp_path, **changes) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        node = cfg
        *head, last = key.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def ensemble(out: Path, scenario: str) -> dict:
    s = RunStore(out / "effective-tiny" / "results.zarr", mode="r")
    return {n: s.read(f"ensemble/{scenario}", n) for n in ARRAYS} | {"attrs": s.attrs(f"ensemble/{scenario}")}


# ------------------------------------------------------------------ networks
def test_local_reparametrisation_matches_sampled_binary_weights():
    """One layer: z = sum_i w_i a_i with P(w = +1) = sigmoid(theta) has mean sum mu a and variance
    sum (1 - mu^2) a^2, as the mean-field forward pass assumes (200,000 sampled networks)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(1, 7, 3, generator=g, dtype=torch.float64)
    a = torch.randn(1, 1, 7, generator=g, dtype=torch.float64)
    w = torch.where(torch.rand(200_000, 7, 3, generator=g, dtype=torch.float64) < torch.sigmoid(theta), 1.0, -1.0).double()
    z = torch.einsum("i,kij->kj", a[0, 0], w)
    mean = mean_field_logits([theta], a, [torch.zeros(1, 1, 3, dtype=torch.float64)])[0, 0]
    sd = mean_field_logits([theta], a, [torch.ones(1, 1, 3, dtype=torch.float64)])[0, 0] - mean
    se = z.std(0) / np.sqrt(len(z))
    assert torch.all((z.mean(0) - mean).abs() < 5 * se)
    assert torch.all((z.std(0) / sd - 1).abs() < 0.01)


def test_train_task_is_a_function_of_seed_and_task():
    cfg = load_effective_config(TINY)
    data = scenario_data(cfg, "under")
    spec = cfg.network_of("under").spec()
    torch.set_num_threads(1)
    a, b = train_task(spec, data, 0, 3, 4, 0.3), train_task(spec, data, 0, 3, 4, 0.3)
    c = train_task(spec, data, 0, 4, 4, 0.3)
    assert np.array_equal(a.configs, b.configs) and np.array_equal(a.accuracy, b.accuracy)
    assert not np.array_equal(a.configs, c.configs)
    assert a.configs.dtype == np.int8 and set(np.unique(a.configs)) <= {-1, 1}
    assert a.configs.shape == (4, spec.n_weights) == (4, 6 * 8 + 8 * 8 + 8 * 10)
    assert list(a.network_seed) == [12, 13, 14, 15]


def test_trained_networks_beat_chance_and_untrained_ones():
    """Training works: the median kept network of 16 beats chance (10%) by far on held-out digits,
    and beats the same networks with 0 epochs."""
    cfg = EffectiveConfig.model_validate({"scenarios": {"s": {"configurations": 1}},
                                          "network": {"widths": [20, 10], "epochs": 5}})
    data = scenario_data(cfg, "s")
    trained = train_task(cfg.network_of("s").spec(), data, 0, 0, 16, 0.5)
    assert np.median(trained.accuracy) > 0.6
    untrained = BinaryNetSpec(widths=(20, 10), epochs=1, lr=1e-9)
    assert np.median(train_task(untrained, data, 0, 0, 16, 0.5).accuracy) < 0.5


# ------------------------------------------------------------------ collector
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny config collected in one process, uninterrupted."""
    out = tmp_path_factory.mktemp("ref")
    run_job("jobs.collect_ensemble", "--config", TINY, "--out", out, "--local", "--quiet", "--no-mlflow")
    return out


def test_reference_collection(reference):
    e = ensemble(reference, "under")
    assert e["attrs"]["committed"] == 100 == len(e["configs"])
    assert np.all(e["test_accuracy"] >= 0.3)
    assert len(set(e["network_seed"].tolist())) == 100  # no network twice
    assert e["attrs"]["networks_passed"] >= 100


def test_killed_collection_resumes_on_ray_to_the_same_bits(reference, tmp_path):
    """SIGKILL the local collector after its first commits, finish on a 2-actor Ray cluster: the
    ensemble equals the uninterrupted one bit for bit (no configuration lost or duplicated)."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "jobs.collect_ensemble", "--config", str(TINY), "--out", str(out),
                          "--local", "--quiet", "--no-mlflow"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store_path = out / "effective-tiny" / "results.zarr"
    committed = 0
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        try:
            committed = RunStore(store_path, mode="r").attrs("ensemble/under")["committed"]
        except Exception:
            committed = 0
        if committed > 0:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 0 < committed < 100, f"the kill came at {committed} of 100 configurations"
    r = run_job("jobs.collect_ensemble", "--config", TINY, "--out", out, "--quiet", "--no-mlflow", "--actors", 2)
    assert '"resumed_from": ' in r.stdout and '"actors": 2' in r.stdout
    for scenario in ("under", "shallow"):
        a, b = ensemble(reference, scenario), ensemble(out, scenario)
        for n in ARRAYS:
            assert np.array_equal(a[n], b[n]), (scenario, n)
        assert a["attrs"]["tasks_committed"] == b["attrs"]["tasks_committed"]


def test_unreachable_threshold_stops_with_a_message(tmp_path):
    cfg = write_config(tmp_path, **{"scenarios.under.threshold": 0.99, "collect.max_failed_tasks": 2})
    p = run_job("jobs.collect_ensemble", "--config", cfg, "--out", tmp_path, "--local", "--quiet", "--no-mlflow",
                "--scenario", "under", check=False)
    assert p.returncode == 2
    assert "no network reached test accuracy 0.990 in 2 tasks in a row (32 networks" in p.stderr
    assert "lower the scenario's threshold" in p.stderr


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="first width 20 must equal data.components = 6"):
        load_effective_config(write_config(tmp_path, **{"network.widths": [20, 10]}))
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_effective_config(write_config(tmp_path, **{"network.epoch": 3}))
    p = run_job("jobs.collect_ensemble", "--config", TINY, "--out", tmp_path, "--local", "--scenario", "nope",
                check=False)
    assert p.returncode == 2 and "unknown scenario(s) ['nope']" in p.stderr


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_pca_reads_local_idx_files(tmp_path):
    from adaptsym.effective.config import PCADataSpec
    from adaptsym.effective.data import MNIST_FILES, MNISTMissingError

    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (50, 28, 28)), "train_y": rng.integers(0, 10, 50),
              "test_x": rng.integers(0, 256, (20, 28, 28)), "test_y": rng.integers(0, 10, 20)}
    spec = PCADataSpec(name="mnist-pca", root=str(tmp_path), components=5)
    with pytest.raises(MNISTMissingError, match="train-images-idx3-ubyte"):
        load_pca_data(spec, 0)
    for key, stem in MNIST_FILES.items():
        _write_idx(tmp_path / f"{stem}.gz", arrays[key])
    xtr, ytr, xte, yte = load_pca_data(spec, 0)
    assert xtr.shape == (50, 5) and xte.shape == (20, 5)
    assert np.array_equal(ytr, arrays["train_y"]) and np.array_equal(yte, arrays["test_y"])
    assert abs((xtr ** 2).mean() - 1) < 1e-5  # unit mean variance per component on the training split
    # the projection is PCA: the components are uncorrelated on the training split
    cov = np.cov(xtr.T)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-4


def test_parts_and_references():
    p = parts([20, 15, 15, 10])
    assert [len(v) for v in p.values()] == [675, 300, 225, 150] and list(p) == ["full", "LB", "ITR", "RB"]
    assert list(parts([20, 10])) == ["full"] and list(parts([6, 8, 10])) == ["full", "LB", "RB"]
    e = np.arange(100.0)[::-1]  # configuration i has energy 99 - i
    refs = pick_references(e, 3, 0)
    assert all(e[i] < 10 for i in refs["low"]) and all(e[i] >= 90 for i in refs["high"])
    assert all(45 <= e[i] < 55 for i in refs["medium"]) and all(len(v) == 3 for v in refs.values())


# ------------------------------------------------------------------ fit, landscape, report
def test_effective_model_job_end_to_end(reference, tmp_path):
    """Fit + landscape + report from the collected store; Delta per step in MLflow; s <= s_ub."""
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(reference, out)
    r = run_job("jobs.effective_model", "--config", TINY, "--out", out, "--quiet")
    assert '"report"' in r.stdout
    store = RunStore(out / "effective-tiny" / "results.zarr", mode="r")
    for part in ("full", "LB", "ITR", "RB"):
        a = store.attrs(f"effective/under/{part}")
        assert a["entropy_excess_max"] < 1e-3  # s(d) <= s_ub(d)
        d = store.read(f"effective/under/{part}", "d")
        assert d.shape == (3, 2, 9) and np.all((d >= 0) & (d <= 1))
        delta = store.read(f"effective/under/{part}", "delta")
        assert np.all(np.diff(delta) < 0)  # with BP moments every accepted step lowers Delta
        sampled = store.read(f"effective/under/{part}/sampled", "d")
        assert sampled.shape == (3, 9) and np.all((sampled >= 0) & (sampled <= 1))
        assert a["sampled_verdict"] in ("connected", "isolated reference", "gap between states", "x grid too coarse")
    assert store.attrs("effective/shallow/full")["rank_deficient"]  # 48 configurations, 60 weights
    html = (out / "effective-tiny" / "effective_report.html").read_text()
    assert "rank-deficient" in html and "effective_under_fig4" in html and "effective_shallow_fig3c" in html
    assert "effective_under_fig4_sampled" in html and "sampled landscape" in html
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")  # not the global URI: no leak into other tests
    exp = client.get_experiment_by_name("effective-tiny")
    runs = client.search_runs([exp.experiment_id])
    fit_runs = [x for x in runs if x.data.params.get("part") == "full" and x.data.params.get("scenario") == "under"]
    assert fit_runs
    hist = client.get_metric_history(fit_runs[0].info.run_id, "delta")
    assert len(hist) == store.attrs("effective/under/full")["steps"] + 1


def test_shared_unit_pairs_by_hand():
    """Widths 2-3-2: weight 0 = (input 0 -> hidden 0) shares input 0 with weights 1, 2, hidden 0
    with weight 3 and with the outgoing weights 6, 7 of hidden 0; nothing else."""
    from adaptsym.effective.analysis import correlation_diagnostics, shared_unit

    sh = shared_unit([2, 3, 2], np.arange(12))
    assert np.flatnonzero(sh[0]).tolist() == [1, 2, 3, 6, 7]
    assert np.flatnonzero(sh[6]).tolist() == [0, 3, 7, 8, 10]
    assert np.array_equal(sh, sh.T) and not sh.diagonal().any()
    sub = shared_unit([2, 3, 2], np.arange(6, 12))  # a part: the last layer alone
    assert np.array_equal(sub, sh[6:, 6:])
    m = np.zeros(12)
    C = np.eye(12)
    C[0, 1] = C[1, 0] = 0.3
    d = correlation_diagnostics([2, 3, 2], np.arange(12), m, C, np.eye(12))
    n_sh = int(sh.sum() // 2)
    assert d["pairs_shared_unit"] == n_sh and d["pairs_other"] == 66 - n_sh
    assert abs(d["rms_connected_shared_unit"] - 0.3 * np.sqrt(1 / n_sh)) < 1e-12 and d["rms_connected_other"] == 0

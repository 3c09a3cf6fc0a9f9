"""DeepSpeed ZeRO training through Ray Train on CPU (gloo): one epoch, a checkpoint measure reads."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from adaptsym.nets.checkpoint import load_checkpoint
from adaptsym.measure import measure_run

from .test_train_checkpoint import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_deepspeed_one_epoch_on_cpu_writes_a_checkpoint_measure_reads(tmp_path):
    pytest.importorskip("deepspeed")
    cfg = tiny_config(epochs=1, checkpoints=(0, 1), name="ds")
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--deepspeed", "--config", str(path), "--out",
                           str(tmp_path / "runs"), "--workers", "2", "--no-mlflow"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeepSpeed ZeRO-1 on 2 workers: epoch 1" in proc.stdout
    run_dir = tmp_path / "runs" / "ds-mlp"
    ck = load_checkpoint(run_dir / "checkpoints" / "epoch_0001.pt")
    assert ck["trainer"] == {"deepspeed_zero_stage": 1, "workers": 2} and ck["epoch"] == 1
    start = load_checkpoint(run_dir / "checkpoints" / "epoch_0000.pt")
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(ck["weights"], start["weights"]))
    res = measure_run(run_dir, cfg=cfg, epochs=[1], progress=False)
    assert np.isfinite(res.scalars[1]["hessian_entries.marginal.z_fraction"])


@pytest.mark.slow
def test_killed_deepspeed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """ZeRO-1 on 2 gloo ranks: killed after epoch 1, started again, it ends where an uninterrupted run
    ends, bit for bit (same per-epoch data order, optimizer partitions restored from the engine checkpoint)."""
    pytest.importorskip("deepspeed")
    import torch

    cfg = tiny_config(epochs=3, checkpoints=(0, 3), name="dsr")
    path = tmp_path / "dsr.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}

    def run(out, **extra):
        return subprocess.run([sys.executable, "-m", "jobs.train", "--deepspeed", "--config", str(path), "--out",
                               str(out), "--workers", "2", "--no-mlflow"], env={**env, **extra}, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(tmp_path / "resumed", ADAPTSYM_TEST_KILL_AFTER_EPOCH="1")
    assert killed.returncode != 0
    run_dir = tmp_path / "resumed" / "dsr-mlp"
    assert (run_dir / "deepspeed" / "latest").read_text().strip() == "epoch_0001"
    assert not (run_dir / "checkpoints" / "epoch_0003.pt").exists()
    resumed = run(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "whole" / "dsr-mlp" / "checkpoints" / "epoch_0003.pt")
    b = load_checkpoint(run_dir / "checkpoints" / "epoch_0003.pt")
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"]))
    assert a["history"]["train_loss"] == b["history"]["train_loss"] and b["history"]["epoch"] == [0, 1, 2, 3]
    assert sorted(p.name for p in (run_dir / "deepspeed").glob("epoch_*")) == ["epoch_0003"]

"""jobs.gpu_check, at toy size on CPU (--smoke): every step runs, the JSON holds what the GPU
run must report, and the device read back from the actors is checked."""

import json

import pytest

from jobs import gpu_check


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu():
    """In a child process, as `make gpu-check` runs it: its local Ray cluster stays out of pytest."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "jobs.gpu_check", "--smoke"], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert out["ok"] is True and out["cuda"] is False
    bench = out["benchmark_vgg12"]
    for key in ("n_params", "hvp_over_grad", "per_example_entries_over_hvp", "slq_seconds_per_lanczos_step_over_hvp",
                "seconds_per_example_column", "peak_rss_mb"):
        assert bench[key] > 0
    m = out["measurement"]
    assert m["checkpoints"] == [0, 1] and m["actor_tensor_devices"] == ["cpu"]
    assert out["plan"]["predicted_measure_seconds"] > 0 and out["plan"]["measured_measure_seconds"] > 0
    assert "peak_rss_mb.driver" in m["peak_rss_mb"] and "peak_rss_mb.actor0" in m["peak_rss_mb"]


def test_gpu_check_without_cuda_says_so(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cuda"] is False and "no CUDA" in out["skipped"]

"""The README's cluster recipe, from a fresh HOME exactly as written: `make ray-head` (which must
generate the token itself), `adaptsym submit measure --address URL -- --run RUN --ray auto`,
`make ray-stop`. While the head runs, every Ray listener off loopback must be on one of the
pinned ports that docs/distributed.md's firewall rule covers."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from adaptsym.train import train

from .test_train_checkpoint import tiny_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCUMENTED = set(range(6379, 6387)) | set(range(6400, 6500)) | {44217, 44227}
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def ray_listeners() -> list[tuple[str, int, str]]:
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status != psutil.CONN_LISTEN or c.pid is None:
            continue
        try:
            cmd = " ".join(psutil.Process(c.pid).cmdline())
        except psutil.Error:
            continue
        if "ray" in cmd:
            out.append((c.laddr.ip, c.laddr.port, cmd[:80]))
    return out


@pytest.mark.slow
def test_readme_cluster_recipe_from_a_fresh_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    env.update(HOME=str(home), RAY_AUTH_MODE="token")
    make = lambda target: subprocess.run(["make", target, f"BIN={BIN}"], cwd=ROOT, env=env, capture_output=True,
                                         text=True, timeout=300)
    cfg = tiny_config(epochs=1, checkpoints=(1,), name="recipe")
    run = train(cfg, "mlp", tmp_path / "runs", progress=False).run_dir
    started = make("ray-head")
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        token = home / ".ray" / "auth_token"
        assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600
        assert str(token) in started.stdout
        exposed = [(ip, port, cmd) for ip, port, cmd in ray_listeners() if ip not in LOOPBACK]
        assert exposed, "no Ray listener found: the check would be vacuous"
        assert all(port in DOCUMENTED for _, port, _ in exposed), exposed
        assert all(ip in LOOPBACK for ip, port, _ in ray_listeners() if port == 8265)  # the Jobs API
        submitted = subprocess.run([str(BIN / "adaptsym"), "submit", "measure", "--address", "http://127.0.0.1:8265",
                                    "--", "--run", str(run), "--ray", "auto"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=600)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert "measured 1 checkpoint(s)" in submitted.stdout + submitted.stderr
    finally:
        stopped = make("ray-stop")
    assert stopped.returncode == 0
    assert not [p for p in ray_listeners()], "Ray processes survive `make ray-stop`"


@pytest.mark.slow
def test_killed_measure_driver_takes_its_local_cluster_with_it(tmp_path):
    """`adaptsym measure --ray` killed with SIGKILL mid-run: none of the Ray processes it started
    survives (before the reaper, its dashboard and runtime-env agents did, re-parented to init)."""
    import signal
    import time

    from services.reaper import ray_descendants

    run = train(tiny_config(), "mlp", tmp_path / "runs", progress=False).run_dir
    driver = subprocess.Popen([str(BIN / "adaptsym"), "measure", "--run", str(run), "--ray", "--no-mlflow", "--quiet"],
                              cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "token"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the actors run
        started = ray_descendants(driver.pid)
        if any("MeasureActor" in " ".join(p.cmdline()) for p in started if p.is_running()):
            break
        time.sleep(0.2)
    names = {p.name() for p in started if p.is_running()}
    assert any("Agent" in " ".join(p.cmdline()) for p in started), names  # the ones that used to survive
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(p.is_running() for p in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [" ".join(p.cmdline())[:60] for p in started if p.is_running()]
    assert survivors == [], survivors

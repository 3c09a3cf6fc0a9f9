"""Distributed measurement on a real local Ray cluster (2 CPUs, token auth): equal results,
a killed actor, a killed driver, a tile that keeps failing, an address that does not answer."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from adaptsym.errors import TileError
from adaptsym.measure import measure_run
from adaptsym.observables.entry_blocks import HTileTask
from adaptsym.storage.store import RunStore
from adaptsym.train import train
from jobs.cli import main

from .test_train_checkpoint import tiny_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def ray_cluster():
    from services.cluster import connect, shutdown

    resources = connect(None, num_cpus=2, num_gpus=0)
    yield resources
    shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A trained tiny run and its single-process measurement."""
    root = tmp_path_factory.mktemp("dist")
    cfg = tiny_config(name="dist")
    res = train(cfg, "mlp", root / "ref", progress=False)
    measured = measure_run(res.run_dir, cfg=cfg, progress=False)
    return cfg, res.run_dir, measured


def fresh_copy(run_dir: Path, dest: Path) -> Path:
    import shutil

    out = dest / run_dir.name
    shutil.copytree(run_dir / "checkpoints", out / "checkpoints")
    store = RunStore.for_run(out)
    store.set_attrs(RunStore.for_run(run_dir, mode="r").attrs())
    return out


def assert_same(ref_dir, ref_scalars, run_dir, scalars):
    A, B = RunStore.for_run(ref_dir, mode="r"), RunStore.for_run(run_dir, mode="r")
    for epoch, sa in ref_scalars.items():
        g = f"epoch_{epoch:04d}/hessian_entries"
        for name in ("h", "mean", "std", "z", "corr_count", "coskew_count", "cokurt_count", "valid"):
            np.testing.assert_array_equal(A.read(g, name), B.read(g, name), err_msg=f"{g}/{name}")
        sb = scalars[epoch]
        for k, v in sa.items():
            if k == "hessian_entries.tiles_computed" or k.endswith("seconds") or k.startswith("peak_rss_mb."):
                continue  # how long and how much memory: not results
            assert np.isclose(v, sb[k], rtol=1e-9, atol=1e-12, equal_nan=True), (epoch, k, v, sb[k])


@contextlib.contextmanager
def ray_executor(**kwargs):
    from services.executor import RayExecutor

    ex = RayExecutor(threads_per_actor=1, **kwargs)
    try:
        yield ex
    finally:
        ex.close()


def test_distributed_equals_single_process(ray_cluster, reference, tmp_path):
    cfg, ref_dir, ref = reference
    run_dir = fresh_copy(ref_dir, tmp_path)
    with ray_executor() as ex:
        from adaptsym.protocols import Executor

        assert isinstance(ex, Executor)
        info = ex.info()
        assert len(info) == 2 and all(i["device"] == "cpu" and i["threads"] == 1 for i in info)
        res = measure_run(run_dir, cfg=cfg, progress=False, executor=ex)
    assert_same(ref_dir, ref.scalars, run_dir, res.scalars)


def test_sharded_operator_is_a_curvature_operator_equal_to_the_local_one(ray_cluster, reference):
    """The Ray executor's operator satisfies `CurvatureOperator` and multiplies like `PoolHessian`."""
    import torch

    from adaptsym.nets.checkpoint import load_checkpoint, model_from_checkpoint
    from adaptsym.observables.executor import LocalExecutor
    from adaptsym.protocols import CurvatureOperator

    cfg, ref_dir, _ = reference
    ckpt = load_checkpoint(ref_dir / "checkpoints" / "epoch_0000.pt")
    model = model_from_checkpoint(ckpt, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, *ckpt["input_shape"], generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(12, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    v = torch.randn(model.n_params, generator=g, dtype=torch.float64)
    local = LocalExecutor().pool_hessian(model, ckpt, x, y, "float64", 4)
    with ray_executor() as ex:
        op = ex.pool_hessian(model, ckpt, x, y, "float64", 4)
        assert isinstance(op, CurvatureOperator) and op.n_params == local.n_params
        torch.testing.assert_close(op.matvec(v), local.matvec(v), rtol=1e-10, atol=1e-12)


def test_killed_actor_changes_nothing(ray_cluster, reference, tmp_path):
    cfg, ref_dir, ref = reference
    run_dir = fresh_copy(ref_dir, tmp_path)
    killed = []

    def kill_one(kind, done, total):
        if kind is HTileTask and done == 2 and not killed:
            pid = ex.actor_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with ray_executor(on_progress=kill_one) as ex:
        res = measure_run(run_dir, cfg=cfg, progress=False, executor=ex)
        assert killed and killed[0] not in ex.actor_pids()  # the actor was restarted
    assert_same(ref_dir, ref.scalars, run_dir, res.scalars)


def test_killed_driver_then_rerun_computes_only_missing_tiles(ray_cluster, reference, tmp_path):
    cfg, ref_dir, ref = reference
    run_dir = fresh_copy(ref_dir, tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        os.environ["RAY_AUTH_MODE"] = "token"
        from services.cluster import connect
        from services.executor import RayExecutor
        from adaptsym.measure import measure_run
        from adaptsym.observables.entry_blocks import HTileTask
        from tests.test_train_checkpoint import tiny_config

        def die(kind, done, total):
            if kind is HTileTask and done == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # the driver dies mid-run

        connect(None, num_cpus=2, num_gpus=0)
        measure_run({str(run_dir)!r}, cfg=tiny_config(name="dist"), epochs=[3], progress=False,
                    executor=RayExecutor(on_progress=die))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, cwd=ROOT, capture_output=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    store = RunStore.for_run(run_dir, mode="r")
    assert not store.is_complete("epoch_0003")
    done = np.asarray(store.root["epoch_0003/hessian_entries/tile_done"][...])
    assert done.sum() == 3 and done.size > 3
    # the same command again, through the CLI, on the Ray cluster
    assert main(["measure", "--run", str(run_dir), "--epochs", "3", "--ray", "--no-mlflow", "--quiet"]) == 0
    store = RunStore.for_run(run_dir, mode="r")
    sc = store.attrs("epoch_0003")["scalars"]
    assert sc["hessian_entries.tiles_computed"] == done.size - 3
    assert_same(ref_dir, {3: ref.scalars[3]}, run_dir, {3: sc})


def test_corrupt_tile_is_recomputed_and_a_failing_tile_stops_with_its_name(ray_cluster, reference, tmp_path):
    cfg, ref_dir, ref = reference
    run_dir = fresh_copy(ref_dir, tmp_path)
    with ray_executor(max_tile_retries=2) as ex:
        measure_run(run_dir, cfg=cfg, epochs=[1], progress=False, executor=ex)
        store = RunStore.for_run(run_dir)
        chunk = run_dir / "results.zarr" / "epoch_0001" / "hessian_entries" / "h" / "c" / "0" / "1"
        assert chunk.is_file()
        # a finished tile whose chunk got corrupted (the run was interrupted before completion)
        store.mark_complete("epoch_0001", False)
        chunk.write_bytes(b"\x00garbage, not a zarr chunk")
        res = measure_run(run_dir, cfg=cfg, epochs=[1], progress=False, executor=ex)
        assert res.scalars[1]["hessian_entries.tiles_computed"] == 1  # detected and recomputed, nothing else
        assert_same(ref_dir, {1: ref.scalars[1]}, run_dir, res.scalars)
        # a tile that fails every time (its chunk path is blocked) stops with its name, keeping the rest
        store.mark_complete("epoch_0001", False)
        chunk.unlink()
        chunk.mkdir()
        with pytest.raises(TileError, match=r"HTileTask\(0, 1\).*failed 3 times") as err:
            measure_run(run_dir, cfg=cfg, epochs=[1], progress=False, executor=ex)
        assert "rerun the same command" in str(err.value)
        done = np.asarray(store.root["epoch_0001/hessian_entries/tile_done"][...])
        assert done.sum() == done.size - 1 and done[0, 1] == 0  # everything finished so far is kept
        chunk.rmdir()  # repair: unblock it and rerun
        res = measure_run(run_dir, cfg=cfg, epochs=[1], progress=False, executor=ex)
    assert res.scalars[1]["hessian_entries.tiles_computed"] == 1
    assert_same(ref_dir, {1: ref.scalars[1]}, run_dir, res.scalars)


def test_unreachable_address_fails_fast(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "measure", "--run", str(tmp_path), "--ray",
                           "127.0.0.1:9"], env=ENV, cwd=ROOT, capture_output=True, timeout=60)
    assert time.monotonic() - t0 < 30
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "127.0.0.1:9" in err and "make ray-head" in err
    # submit names the Jobs API and its own option, not measure's --ray
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", "--address", "http://127.0.0.1:9", "measure",
                           "--", "--run", str(tmp_path)], env=ENV, cwd=ROOT, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "127.0.0.1:9" in err and "--address" in err and "--ray" not in err, err


def test_science_package_never_imports_ray():
    """Every module of adaptsym, imported in a fresh interpreter, leaves Ray and services unimported."""
    code = ("import importlib, pkgutil, sys, warnings, adaptsym; warnings.simplefilter('ignore'); "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(adaptsym.__path__, 'adaptsym.')]; "
            "assert 'ray' not in sys.modules and 'services' not in sys.modules, 'ray or services imported'")
    subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, check=True, timeout=120)

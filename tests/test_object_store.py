"""Result stores on object storage (issue 25): a run whose config sets `results_url` keeps its zarr
store in an S3 bucket (a local moto server here). Training and measuring there give the arrays of a
run on disk, bitwise; checksums, `verify` and the repair of a damaged chunk work on objects; the
run lock is a lease on a conditionally written object (`object_lock`), which refuses a second
writer, survives its holder's renewals, is taken over once its holder died, and stops a holder
that lost it. MLflow's artifacts go to the bucket with `ADAPTSYM_MLFLOW_ARTIFACTS`."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

from adaptsym.config import ConfigError, parse_config
from adaptsym.measure import measure_run
from adaptsym.storage.runlock import RunLockedError, object_lock
from adaptsym.storage.store import RunStore, URL_POINTER
from adaptsym.storage.verify import verify_run
from adaptsym.train import train

from .test_distributed import ROOT, assert_same
from .test_train_checkpoint import tiny_config


def prefix() -> str:
    return f"s3://adaptsym-test/{uuid.uuid4().hex[:10]}"


def s3_config(name: str, url: str | None):
    cfg = tiny_config(epochs=1, checkpoints=(1,), name=name).model_dump(mode="json")
    cfg["measure"]["observables"] = ["weights", "hessian_entries"]
    if url:
        cfg["results_url"] = url
    return parse_config(cfg)


def lock_object(url: str) -> str:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url + ".lock")
    return fs.cat_file(path).decode() if fs.exists(path) else ""


# ---------------------------------------------------------------------------- the lease lock


def test_a_second_writer_is_refused_naming_the_first_and_the_lock_goes_with_it(s3):
    url = prefix() + "/results.zarr"
    with object_lock(url, "writer one", lease_s=60):
        assert "writer one" in lock_object(url)
        with pytest.raises(RunLockedError) as err:
            with object_lock(url, "writer two", lease_s=60):
                pass
        msg = str(err.value)
        assert "writer one" in msg and f"pid {os.getpid()}" in msg and url + ".lock" in msg
    assert lock_object(url) == ""  # released
    with object_lock(url, "writer two", lease_s=60):
        assert "writer two" in lock_object(url)


def test_the_holder_renews_its_lease_and_a_dead_holder_lapses(s3):
    """A live holder past several leases still holds the lock; a SIGKILLed one is refused at once
    (its lease is fresh), then taken over after the lease lapses, by the server's clock."""
    url = prefix() + "/results.zarr"
    with object_lock(url, "alive", lease_s=1.5):
        time.sleep(4.0)  # more than two leases: only the renewals keep it
        with pytest.raises(RunLockedError, match="alive"):
            with object_lock(url, "intruder", lease_s=1.5):
                pass
    script = textwrap.dedent(f"""
        import os, signal, sys
        from adaptsym.storage.runlock import object_lock
        with object_lock({url!r}, "doomed", lease_s=3):
            print("held", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and b"held" in proc.stdout, proc.stderr.decode()[-1500:]
    assert "doomed" in lock_object(url)  # nothing released it
    with pytest.raises(RunLockedError, match="doomed"):
        with object_lock(url, "next", lease_s=3):
            pass
    time.sleep(3 + 2.5)  # the lease, and the 1-s resolution of HTTP dates on both ends
    with object_lock(url, "next", lease_s=3):
        assert "next" in lock_object(url)


def test_a_holder_that_loses_its_lock_stops(s3):
    import fsspec

    url = prefix() + "/results.zarr"
    fs, path = fsspec.core.url_to_fs(url + ".lock")
    with pytest.raises(RunLockedError, match="taken over or removed"):
        with object_lock(url, "victim", lease_s=1.2):
            fs.pipe_file(path, b'{"what": "someone else"}')  # another writer's lock, not ours
            time.sleep(5)  # the next renewal sees it and interrupts this thread
            pytest.fail("the holder kept running after losing its lock")
    assert "someone else" in lock_object(url)  # not deleted: it is not ours


def test_urls_without_a_safe_lock_are_refused():
    with pytest.raises(RunLockedError, match="s3://"):
        with object_lock("memory://bucket/run/results.zarr", "x"):
            pass
    with pytest.raises(ConfigError, match="results_url"):
        s3_config("bad", "gs://bucket/runs")


def test_writers_racing_for_a_free_lock_never_hold_it_together(s3):
    url = prefix() + "/results.zarr"
    inside, most, won, go = [0], [0], [], threading.Barrier(4)
    guard = threading.Lock()

    def contend(i):
        go.wait()
        try:
            with object_lock(url, f"racer {i}", lease_s=30):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                won.append(i)
                time.sleep(1.0)
                with guard:
                    inside[0] -= 1
        except RunLockedError:
            pass

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert won and most[0] == 1


# ---------------------------------------------------------------------------- runs on S3


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    cfg = s3_config("objs", None)
    res = train(cfg, "mlp", tmp_path_factory.mktemp("local"), progress=False)
    return cfg, res.run_dir, measure_run(res.run_dir, cfg=cfg, progress=False)


def test_train_and_measure_into_a_bucket_give_the_local_arrays_and_repair_works(s3, local_run, tmp_path):
    import fsspec

    _, ref_dir, ref = local_run
    url = prefix()
    cfg = s3_config("objs", url)
    res = train(cfg, "mlp", tmp_path, progress=False)
    store_url = f"{url}/objs-mlp/results.zarr"
    assert (res.run_dir / URL_POINTER).read_text().strip() == store_url
    assert not (res.run_dir / "results.zarr").exists()  # nothing local but the checkpoints
    fs, root = fsspec.core.url_to_fs(store_url)
    assert fs.exists(f"{root}/zarr.json") and fs.exists(f"{root}/training/train_loss/zarr.json")
    A, B = RunStore.for_run(ref_dir, mode="r"), RunStore.for_run(res.run_dir, mode="r")
    assert B.url == store_url and B.remote
    np.testing.assert_array_equal(A.read("training", "train_loss"), B.read("training", "train_loss"))

    m = measure_run(res.run_dir, cfg=cfg, progress=False)
    assert str(m.store_path) == store_url
    assert_same(ref_dir, ref.scalars, res.run_dir, m.scalars)
    assert verify_run(res.run_dir) == ([], verify_run(ref_dir)[1])  # the same number of things checked
    assert lock_object(store_url) == ""  # measure released its lease

    # a garbled h chunk in the bucket: verify names the object, measure recomputes that checkpoint
    chunk = f"{root}/epoch_0001/hessian_entries/h/c/0/0"
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    problems, _ = verify_run(res.run_dir)
    assert len(problems) == 1 and "checksum mismatch" in problems[0] and "s3://" in problems[0], problems
    lines = []
    m2 = measure_run(res.run_dir, cfg=cfg, progress=False, log=lines.append)
    assert any("damaged" in ln for ln in lines)
    assert_same(ref_dir, ref.scalars, res.run_dir, m2.scalars)
    assert verify_run(res.run_dir)[0] == []

    # a deleted chunk is a fault too, never plausible fill values
    gone = sorted(fs.find(f"{root}/epoch_0001/hessian_entries/z/c"))[0]
    fs.rm_file(gone)
    problems = verify_run(res.run_dir)[0]
    assert len(problems) == 1 and "is missing" in problems[0] and gone.split("/z/")[1] in problems[0], problems

    # another writer's lease on the store refuses measure, naming it
    with object_lock(store_url, "a colleague's measure", lease_s=60):
        with pytest.raises(RunLockedError, match="a colleague's measure"):
            measure_run(res.run_dir, cfg=cfg, progress=False)


def test_a_run_keeps_the_store_it_was_trained_with(s3, tmp_path):
    cfg_local = s3_config("moved", None)
    train(cfg_local, "mlp", tmp_path, progress=False)
    with pytest.raises(ConfigError, match="already keeps its results"):
        train(s3_config("moved", prefix()), "mlp", tmp_path, progress=False)


def test_mlflow_artifacts_go_to_the_bucket(s3, tmp_path, monkeypatch):
    import fsspec

    from adaptsym.storage.tracking import Tracker

    url = prefix() + "/mlartifacts"
    monkeypatch.setenv("ADAPTSYM_MLFLOW_ARTIFACTS", url)
    tracker = Tracker(tmp_path, "s3-artifacts")
    note = tmp_path / "note.txt"
    note.write_text("results in the bucket\n")
    with tracker.run("with-artifact") as run:
        tracker.mlflow.log_artifact(str(note))
    fs, root = fsspec.core.url_to_fs(url)
    found = [p for p in fs.find(root) if p.endswith("note.txt")]
    assert len(found) == 1 and run.info.run_id in found[0]
    assert fs.cat_file(found[0]) == b"results in the bucket\n"
    assert tracker.mlflow.get_run(run.info.run_id).info.artifact_uri.startswith(url)

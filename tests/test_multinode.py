"""Several Ray nodes for real (issue 25): a head and worker nodes on this machine, each its own
raylet (`services/local_cluster.py`). One actor per (fake) GPU lands on each worker node; a measurement
spread over the nodes writes zarr arrays bitwise equal to a single-process run; a worker node
killed mid-measurement costs nothing (its tiles go to the node left); a node that does not share
the store's path is refused before any tile, naming the node and the path."""

import os
import time

import numpy as np
import pytest

from adaptsym.config import parse_config
from adaptsym.measure import measure_run
from adaptsym.observables.entry_blocks import HTileTask
from adaptsym.storage.store import RunStore
from adaptsym.storage.verify import verify_run
from adaptsym.train import train

from services.local_cluster import can_unshare, start_cluster
from .test_distributed import assert_same, fresh_copy
from .test_train_checkpoint import tiny_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    from services.cluster import connect

    os.environ["RAY_AUTH_MODE"] = "token"
    c = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        connect(c.address)
        c.add_worker("node_a")
        c.add_worker("node_b")
        yield c
    finally:
        ray.shutdown()
        c.stop()


def entries_only(name):
    cfg = tiny_config(name=name).model_dump(mode="json")
    cfg["measure"]["observables"] = ["weights", "hessian_entries"]
    return parse_config(cfg)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Trained tiny runs and their single-process measurements: every observable, and entries only."""
    root = tmp_path_factory.mktemp("mn")
    out = {}
    for key, cfg in (("all", tiny_config(name="mn")), ("entries", entries_only("mne"))):
        res = train(cfg, "mlp", root / key, progress=False)
        out[key] = (cfg, res.run_dir, measure_run(res.run_dir, cfg=cfg, progress=False))
    return out


def test_one_actor_per_gpu_across_nodes_gives_the_single_process_arrays(cluster, reference, tmp_path):
    from services.executor import RayExecutor

    cfg, ref_dir, ref = reference["all"]
    run_dir = fresh_copy(ref_dir, tmp_path)
    ex = RayExecutor(threads_per_actor=1)
    try:
        info = ex.info()
        assert ex.use_gpu and len(info) == 2  # one actor per GPU the cluster has
        assert sorted(i["node_id"] for i in info) == sorted(n.node_id for n in cluster.nodes.values())
        assert all(i["cuda_visible_devices"] == "0" for i in info)  # Ray's GPU assignment on each node
        res = measure_run(run_dir, cfg=cfg, progress=False, executor=ex)
        info = ex.info()
        assert all(i["device"] == "cpu" and i["tensor_devices"] == ["cpu"] for i in info)  # no CUDA here
    finally:
        ex.close()
    assert_same(ref_dir, ref.scalars, run_dir, res.scalars)
    assert verify_run(run_dir)[0] == []


def test_a_worker_node_killed_mid_measurement_costs_nothing(cluster, reference, tmp_path):
    """node_b is SIGKILLed (raylet and workers) after 2 h tiles; the executor sees the node dead,
    drops its actor and gives its tiles to node_a: the measurement finishes, bitwise as in process."""
    from services.executor import RayExecutor

    cfg, ref_dir, ref = reference["entries"]
    run_dir = fresh_copy(ref_dir, tmp_path)
    killed = []

    def kill_b(kind, done, total):
        if kind is HTileTask and done == 2 and not killed:
            killed.append(cluster.nodes["node_b"].node_id)
            cluster.kill("node_b")

    ex = RayExecutor(threads_per_actor=1, on_progress=kill_b, poll_s=1.0)
    try:
        t0 = time.monotonic()
        res = measure_run(run_dir, cfg=cfg, epochs=[3], progress=False, executor=ex)
        assert time.monotonic() - t0 < 240
        assert killed and [d["node_id"] for d in ex.dropped] == killed and len(ex.actors) == 1
    finally:
        ex.close()
    assert_same(ref_dir, {3: ref.scalars[3]}, run_dir, res.scalars)
    cluster.add_worker("node_c")  # back to two worker nodes


@pytest.mark.skipif(not can_unshare(), reason="needs root and `unshare --mount` (a private mount namespace)")
def test_a_node_without_the_store_is_refused_before_any_tile(cluster, reference, tmp_path):
    """A worker node in its own mount namespace, with a private tmpfs over the folder of the runs:
    the preflight fails naming that node and the path; nothing is computed."""
    from services.executor import RayExecutor
    from services.preflight import StoreNotSharedError

    cfg, ref_dir, _ = reference["entries"]
    runs = tmp_path / "runs"
    runs.mkdir()
    run_dir = fresh_copy(ref_dir, runs)
    odd = cluster.add_worker("node_unshared", private_dir=runs)
    try:
        ex = RayExecutor(threads_per_actor=1)  # one actor per GPU: three nodes
        try:
            assert odd.node_id in {i["node_id"] for i in ex.info()}
            with pytest.raises(StoreNotSharedError) as err:
                measure_run(run_dir, cfg=cfg, epochs=[3], progress=False, executor=ex)
        finally:
            ex.close()
        msg = str(err.value)
        assert odd.node_id[:12] in msg and str(run_dir.resolve() / "results.zarr") in msg
        assert "cannot read" in msg and len(msg.splitlines()) == 1
        others = [n.node_id[:12] for k, n in cluster.nodes.items() if k != "node_unshared"]
        assert not any(o in msg for o in others)  # only the node that lacks the path is named
        store = RunStore.for_run(run_dir, mode="r")
        assert not store.has_group("epoch_0003") and not (run_dir / "results.zarr" / ".preflight").exists()
    finally:
        cluster.kill("node_unshared")
    np.testing.assert_equal(verify_run(run_dir)[0], [])


def dying_driver(address: str, run_dir, actor_resources: dict | None = None) -> str:
    """A driver script: measure epoch 3 of `run_dir` on the cluster, SIGKILL itself after 3 h tiles."""
    import textwrap

    return textwrap.dedent(f"""
        import os, signal
        from services.cluster import connect
        from services.executor import RayExecutor
        from adaptsym.measure import measure_run
        from adaptsym.observables.entry_blocks import HTileTask
        from tests.test_multinode import entries_only

        def die(kind, done, total):
            if kind is HTileTask and done == 3:
                os.kill(os.getpid(), signal.SIGKILL)

        connect({address!r})
        measure_run({str(run_dir)!r}, cfg=entries_only("mne"), epochs=[3], progress=False,
                    executor=RayExecutor(threads_per_actor=1, on_progress=die, actor_resources={actor_resources!r}))
    """)


def test_killed_driver_then_rerun_resumes_on_the_nodes(cluster, reference, tmp_path):
    """The driver, connected to the multi-node cluster, is SIGKILLed after 3 h tiles; the same
    command again (`adaptsym measure --ray HOST:PORT`) computes only the missing tiles, and the
    arrays are bitwise the single-process ones."""
    import signal
    import subprocess
    import sys

    from jobs.cli import main

    from .test_distributed import ENV, ROOT

    cfg, ref_dir, ref = reference["entries"]
    run_dir = fresh_copy(ref_dir, tmp_path)
    script = dying_driver(cluster.address, run_dir)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    store = RunStore.for_run(run_dir, mode="r")
    done = np.asarray(store.root["epoch_0003/hessian_entries/tile_done"][...])
    assert done.sum() == 3 and done.size > 3
    assert main(["measure", "--run", str(run_dir), "--epochs", "3", "--ray", cluster.address, "--no-mlflow",
                 "--quiet"]) == 0
    sc = RunStore.for_run(run_dir, mode="r").attrs("epoch_0003")["scalars"]
    assert sc["hessian_entries.tiles_computed"] == done.size - 3
    assert_same(ref_dir, {3: ref.scalars[3]}, run_dir, {3: sc})


def test_ray_job_stop_stops_a_measure_cleanly_and_the_rerun_resumes(cluster, tmp_path):
    """`ray job stop` on a submitted measure job: SIGTERM reaches `adaptsym measure`, which says so;
    the tiles marked done are exactly those written; the same job again finishes and `verify` is clean."""
    import io

    from ray.job_submission import JobStatus, JobSubmissionClient

    from jobs.submit import submit

    from .test_distributed import ROOT

    cfg = tiny_config(epochs=1, checkpoints=(1,), name="stopme").model_dump(mode="json")
    cfg["measure"].update(observables=["hessian_entries"], pool_size=192, example_chunk=8)
    cfg["measure"]["hessian_entries"].update(design={"kind": "block", "rows": 24, "cols": 12}, column_chunk=1)
    cfg = parse_config(cfg)
    run_dir = train(cfg, "mlp", tmp_path, progress=False).run_dir
    args = ["--run", str(run_dir), "--ray", "auto", "--no-mlflow"]
    out = io.StringIO()
    assert submit("measure", args, cluster.jobs_api, working_dir=str(ROOT), wait=False, out=out) == 0
    job_id = out.getvalue().split("submitted Ray job ")[1].split()[0]
    client = JobSubmissionClient(cluster.jobs_api)
    tiles = run_dir / "results.zarr" / "epoch_0001" / "hessian_entries" / "h" / "c"
    t0 = time.monotonic()
    while sum(1 for p in tiles.rglob("*") if p.is_file()) < 4:
        assert client.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING), \
            client.get_job_logs(job_id)[-3000:]
        assert time.monotonic() - t0 < 240
        time.sleep(0.2)
    assert client.stop_job(job_id)  # what `ray job stop` calls (without its CLI's start-up time)
    while client.get_job_status(job_id) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    logs = client.get_job_logs(job_id)
    (tmp_path / "job.log").write_text(logs)
    assert "adaptsym: stopped by SIGTERM; finished work is kept" in logs, logs[-3000:]
    store = RunStore.for_run(run_dir, mode="r")
    assert not store.is_complete("epoch_0001")
    done = np.asarray(store.root["epoch_0001/hessian_entries/tile_done"][...])
    h = store.root["epoch_0001/hessian_entries/h"]
    written = {tuple(int(c) for c in p.relative_to(tiles).parts) for p in tiles.rglob("*") if p.is_file()}
    assert 0 < done.sum() <= done.size  # the stop may land after the last tile, in the statistics
    assert {tuple(int(v) for v in ij) for ij in np.argwhere(done)} <= written  # every tile marked done is on disk
    assert h.shape[0] > 0
    out = io.StringIO()
    assert submit("measure", args, cluster.jobs_api, working_dir=str(ROOT), timeout=600, out=out) == 0, \
        out.getvalue()[-3000:]
    assert RunStore.for_run(run_dir, mode="r").is_complete("epoch_0001") and verify_run(run_dir)[0] == []


def test_a_bucket_store_across_nodes_a_killed_driver_leaves_a_lease_then_the_rerun_resumes(cluster, reference, s3,
                                                                                             tmp_path):
    """The S3 round trip: a run whose store is in a bucket (a local moto server), measured by actors
    on two worker nodes that have the bucket's credentials. The driver is SIGKILLed after 3 h tiles:
    its lease on the store is still fresh, so a rerun at once is refused naming the dead driver; once
    the lease lapses, the rerun computes only the missing tiles, bitwise the single-process arrays."""
    import signal
    import subprocess
    import sys
    import uuid

    from adaptsym.storage.runlock import RunLockedError
    from adaptsym.storage.store import URL_POINTER
    from services.executor import RayExecutor

    from .test_distributed import ENV, ROOT

    cfg, ref_dir, ref = reference["entries"]
    for name in ("s3_a", "s3_b"):
        if name not in cluster.nodes:
            cluster.add_worker(name, env=s3.env, resources={"bucket": 1})
    url = f"s3://adaptsym-test/{uuid.uuid4().hex[:10]}/mne-mlp/results.zarr"
    run_dir = tmp_path / "mne-mlp"
    (run_dir / "checkpoints").mkdir(parents=True)
    for f in (ref_dir / "checkpoints").glob("*.pt"):
        (run_dir / "checkpoints" / f.name).write_bytes(f.read_bytes())
    (run_dir / URL_POINTER).write_text(url)
    RunStore.for_run(run_dir).set_attrs(RunStore.for_run(ref_dir, mode="r").attrs())
    lease = 6
    script = dying_driver(cluster.address, run_dir, actor_resources={"bucket": 1})
    env = {**ENV, **s3.env, "ADAPTSYM_LOCK_LEASE_S": str(lease)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = time.monotonic()
    store = RunStore.for_run(run_dir, mode="r")
    done = np.asarray(store.root["epoch_0003/hessian_entries/tile_done"][...])
    assert done.sum() == 3 and done.size > 3
    with pytest.raises(RunLockedError, match=f"adaptsym measure mne-mlp` \\(pid {proc.pid} "):
        measure_run(run_dir, cfg=cfg, epochs=[3], progress=False)
    time.sleep(max(0.0, lease + 2.5 - (time.monotonic() - killed_at)))  # HTTP dates have 1-s resolution
    ex = RayExecutor(threads_per_actor=1, actor_resources={"bucket": 1})
    try:
        nodes = {i["node_id"] for i in ex.info()}
        assert nodes == {cluster.nodes["s3_a"].node_id, cluster.nodes["s3_b"].node_id}
        res = measure_run(run_dir, cfg=cfg, epochs=[3], progress=False, executor=ex)
    finally:
        ex.close()
    assert res.scalars[3]["hessian_entries.tiles_computed"] == done.size - 3
    assert_same(ref_dir, {3: ref.scalars[3]}, run_dir, res.scalars)
    assert verify_run(run_dir)[0] == []
    for name in ("s3_a", "s3_b"):
        cluster.kill(name)

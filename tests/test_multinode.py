"""Several Ray nodes for real (issue 25): a head and worker nodes on this machine, each its own
raylet (`tests/multinode.py`). One actor per (fake) GPU lands on each worker node; a measurement
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

from .multinode import can_unshare, start_cluster
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

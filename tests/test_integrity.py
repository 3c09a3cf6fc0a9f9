"""Corruption is detected and never read silently; finished work is never deleted silently (issue 14).

Each test injects one fault into a copy of a real measured run and asserts the exact outcome: the
error text, the exit code, and that nothing finished was deleted (surviving arrays byte-compared).
"""

import os
import shutil

import numpy as np
import pytest
import torch

from adaptsym.nets.checkpoint import CheckpointError, content_digest, load_checkpoint
from adaptsym.measure import MeasureConflictError, measure_run
from adaptsym.report.render import render_report
from adaptsym.storage.runlock import RunLockedError, run_lock
from adaptsym.storage.store import CorruptDataError, RunStore
from adaptsym.train import train
from adaptsym.storage.verify import verify_run
from jobs.cli import main

from .test_train_checkpoint import tiny_config


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    cfg = tiny_config()
    res = train(cfg, "mlp", root, progress=False)
    measure_run(res.run_dir, cfg=cfg, progress=False)
    return cfg, res.run_dir


@pytest.fixture
def run(measured, tmp_path):
    cfg, run_dir = measured
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return cfg, copy


def chunk(run_dir, *parts):
    return run_dir.joinpath("results.zarr", *parts)


def snapshot(run_dir):
    """Every chunk file of the store, as bytes (to prove nothing was deleted or rewritten)."""
    base = run_dir / "results.zarr"
    return {p.relative_to(base): p.read_bytes() for p in base.rglob("c/*") if p.is_file()} | \
           {p.relative_to(base): p.read_bytes() for p in base.rglob("c/*/*") if p.is_file()}


def test_intact_run_verifies(run, capsys):
    _, run_dir = run
    problems, checked = verify_run(run_dir)
    assert problems == [] and checked > 50
    assert main(["verify", str(run_dir)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_garbled_chunk_is_named_by_report_verify_and_reads(run, capsys):
    _, run_dir = run
    f = chunk(run_dir, "epoch_0003", "hessian_entries", "corr_submatrix", "c", "0", "0")
    data = bytearray(f.read_bytes())
    data[20:52] = bytes(b ^ 0xFF for b in data[20:52])  # 32 flipped bytes, as in the issue
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=r"epoch_0003/hessian_entries/corr_submatrix: chunk \(0, 0\) is corrupt.*"
                                               r"checksum mismatch"):
        render_report(run_dir, log=lambda *_: None)
    assert main(["report", str(run_dir), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corr_submatrix: chunk (0, 0) is corrupt" in err[0]  # one line, no traceback
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: epoch_0003/hessian_entries/corr_submatrix: chunk (0, 0) is corrupt" in out


def test_deleted_chunk_is_missing_not_zeros(run, capsys):
    _, run_dir = run
    f = chunk(run_dir, "epoch_0001", "hessian_entries", "z", "c", "0")
    f.unlink()
    store = RunStore.for_run(run_dir, mode="r")
    with pytest.raises(CorruptDataError, match=r"epoch_0001/hessian_entries/z: chunk \(0,\) is missing"):
        store.read("epoch_0001/hessian_entries", "z")
    assert main(["verify", str(run_dir)]) == 1
    assert "epoch_0001/hessian_entries/z: chunk (0,) is missing" in capsys.readouterr().out
    # the fill value of a float array is NaN: a reader that bypasses the check still cannot see plausible zeros
    arr = store.root["epoch_0001/hessian_entries/z"]
    raw = np.asarray(arr[...])
    lost = raw[: arr.chunks[0]]
    assert np.isnan(lost).all() and not np.isnan(raw[arr.chunks[0]:]).any()


def test_truncated_chunk_is_a_one_line_error(run, capsys):
    _, run_dir = run
    f = chunk(run_dir, "epoch_0000", "hessian_entries", "replicates", "c", "0", "0")
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    assert main(["report", str(run_dir), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adaptsym: error:")
    assert "epoch_0000/hessian_entries/replicates: chunk (0, 0) is corrupt" in err[0]


def test_garbled_checkpoint_of_the_same_size_is_refused_and_nothing_is_deleted(run, capsys):
    cfg, run_dir = run
    before = snapshot(run_dir)
    f = run_dir / "checkpoints" / "epoch_0003.pt"
    data = bytearray(f.read_bytes())
    size = len(data)
    # flip bytes inside the weight storage (the zip entries are stored uncompressed)
    w = load_checkpoint(f)["weights"][0].numpy().tobytes()
    at = bytes(data).find(w[:64])
    assert at > 0
    data[at + 8 : at + 16] = bytes(b ^ 0xFF for b in data[at + 8 : at + 16])
    f.write_bytes(bytes(data))
    assert f.stat().st_size == size
    with pytest.raises(CheckpointError, match="does not match the checksum written when it was saved"):
        load_checkpoint(f)
    assert main(["measure", "--run", str(run_dir), "--no-mlflow", "--quiet", "--overwrite"]) == 2
    assert "epoch_0003.pt does not match the checksum" in capsys.readouterr().err
    assert snapshot(run_dir) == before  # the finished measurement of that checkpoint is untouched
    assert main(["verify", str(run_dir)]) == 1


def test_changed_measure_config_is_refused_naming_the_fields(run):
    cfg, run_dir = run
    before = snapshot(run_dir)
    changed = cfg.model_copy(deep=True)
    b = cfg.measure.hessian_entries.replicates
    changed.measure.hessian_entries.replicates = b - 50
    with pytest.raises(MeasureConflictError,
                       match=rf"(?s)epoch_0000: hessian_entries.replicates: {b} -> {b - 50}.*--overwrite"):
        measure_run(run_dir, cfg=changed, progress=False)
    assert snapshot(run_dir) == before
    res = measure_run(run_dir, cfg=changed, epochs=[0], progress=False, overwrite=True)
    assert RunStore.for_run(run_dir, mode="r").attrs("epoch_0000")["measure_config"]["hessian_entries"]["replicates"] \
        == b - 50 and res.epochs == [0]


def test_missing_checkpoint_is_named_and_training_recreates_it_bit_for_bit(run):
    cfg, run_dir = run
    f = run_dir / "checkpoints" / "epoch_0001.pt"
    original = load_checkpoint(f)
    f.unlink()
    said = []
    measure_run(run_dir, cfg=cfg, progress=False, log=said.append)
    assert any("scheduled checkpoints [1]" in s for s in said)
    assert verify_run(run_dir)[0] == ["scheduled checkpoints [1] are missing; `adaptsym train` with the run's config "
                                      "recreates them"]
    train(cfg, "mlp", run_dir.parent, progress=False)
    again = load_checkpoint(f)
    assert all(torch.equal(a, b) for a, b in zip(original["weights"], again["weights"]))
    assert again["sha256"] == original["sha256"] == content_digest(original)
    assert verify_run(run_dir)[0] == []


def test_second_writer_fails_fast_naming_the_holder(run):
    cfg, run_dir = run
    with run_lock(run_dir, "adaptsym measure (the first)"):
        with pytest.raises(RunLockedError, match=rf"in use by `adaptsym measure \(the first\)` \(pid {os.getpid()} on"):
            measure_run(run_dir, cfg=cfg, progress=False)
        with pytest.raises(RunLockedError):
            train(cfg, "mlp", run_dir.parent, progress=False)
    measure_run(run_dir, cfg=cfg, progress=False)  # released


@pytest.mark.parametrize("flag", ["--actors=-1", "--threads-per-actor=0"])
def test_bad_actor_counts_are_clear_errors(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["measure", "--run", "x", "--ray", flag])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_concurrent_trainings_share_a_fresh_mlflow_store(tmp_path):
    """Two `adaptsym train` processes of different models into one fresh --out: both succeed
    (they used to race on the sqlite schema), and each run is locked separately."""
    import subprocess
    import sys

    import yaml

    from .test_train_checkpoint import tiny_config

    cfg = tiny_config(epochs=1, checkpoints=(1,), name="pair").model_dump(mode="json")
    cfg["models"]["mlp2"] = dict(cfg["models"]["mlp"])
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(cfg))
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.cli", "train", "--config", str(path), "--out",
                               str(tmp_path / "runs"), "--model", m, "--quiet"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in ("mlp", "mlp2")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


def test_a_chunk_equal_to_the_fill_value_is_written_by_a_reopened_array(tmp_path):
    """H = 0 at a checkpoint makes every entry invalid: the workers, which reopen the store, write an
    all-False `valid` chunk. It must be a file, or the intact run would read as missing data."""
    import zarr

    store = RunStore(tmp_path / "results.zarr")
    store.create("epoch_0001/hessian_entries", "valid", (8,), ["entry"], chunks=(4,), dtype="bool", fill_value=False)
    store.mark_complete("epoch_0001")
    again = zarr.open_group(str(tmp_path / "results.zarr"), mode="a", zarr_format=3)
    again["epoch_0001/hessian_entries/valid"][0:4] = np.zeros(4, dtype=bool)
    again["epoch_0001/hessian_entries/valid"][4:8] = np.zeros(4, dtype=bool)
    assert store.problems() == []
    assert not store.read("epoch_0001/hessian_entries", "valid").any()


def _damage(f, how: str) -> None:
    if how == "delete":
        f.unlink()
    else:
        data = bytearray(f.read_bytes())
        data[len(data) // 2:] = bytes(b ^ 0xFF for b in data[len(data) // 2:])
        f.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def measured_every_observable(tmp_path_factory):
    """A run measured with every registered observable, the opt-in ones too."""
    from adaptsym.registry import observables

    root = tmp_path_factory.mktemp("repair")
    cfg = tiny_config(epochs=1, checkpoints=(0, 1)).model_dump(mode="json")
    cfg["measure"]["observables"] = list(observables())
    cfg["measure"]["block_spectra"] = {"steps": 4, "samples": 2}
    from adaptsym.config import parse_config

    cfg = parse_config(cfg)
    res = train(cfg, "mlp", root, progress=False)
    measure_run(res.run_dir, cfg=cfg, progress=False)
    return cfg, res.run_dir


@pytest.mark.parametrize("observable", ["weights", "gradients", "hessian_entries", "spectrum", "circuits",
                                        "block_spectra"])
def test_measure_repairs_what_verify_finds(measured_every_observable, observable, tmp_path, capsys):
    """A missing or corrupt chunk in any array of one observable (here: in every one of its arrays
    at once, deleted and garbled in turn) is found by `verify` array by array, and `adaptsym
    measure` recomputes that checkpoint, naming it: afterwards `verify` is clean, the group is
    bitwise what it was, and every other group was not rewritten."""
    run_dir = tmp_path / measured_every_observable[1].name
    shutil.copytree(measured_every_observable[1], run_dir)
    group = "epoch_0001"
    store = RunStore.for_run(run_dir, mode="r")
    assert store.has(group, observable)
    before = snapshot(run_dir)
    paths = [p for p, _ in store.arrays(store.root[f"{group}/{observable}"], f"{group}/{observable}/")]
    assert paths
    for i, path in enumerate(paths):
        arr = store.root[path]
        _damage(chunk(run_dir, *path.split("/"), *arr.metadata.encode_chunk_key((0,) * arr.ndim).split("/")),
                "delete" if i % 2 else "garble")
    faults = RunStore.for_run(run_dir, mode="r").array_faults()
    assert sorted({f.split(": chunk")[0] for f in faults}) == sorted(paths)  # every damaged array, nothing else
    assert main(["verify", str(run_dir)]) == 1
    capsys.readouterr()
    assert main(["measure", "--run", str(run_dir), "--no-mlflow", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{group} of {run_dir} is damaged ({paths[0]}: chunk" in out and "recomputing this checkpoint" in out
    assert main(["verify", str(run_dir)]) == 0
    after = snapshot(run_dir)
    assert after.keys() == before.keys()
    changed = sorted(str(k) for k in before if before[k] != after[k])
    assert changed == [], changed  # deterministic: the recomputed group is bitwise the original
    # and the other checkpoints were kept, not recomputed: their groups' attributes are untouched
    assert RunStore.for_run(run_dir, mode="r").attrs("epoch_0000")["scalars"] == store.attrs("epoch_0000")["scalars"]


def test_sigterm_mid_measure_says_so_and_the_rerun_resumes_bitwise(run):
    """SIGTERM in the middle of `adaptsym measure` (as `kill` or `ray job stop` sends it): one line
    saying finished work is kept, exit 143, the lock released; the rerun finishes, `verify` is
    clean, and every chunk is bitwise what an uninterrupted measurement wrote."""
    import signal
    import subprocess
    import sys

    _, run_dir = run
    before = snapshot(run_dir)
    store = RunStore.for_run(run_dir)
    for g in ("epoch_0001", "epoch_0003"):
        store.reset_group(g)
    cmd = [sys.executable, "-m", "jobs.cli", "measure", "--run", str(run_dir), "--no-mlflow"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # no terminal: one line per phase
        if "epoch 1: weights done" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("adaptsym: stopped by SIGTERM; finished work is kept")
    assert "Traceback" not in err
    assert not RunStore.for_run(run_dir, mode="r").is_complete("epoch_0003")
    done = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the lock was released
    assert verify_run(run_dir)[0] == []
    after = snapshot(run_dir)
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before)


def test_disk_full_is_one_line_naming_the_path(run, monkeypatch, capsys):
    """ENOSPC while a measurement writes (injected at the store's attribute write): one line naming
    the file, saying finished work is kept; no traceback."""
    import errno

    _, run_dir = run
    RunStore.for_run(run_dir).reset_group("epoch_0003")
    real = RunStore.set_attrs

    def full(self, attrs, group=None):
        if group == "epoch_0003" and "scalars" in attrs:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "epoch_0003" / "zarr.json"))
        return real(self, attrs, group)

    monkeypatch.setattr(RunStore, "set_attrs", full)
    assert main(["measure", "--run", str(run_dir), "--no-mlflow", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adaptsym: error: no space left on the device writing ") \
        and "epoch_0003/zarr.json" in err[0] and "finished work is kept" in err[0] and "rerun" in err[0]
    monkeypatch.setattr(RunStore, "set_attrs", real)
    assert main(["measure", "--run", str(run_dir), "--no-mlflow", "--quiet"]) == 0
    assert verify_run(run_dir)[0] == []

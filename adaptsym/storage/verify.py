"""`adaptsym verify RUN_DIR`: is a run intact? Every checkpoint and every zarr chunk, one line per problem.

Checks: each checkpoint file loads and matches the checksum it was saved with (files written before
checkpoints carried one are reported as unverifiable); scheduled checkpoints that training passed
are all present; every array of the zarr store carries chunk checksums, every chunk exists and
decodes (a complete measurement has no missing chunk; an unfinished one only its uncomputed h
tiles), and every measurement group is finished.
"""

from __future__ import annotations

from pathlib import Path

from ..nets.checkpoint import CheckpointError, load_checkpoint, missing_scheduled
from ..config import parse_config
from .store import RunStore, StoreError


def verify_run(run_dir: str | Path) -> tuple[list[str], int]:
    """(problems, number of things checked)."""
    run_dir = Path(run_dir)
    problems, checked = [], 0
    try:
        store = RunStore.for_run(run_dir, mode="r")
    except StoreError as exc:
        return [str(exc)], 0
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        checked += 1
        try:
            data = load_checkpoint(path)
            if "sha256" not in data:
                problems.append(f"{path}: written without a checksum (an older adaptsym); it cannot be verified")
        except CheckpointError as exc:
            problems.append(str(exc))
    root = store.attrs()
    if "config" in root:
        gone = missing_scheduled(run_dir, parse_config(root["config"]))
        if gone:
            problems.append(f"scheduled checkpoints {gone} are missing; `adaptsym train` with the run's config "
                            "recreates them")
    problems += store.problems()
    checked += sum(1 for _ in store.arrays())
    return problems, checked

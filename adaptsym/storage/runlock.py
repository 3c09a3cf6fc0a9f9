"""One writer per run: an exclusive lock on `<run_dir>/.adaptsym.lock` held while training or measuring.

The lock is an `fcntl.flock` on the file, so the operating system releases it when the holder
exits, however it exits. The file records the holder (what, pid, host, start time), so a second
writer fails at once with a message naming it, instead of interleaving its arrays with the
first writer's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import UserFacingError

LOCK_NAME = ".adaptsym.lock"


class RunLockedError(UserFacingError, RuntimeError):
    """Another process is writing to this run; the message names it."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str):
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            raise RunLockedError(
                f"{run_dir} is in use by `{holder.get('what', '?')}` (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish or stop it, "
                "then rerun") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock

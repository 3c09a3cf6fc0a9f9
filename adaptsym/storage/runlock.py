"""One writer per run: an exclusive lock on `<run_dir>/.adaptsym.lock` held while training or measuring.

The lock is an `fcntl.flock` on the file, so the operating system releases it when the holder
exits, however it exits. A run whose store lives on S3 also takes the store's `object_lock` (a
lease, below): two drivers on different machines share no filesystem. The file records the holder (what, pid, host, start time), so a second
writer fails at once with a message naming it, instead of interleaving its arrays with the
first writer's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import UserFacingError

LOCK_NAME = ".adaptsym.lock"


class RunLockedError(UserFacingError, RuntimeError):
    """Another process is writing to this run; the message names it."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str):
    """The run directory's flock and, when the run's store lives at a URL, its `object_lock`."""
    from .store import is_url, store_location

    location = store_location(run_dir)
    with _dir_lock(run_dir, what), (object_lock(location, what) if is_url(location) else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def _dir_lock(run_dir: str | Path, what: str):
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


# ---------------------------------------------------------------------------- object storage
# A bucket has no flock, and nothing releases a lock when its holder dies. The lock there is a
# lease: an object `<store URL>.lock` created with a conditional write (If-None-Match: *), so of
# two writers exactly one creates it. Its holder rewrites it every lease/3 seconds (If-Match on
# its own ETag). A lock not rewritten for `lease_s` seconds, by the server's clock (the object's
# Last-Modified against the Date of the server's reply, both to the second: no clock on two
# machines is compared), is
# stale: a new writer takes it over with If-Match on the stale ETag, so again only one wins. A
# holder that finds its lock gone or taken stops the process (KeyboardInterrupt in the main
# thread) rather than write beside another writer. Stores at URLs other than s3:// are refused:
# a lock there could not be made safe.

LEASE_S = float(os.environ.get("ADAPTSYM_LOCK_LEASE_S", 120))  # seconds; tests shorten it


def _s3(url: str):
    import fsspec

    if not url.startswith("s3://"):
        raise RunLockedError(f"{url}: adaptsym can lock runs in a directory or on S3 (s3://) only; a store at "
                             "another kind of URL could be written by two processes at once, so it is refused")
    fs, path = fsspec.core.url_to_fs(url)
    bucket, _, key = path.partition("/")
    return fs, bucket, key


def _precondition_failed(exc) -> bool:
    """A conditional write refused (HTTP 412); s3fs raises it as FileExistsError over botocore's error."""
    for e in (exc, exc.__cause__):
        if isinstance(e, FileExistsError) or "PreconditionFailed" in str(e) or "pre-conditions" in str(e):
            return True
    return False


def _holder_message(url: str, holder: dict, age: float | None, lease_s: float) -> str:
    left = "" if age is None else f"; its lease was renewed {age:.0f} s ago and lapses {max(lease_s - age, 0):.0f} s " \
        "after its holder stops renewing it"
    return (f"{url} is in use by `{holder.get('what', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')}){left}; wait for it to finish or stop it, then rerun")


@contextlib.contextmanager
def object_lock(store_url: str, what: str, lease_s: float | None = None):
    """One writer per store at an s3:// URL: the lease described above, held while the block runs."""
    import threading
    import _thread
    import uuid
    from email.utils import parsedate_to_datetime

    lease_s = float(os.environ.get("ADAPTSYM_LOCK_LEASE_S", LEASE_S)) if lease_s is None else lease_s
    fs, bucket, key = _s3(store_url)
    key = key.rstrip("/") + ".lock"
    url = f"s3://{bucket}/{key}"
    token = uuid.uuid4().hex
    body = json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(), "token": token,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
    try:
        etag = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
    except Exception as exc:
        if not _precondition_failed(exc):
            raise
        got = fs.call_s3("head_object", Bucket=bucket, Key=key)
        try:
            holder = json.loads(fs.cat_file(f"{bucket}/{key}") or b"{}")
        except (OSError, ValueError):
            holder = {}
        now = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - got["LastModified"]).total_seconds()
        if age <= lease_s:
            raise RunLockedError(_holder_message(url, holder, age, lease_s)) from None
        try:  # stale: take it over, unless another writer just did
            etag = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfMatch=got["ETag"])["ETag"]
        except Exception as exc2:
            if _precondition_failed(exc2):
                raise RunLockedError(f"{url}: another writer took over the stale lock first; rerun later") from None
            raise
    stop, state = threading.Event(), {"etag": etag, "lost": None}

    def renew():
        while not stop.wait(lease_s / 3):
            try:
                state["etag"] = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body,
                                           IfMatch=state["etag"])["ETag"]
            except Exception as exc:
                if stop.is_set():
                    return
                if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
                    state["lost"] = f"the lock {url} was taken over or removed while this process held it"
                    print(f"adaptsym: {state['lost']}; stopping before writing beside another writer",
                          file=sys.stderr, flush=True)
                    _thread.interrupt_main()
                    return
                # a transient error (network): try again at the next beat, the lease has slack

    beat = threading.Thread(target=renew, name="adaptsym-lock-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=30)
        if state["lost"] is None:
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=state["etag"])
            except Exception:
                pass  # taken over or already gone: not ours to delete
        if state["lost"]:
            raise RunLockedError(state["lost"] + "; rerun to resume from the tiles that were finished")

"""Ends a local Ray cluster when the driver that started it dies, however it dies.

    python -m services.reaper DRIVER_PID SESSION_DIR

`services.cluster.connect` starts this in its own session right after `ray.init` has started a
local cluster. While the driver lives it records the driver's Ray descendants (GCS, raylet, the
dashboard and runtime-env agents, workers) by pid and start time: when the driver is killed the
agents are re-parented to init and retitled `ray::DashboardAgent`, so neither the process tree
nor their command line names the cluster any more (measured: they outlived a `kill -9`ed driver).
When the driver's process ends (a normal exit, Ctrl-C or `kill -9`) it terminates the recorded
processes still alive and every process whose command line names the session directory, and
kills those left 5 s later. Other clusters' processes are never recorded or named.
"""

from __future__ import annotations

import sys
import time

import psutil

RAY_NAMES = ("ray::", "raylet", "gcs_server", "ray/", "ray.")


def is_ray(p: psutil.Process) -> bool:
    try:
        return any(tag in " ".join(p.cmdline()) or tag in p.name() for tag in RAY_NAMES)
    except psutil.Error:
        return False


def session_processes(session_dir: str) -> list[psutil.Process]:
    """Processes whose command line names this session directory."""
    name = session_dir.rstrip("/").rsplit("/", 1)[-1]  # session_2026-..._<pid>
    me = psutil.Process().pid
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != me and any(name in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


def ray_descendants(pid: int) -> list[psutil.Process]:
    me = psutil.Process().pid
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.pid != me and is_ray(p)]
    except psutil.Error:
        return []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(driver_pid: int, session_dir: str, poll: float = 0.5) -> int:
    seen: dict[tuple[int, float], psutil.Process] = {}
    while alive(driver_pid):
        for p in ray_descendants(driver_pid):
            try:
                seen[(p.pid, p.create_time())] = p
            except psutil.Error:
                pass
        time.sleep(poll)
    procs = []
    for (pid, created), p in seen.items():
        try:
            if p.is_running() and p.create_time() == created:  # not a reused pid
                procs.append(p)
        except psutil.Error:
            pass
    procs += [p for p in session_processes(session_dir) if p.pid not in {q.pid for q in procs}]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)


if __name__ == "__main__":
    reap(int(sys.argv[1]), sys.argv[2])

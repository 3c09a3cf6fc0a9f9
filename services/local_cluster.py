"""A real multi-node Ray cluster on one machine (tests, benchmarks): a head and worker nodes, each its
own raylet started with `ray start` (token auth, 127.0.0.1, every port its own), stopped at the end.

Worker nodes get a custom resource naming them and a fake GPU count (`--num-gpus 1`): Ray then
places one actor per "GPU" across the nodes and sets each actor's CUDA_VISIBLE_DEVICES, while
torch, seeing no CUDA, computes on the CPU. A node can be started inside its own mount namespace
(`unshare --mount`) with a private tmpfs over a directory, so that it really does not see the
driver's files there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def free_ports(k: int) -> list[int]:
    socks, ports = [], []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def node_ports() -> list[str]:
    p = free_ports(7)
    return ["--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]), "--metrics-export-port",
            str(p[2]), "--dashboard-agent-grpc-port", str(p[3]), "--dashboard-agent-listen-port", str(p[4]),
            "--runtime-env-agent-port", str(p[5])]


def can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    node_id: str = ""


@dataclass
class LocalCluster:
    address: str
    temp_dir: Path
    jobs_api: str = ""  # the head's dashboard / Jobs API URL
    head: object = None  # the finished `ray start --head`
    nodes: dict = field(default_factory=dict)

    def add_worker(self, name: str, gpus: int = 1, cpus: int = 1, private_dir: Path | None = None,
                   timeout: float = 120, env: dict | None = None, resources: dict | None = None) -> Node:
        """A worker node (`ray start --address ... --block`) in its own process group, with the custom
        resource `name` (and `resources`); with `private_dir`, inside `unshare --mount` with a tmpfs
        over that directory; `env` adds to its environment (credentials, say)."""
        import ray

        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        cmd = [str(BIN / "ray"), "start", "--address", self.address, "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(cpus), "--num-gpus", str(gpus), "--resources", json.dumps({name: 1, **(resources or {})}),
               "--disable-usage-stats", "--block", *node_ports()]
        if private_dir is not None:
            inner = f"mount -t tmpfs tmpfs {private_dir} && exec " + " ".join(
                f"'{c}'" if c.startswith("{") else c for c in cmd)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
        log = open(self.temp_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, env={**ENV, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while True:
            alive = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] not in before]
            if alive and alive[0]["Resources"].get(name):
                node = Node(name, proc, alive[0]["NodeID"])
                self.nodes[name] = node
                return node
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"worker node {name} did not join: {(self.temp_dir / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def kill(self, name: str) -> None:
        """SIGKILL a worker node's raylet and every process of its session (its workers too)."""
        node = self.nodes.pop(name)
        pids = [node.proc.pid]
        # the raylet and its workers are descendants of the `ray start --block` process
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
        children: dict[int, list[int]] = {}
        for line in out.splitlines():
            pid, ppid = (int(v) for v in line.split())
            children.setdefault(ppid, []).append(pid)
        i = 0
        while i < len(pids):
            pids += children.get(pids[i], [])
            i += 1
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.nodes):
            self.kill(name)
        if self.head is not None:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def start_cluster(temp_dir: Path) -> LocalCluster:
    """A head with no CPUs (actors go to the worker nodes), GCS on a free port of 127.0.0.1."""
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=ENV, capture_output=True, check=False)
    port, dash = free_ports(2)
    env = {**ENV, "PATH": f"{BIN}:{os.environ['PATH']}"}  # job entrypoints run this venv's python
    head = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                           "--num-cpus", "0", "--num-gpus", "0", "--dashboard-host", "127.0.0.1",
                           "--dashboard-port", str(dash), "--disable-usage-stats", *node_ports(),
                           "--ray-client-server-port", str(free_ports(1)[0])],
                          env=env, capture_output=True, text=True, timeout=180)
    if head.returncode != 0:
        raise RuntimeError(f"ray start --head failed: {head.stdout[-1500:]}{head.stderr[-1500:]}")
    return LocalCluster(f"127.0.0.1:{port}", temp_dir, jobs_api=f"http://127.0.0.1:{dash}", head=head)

"""Connecting to Ray: a local cluster on 127.0.0.1 by default, or an existing one.

Token authentication stays on: RAY_AUTH_MODE=token is set before Ray is imported. An address
that does not answer is reported within seconds (Ray itself would retry for a minute or more).
A local cluster started here ends with this process, even when it is killed (`services.reaper`).
"""

from __future__ import annotations

import os
import socket

from adaptsym.errors import UserFacingError

os.environ.setdefault("RAY_AUTH_MODE", "token")


class ClusterError(UserFacingError, RuntimeError):
    """The Ray cluster cannot be used; the message says what to do."""


def _host_port(address: str) -> tuple[str, int]:
    addr = address.split("://", 1)[-1]
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 3.0, hint: str | None = None) -> None:
    """The address answers a TCP connection within `timeout`; else a ClusterError ending in `hint`
    (default: how to start a head, or to let `measure --ray` start a local cluster)."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}) within {timeout:.0f} s; "
            + (hint or "start one with `make ray-head`, or use --ray without an address for a local cluster")) from None


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> dict:
    """Initialise Ray (once per process); returns the cluster's resources."""
    import ray

    if address not in (None, "", "local", "auto"):
        check_reachable(address)
    if not ray.is_initialized():
        if address in (None, "", "local"):
            if num_gpus is None:
                import torch

                num_gpus = torch.cuda.device_count()
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
            start_reaper()
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray.cluster_resources()


def start_reaper() -> None:
    """A detached watcher that ends the local cluster this process started when this process dies,
    even by SIGKILL (`services.reaper`)."""
    import subprocess
    import sys

    import ray._private.worker as worker

    session = worker._global_node.get_session_dir_path()
    subprocess.Popen([sys.executable, "-m", "services.reaper", str(os.getpid()), session],
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()

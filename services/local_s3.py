"""A local S3-compatible server for tests and trials: moto's standalone server on 127.0.0.1.

`start_s3_server()` starts `moto_server` on a free port and returns a handle with the endpoint and
the AWS_* variables that point boto3, s3fs and MLflow at it; `stop()` ends the process. moto keeps
objects in memory and implements the conditional writes (If-None-Match, If-Match) that the run
lock on object storage relies on (`adaptsym.storage.runlock.object_lock`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class LocalS3:
    endpoint: str
    proc: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """What a process (a driver, a Ray node, an MLflow client) needs to use this server."""
        return {"AWS_ACCESS_KEY_ID": "adaptsym-test", "AWS_SECRET_ACCESS_KEY": "adaptsym-test",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="adaptsym-test", aws_secret_access_key="adaptsym-test").create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def start_s3_server(log: Path | None = None, timeout: float = 60) -> LocalS3:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ})
    endpoint = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            return LocalS3(endpoint, proc)
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}"
                                   + (f": {Path(log).read_text()[-1500:]}" if log else ""))
            time.sleep(0.3)

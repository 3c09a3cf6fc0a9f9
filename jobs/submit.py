"""`adaptsym submit JOB --address URL [-- JOB ARGS]`: a Ray Job through the Jobs API.

Validates the job's config before anything is sent (a bad config is rejected here, not on the
cluster), submits `python -m jobs.JOB ARGS` with this checkout as the working directory, the
token authentication mode and the MLflow tracking URI in the job's environment, streams the
logs, and waits. The submission id travels as ADAPTSYM_RAY_JOB_ID, so every MLflow run the job
makes is tagged `ray_job_id`. Exit status 0 only if the job succeeded.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

JOBS = ("train", "measure", "scale_sweep", "nightly", "benchmark", "calibration", "regime_study", "collect_ensemble",
        "effective_model", "signal_propagation")
EXCLUDES = [".venv", "runs", ".git", "*.db", "mlartifacts", "__pycache__", ".pytest_cache", "data"]


def _validate(job: str, job_args: list[str]) -> None:
    from adaptsym.config import ConfigError, load_config

    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; choose one of {', '.join(JOBS)}")
    if "--config" in job_args:
        i = job_args.index("--config")
        if i + 1 >= len(job_args):
            raise ConfigError("--config needs a file")
        load_config(job_args[i + 1])  # raises ConfigError naming the bad key


def submit(job: str, job_args: list[str], address: str, working_dir: str = ".", python: str = "python",
           tracking_uri: str | None = None, wait: bool = True, timeout: float = 3600, out=sys.stdout) -> int:
    _validate(job, job_args)
    from ray.job_submission import JobStatus, JobSubmissionClient

    from services.cluster import check_reachable

    check_reachable(address.split("://", 1)[-1].split("/")[0],
                    hint="start a head with `make ray-head` (its Jobs API answers on 127.0.0.1:8265), or pass "
                         "--address of a running cluster's Jobs API")
    client = JobSubmissionClient(address)
    job_id = f"adaptsym-{job}-{uuid.uuid4().hex[:10]}"
    env = {"RAY_AUTH_MODE": "token", "ADAPTSYM_RAY_JOB_ID": job_id}
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    client.submit_job(entrypoint=f"{python} -m jobs.{job} {shlex.join(job_args)}", submission_id=job_id,
                      runtime_env={"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES,
                                   "env_vars": env})
    print(f"submitted Ray job {job_id} to {address}", file=out, flush=True)
    if not wait:
        return 0
    shown, t0 = 0, time.monotonic()
    terminal = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
        if status in terminal:
            break
        if time.monotonic() - t0 > timeout:
            client.stop_job(job_id)
            print(f"job {job_id} exceeded {timeout:.0f} s and was stopped", file=out)
            return 1
        time.sleep(1.0)
    info = client.get_job_info(job_id)
    print(f"Ray job {job_id}: {status}" + (f" ({info.message})" if status != JobStatus.SUCCEEDED and info.message
                                            else ""), file=out)
    return 0 if status == JobStatus.SUCCEEDED else 1

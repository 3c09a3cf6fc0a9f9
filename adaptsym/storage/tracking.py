"""MLflow tracking: one run per training or measurement job, nested runs per checkpoint.

The default store is a sqlite file `mlflow.db` in the parent of the run directories, with
artifacts beside it in `mlartifacts/`; `MLFLOW_TRACKING_URI` overrides both, and
`ADAPTSYM_MLFLOW_ARTIFACTS` (an s3:// URL: clusters without a shared filesystem) puts the artifacts of
experiments created from then on there (MLflow fixes an experiment's artifact location when it
creates it; an HTTP server sets its own with `--artifacts-destination`). An HTTP tracking
server that does not answer fails the job at once with its URI named, unless
`ADAPTSYM_MLFLOW_FALLBACK=local`, which logs to the local sqlite store instead and says so
(the results are never lost). Runs made inside a Ray job submitted by `adaptsym submit` are
tagged with its id (`ray_job_id`, from `ADAPTSYM_RAY_JOB_ID`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..errors import UserFacingError


def tracking_uri(runs_root: str | os.PathLike) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(runs_root) / 'mlflow.db').resolve()}"


EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class TrackingError(UserFacingError, RuntimeError):
    """The MLflow tracking server cannot be reached; the message names it."""


def check_server(uri: str, timeout: float = 3.0) -> None:
    """For http(s) URIs: the server's /health answers within `timeout` seconds."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
    except OSError as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} does not answer ({exc}); start it (`make mlflow-server`), fix "
            "MLFLOW_TRACKING_URI, or set ADAPTSYM_MLFLOW_FALLBACK=local to log to the local store") from None


def flatten_params(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """Thin wrapper over MLflow's fluent API bound to one tracking URI and experiment."""

    def __init__(self, runs_root: str | os.PathLike, experiment: str):
        import mlflow

        self.mlflow = mlflow
        self.runs_root = Path(runs_root)
        self.uri = tracking_uri(runs_root)
        try:
            check_server(self.uri)
        except TrackingError as exc:
            if os.environ.get("ADAPTSYM_MLFLOW_FALLBACK") != "local":
                raise
            self.uri = f"sqlite:///{(self.runs_root / 'mlflow.db').resolve()}"
            print(f"adaptsym: warning: {exc.args[0].split(';')[0]}; logging to the local store {self.uri} instead")
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        # mlflow writes the URI into os.environ; undo that so only the user's setting overrides
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        with self._init_lock():  # processes sharing a sqlite store create its schema one at a time
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                artifacts = os.environ.get("ADAPTSYM_MLFLOW_ARTIFACTS")  # s3://bucket/prefix, say
                if artifacts is None and self.uri.startswith("sqlite:"):
                    artifacts = (self.runs_root / "mlartifacts").resolve().as_uri()
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            exp = mlflow.set_experiment(experiment)
            if exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                # MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces),
                # where none of these runs show; with it, the UI opens on the runs table
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        self.experiment = experiment

    @contextlib.contextmanager
    def _init_lock(self):
        """A blocking lock beside a local sqlite store (two `train` runs at once raced on its schema)."""
        if not self.uri.startswith("sqlite:"):
            yield
            return
        import fcntl

        path = Path(self.uri[len("sqlite:///"):]).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def run(self, name: str, params: dict | None = None, tags: dict | None = None,
            nested: bool = False, run_id: str | None = None):
        with self.mlflow.start_run(run_name=None if run_id else name, nested=nested, run_id=run_id) as r:
            if params and run_id is None:
                self.mlflow.log_params(flatten_params(params))
            tags = dict(tags or {})
            if os.environ.get("ADAPTSYM_RAY_JOB_ID"):
                tags["ray_job_id"] = os.environ["ADAPTSYM_RAY_JOB_ID"]
            if tags:
                self.mlflow.set_tags({k: str(v) for k, v in tags.items()})
            yield r

    def run_url(self, run_id: str) -> str:
        """Where a browser shows the run: on the tracking server, or on the UI that `make mlflow-ui`
        serves for a local store (127.0.0.1:$MLFLOW_UI_PORT, default 5000), in the runs view."""
        exp_id = self.mlflow.MlflowClient().get_run(run_id).info.experiment_id
        if self.uri.startswith(("http://", "https://")):
            base = self.uri.rstrip("/")
        else:
            base = f"http://127.0.0.1:{os.environ.get('MLFLOW_UI_PORT', '5000')}"
        return f"{base}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"

    def browse_hint(self) -> str:
        """How to open the UI on this store."""
        if self.uri.startswith(("http://", "https://")):
            return f"the tracking server {self.uri}"
        return f"`make mlflow-ui` (serves {self.uri})"

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, x, y, name: str, context: str) -> None:
        """The data set as an MLflow dataset input of the active run (its digest, shape and name:
        the UI's Dataset column); the arrays themselves are not uploaded."""
        import mlflow.data

        ds = mlflow.data.from_numpy(np.asarray(x.detach().cpu()), targets=np.asarray(y.detach().cpu()), name=name)
        self.mlflow.log_input(ds, context=context)

    def log_figure(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        self.mlflow.log_figure(fig, name)
        plt.close(fig)

    def set_tags(self, tags: dict) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

import os

# Ray keeps token authentication on everywhere, tests included.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest
import torch

from adaptsym.config import ModelSpec
from adaptsym.nets.models import BiasFreeNet

torch.set_num_threads(2)


def small_models():
    """(name, model, input_shape) of small float64 nets: an MLP and a CNN with max-pool."""
    return [
        ("mlp", BiasFreeNet(ModelSpec(kind="mlp", hidden=[5, 4]), (6,), seed=3, dtype=torch.float64), (6,)),
        ("cnn", BiasFreeNet(ModelSpec(kind="cnn", conv=[4, "M", 5], hidden=[4]), (2, 4, 4), seed=1,
                            dtype=torch.float64), (2, 4, 4)),
    ]


def pool_for(shape, n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + tuple(shape), generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    return x, y


@pytest.fixture(params=[0, 1], ids=["mlp", "cnn"])
def small(request):
    name, model, shape = small_models()[request.param]
    x, y = pool_for(shape)
    return model, x, y


@pytest.fixture(autouse=True)
def _no_tracking_uri_leak():
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ; a test that calls it
    would send every later test's runs to its store. Each test starts without it."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A local S3 server (moto, 127.0.0.1) with the bucket `adaptsym-test`; this process's AWS_*
    variables point at it for the session, and the server is stopped at the end."""
    from services.local_s3 import start_s3_server

    server = start_s3_server(log=tmp_path_factory.mktemp("s3") / "moto.log")
    before = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        server.make_bucket("adaptsym-test")
        yield server
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        assert server.proc.poll() is not None

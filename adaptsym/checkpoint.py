"""Self-describing checkpoints, loaded with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values: the format tag and version, the
model spec and input shape (enough to rebuild the network), the data spec, the epoch, the
weights, the optimiser state, the seeds, the full run config and the training history.
Files are written to a temporary name and renamed, so a crash never leaves half a file
under the final name.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .config import ModelSpec
from .errors import UserFacingError
from .models import BiasFreeNet

FORMAT = "adaptsym-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model_spec", "input_shape", "epoch", "weights")


class CheckpointError(UserFacingError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; list the run's checkpoints/ folder "
                              "or retrain with `adaptsym train`")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "delete it and rerun training, which resumes from the last good checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adaptsym checkpoint (no '{FORMAT}' format tag); "
                              "point to a file written by `adaptsym train`")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, this adaptsym reads {VERSION}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}; it was not written by adaptsym")
    return data


def model_from_checkpoint(data: dict, dtype=torch.float32, device=None) -> BiasFreeNet:
    """Rebuild the network of a loaded checkpoint, with its weights."""
    spec = ModelSpec.model_validate(data["model_spec"])
    model = BiasFreeNet(spec, tuple(data["input_shape"]), seed=None, dtype=dtype)
    weights = data["weights"]
    if len(weights) != model.n_layers or any(tuple(w.shape) != s for w, s in zip(weights, model.shapes)):
        raise CheckpointError("checkpoint weights do not match its model spec")
    with torch.no_grad():
        for p, w in zip(model.weights, weights):
            p.copy_(w.to(dtype))
    return model.to(device) if device is not None else model

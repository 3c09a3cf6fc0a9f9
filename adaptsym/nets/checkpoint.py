"""Self-describing checkpoints, loaded with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values: the format tag and version, the
model spec and input shape (enough to rebuild the network), the data spec, the epoch, the
weights, the optimiser state, the seeds, the full run config and the training history.
Files are written to a temporary name and renamed, so a crash never leaves half a file
under the final name. Version 2 carries `sha256`, a digest of its own content (every tensor's
dtype, shape and bytes, every other value as JSON), checked on every load: a garbled file of the
right size is an error, never a model with wrong weights. Version 1 files (no digest) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..config import ModelSpec, RunConfig
from ..errors import UserFacingError
from .models import BiasFreeNet

FORMAT = "adaptsym-checkpoint"
VERSION = 2
READABLE = (1, 2)
REQUIRED = ("format", "version", "model_spec", "input_shape", "epoch", "weights")


class CheckpointError(UserFacingError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


RECREATE = ("restore it from a copy, or move it away and run `adaptsym train` with the run's config: "
            "training recreates every missing scheduled checkpoint bit for bit")


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"D")
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(b"L")
        for v in value:
            _feed(h, v)
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())


def content_digest(data: dict) -> str:
    """SHA-256 of a checkpoint's content, its own `sha256` entry excluded."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in data.items() if k != "sha256"})
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    data["sha256"] = content_digest(data)
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
            f"{RECREATE}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adaptsym checkpoint (no '{FORMAT}' format tag); "
                              "point to a file written by `adaptsym train`")
    if data.get("version") not in READABLE:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, this adaptsym reads {READABLE}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}; it was not written by adaptsym")
    if "sha256" in data and content_digest(data) != data["sha256"]:
        raise CheckpointError(f"checkpoint {path} does not match the checksum written when it was saved: the file "
                              f"is corrupt, and nothing was read from it or deleted; {RECREATE}")
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


def missing_scheduled(run_dir: Path, cfg: RunConfig) -> list[int]:
    """Scheduled checkpoints that training has passed but whose files are gone."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        return []
    reached = int(load_checkpoint(last)["epoch"])
    return [e for e in cfg.train.checkpoints if e <= reached and not (run_dir / "checkpoints" / f"epoch_{e:04d}.pt").exists()]

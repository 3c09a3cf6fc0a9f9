"""The effective model's data: PCA projections of handwritten digits.

`digits-pca` is scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); `mnist-pca` reads a
local MNIST copy (the four IDX files, optionally gzipped, in `data.root`), never downloaded. Both
are split (digits: seeded, `test_fraction`; MNIST: its official split), then projected on the top
`components` principal axes of the training images, and scaled so that the training projections
have unit mean variance per component.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserFacingError
from .config import EffectiveConfig, PCADataSpec

MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


class MNISTMissingError(UserFacingError, FileNotFoundError):
    pass


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_mnist(root: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) from the IDX files in `root`."""
    base = Path(root or os.environ.get("ADAPTSYM_DATA_DIR", ".")).expanduser()
    out = []
    for stem in MNIST_FILES.values():
        found = [p for p in (base / stem, base / f"{stem}.gz", base / "mnist" / stem, base / "mnist" / f"{stem}.gz")
                 if p.is_file()]
        if not found:
            raise MNISTMissingError(f"MNIST file {stem}[.gz] not found under {base}; put the four official MNIST "
                                    "IDX files there (data.root in the config), or use data.name: digits-pca")
        out.append(_read_idx(found[0]))
    xtr, ytr, xte, yte = out
    return xtr.reshape(len(xtr), -1) / 255.0, ytr.astype(np.int64), xte.reshape(len(xte), -1) / 255.0, yte.astype(np.int64)


def load_pca_data(spec: PCADataSpec, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 PCA projections and int64 class labels."""
    if spec.name == "mnist-pca":
        xtr, ytr, xte, yte = read_mnist(spec.root)
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        perm = np.random.default_rng(seed).permutation(len(d.target))
        n_test = int(round(spec.test_fraction * len(perm)))
        te, tr = perm[:n_test], perm[n_test:]
        xtr, ytr, xte, yte = d.data[tr], d.target[tr], d.data[te], d.target[te]
    mean = xtr.mean(0)
    _, _, vt = np.linalg.svd(xtr - mean, full_matrices=False)
    axes = vt[:spec.components].T
    ptr, pte = (xtr - mean) @ axes, (xte - mean) @ axes
    scale = np.sqrt((ptr ** 2).mean())
    return ((ptr / scale).astype(np.float32), ytr.astype(np.int64), (pte / scale).astype(np.float32),
            yte.astype(np.int64))


def scenario_data(cfg: EffectiveConfig, scenario: str) -> tuple[torch.Tensor, ...]:
    """The tensors one scenario trains and tests on (its first `train_examples` training images)."""
    xtr, ytr, xte, yte = load_pca_data(cfg.data, cfg.seed)
    n = cfg.scenarios[scenario].train_examples
    if n is not None:
        xtr, ytr = xtr[:n], ytr[:n]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (xtr, ytr, xte, yte))

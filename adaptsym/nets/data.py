"""Binary classification data sets with labels in {-1, +1} (SPEC section 1).

- `digits-binary`: scikit-learn's bundled 8x8 digits (1797 images), needs no network.
- `cifar10-binary`: a local copy in the official `cifar-10-batches-py` pickle format, read
  by torchvision when it imports, else by `read_cifar10_batches` below. Never downloaded.
- `photo-patches`: 3x32x32 crops of the two photographs scikit-learn ships (`china.jpg`, a
  temple among trees; `flower.jpg`, a flower close-up; 427 x 640 each), labelled by their
  photograph (flower +1, china -1). The paper's input shape on real images, offline. Crops have
  a random side in [min_side, max_side], are resized to 32x32 (bilinear, antialiased) and
  flipped at random. Test crops come only from the right `test_fraction` of each photograph's
  width and training crops only from the rest, so no pixel is in both splits.
- `textures`: 3x32x32 Gaussian colour textures with a natural-image power spectrum, labelled by a
  weak dominant orientation; 25,000 by default, generated from a seed, with an exact Bayes error
  (0.093 by default; `adaptsym.nets.textures`). The hard task: examples stay active for many epochs.
- `teacher`: Gaussian inputs labelled by a random bias-free teacher MLP: +1 where its output
  is at least its median over the sample (balanced classes), else -1.

Splits are deterministic functions of the seed; inputs are normalised per channel with the
training split's mean and standard deviation.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataSpec, ModelSpec
from ..errors import UserFacingError
from .models import BiasFreeNet

CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST_FILES = ["test_batch"]
CIFAR_HOWTO = (
    "Get the official 'CIFAR-10 python version' archive (cifar-10-python.tar.gz from the "
    "CIFAR-10 web page), unpack it so that <root>/cifar-10-batches-py/data_batch_1 exists, and "
    "set data.root in the config (or ADAPTSYM_DATA_DIR) to <root>."
)


class DataError(UserFacingError, RuntimeError):
    """A data set that cannot be loaded; the message says where we looked and what to do."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]

    def to(self, device=None, dtype=None) -> "Dataset":
        conv = lambda t, fl: t.to(device=device, dtype=dtype if fl else t.dtype)
        return Dataset(self.name, conv(self.x_train, True), conv(self.y_train, True),
                       conv(self.x_test, True), conv(self.y_test, True), self.input_shape)


def binary_labels(classes: np.ndarray, positive: list[int]) -> np.ndarray:
    return np.where(np.isin(classes, positive), 1.0, -1.0).astype(np.float32)


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def _normalise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images: per-channel mean/std; flat features: one global mean/std (training split)."""
    if x_train.ndim > 2:
        axes = (0,) + tuple(range(2, x_train.ndim))
        mean, std = x_train.mean(axis=axes, keepdims=True), x_train.std(axis=axes, keepdims=True)
    else:
        mean, std = x_train.mean(), x_train.std()
    std = np.where(std > 0, std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _subset(x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    return (x, y) if n is None else (x[:n], y[:n])


def _finish(name, spec: DataSpec, xtr, ytr, xte, yte) -> Dataset:
    xtr, ytr = _subset(xtr, ytr, spec.n_train)
    xte, yte = _subset(xte, yte, spec.n_test)
    xtr, xte = _normalise(xtr.astype(np.float64), xte.astype(np.float64))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return Dataset(name, t(xtr), t(ytr.astype(np.float32)), t(xte), t(yte.astype(np.float32)), tuple(xtr.shape[1:]))


# --------------------------------------------------------------------------- digits


def load_digits_binary(spec: DataSpec, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float64)[:, None, :, :]  # (1797, 1, 8, 8)
    y = binary_labels(d.target, spec.positive_classes)
    tr, te = _split(len(x), spec.test_fraction, seed)
    return _finish("digits-binary", spec, x[tr], y[tr], x[te], y[te])


# --------------------------------------------------------------------------- CIFAR-10


def cifar_dir(root: str | os.PathLike | None) -> Path:
    """The `cifar-10-batches-py` folder under `root` (or `root` itself if it is that folder)."""
    base = Path(root or os.environ.get("ADAPTSYM_DATA_DIR", "data")).expanduser()
    return base if (base / CIFAR_TRAIN_FILES[0]).exists() or base.name == CIFAR_DIRNAME else base / CIFAR_DIRNAME


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR-10 pickles hold: dicts, lists, bytes, str, ints (plain
    opcodes) and numpy arrays (`_reconstruct`, `ndarray`, `dtype`). Anything else, e.g. a pickle
    that would call os.system, is refused before it runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR-10 format")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} is missing. {CIFAR_HOWTO}")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d.get(b"labels", d.get(b"fine_labels")), dtype=np.int64)
    except Exception as exc:  # truncated, not a pickle, wrong keys
        raise DataError(f"CIFAR-10 file {path} is not in the official pickle format ({exc!r}). {CIFAR_HOWTO}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 file {path}: expected a (N, 3072) uint8 'data' array and N labels, "
                        f"got {data.shape} and {len(labels)}. {CIFAR_HOWTO}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_batches(directory: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Our reader of the official format: images (N, 3, 32, 32) uint8 and labels (N,)."""
    parts = [_read_batch(directory / f) for f in (CIFAR_TRAIN_FILES if train else CIFAR_TEST_FILES)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_cifar10_torchvision(directory: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's reader (checks the official md5 sums): same output as ours."""
    from torchvision.datasets import CIFAR10  # optional extra 'vision'

    ds = CIFAR10(root=str(directory.parent), train=train, download=False)
    return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a CUDA build failing to load beside CPU torch
        return False
    return True


def load_cifar10_binary(spec: DataSpec, seed: int) -> Dataset:
    directory = cifar_dir(spec.root)
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 not found: looked for the folder {directory.resolve()}. {CIFAR_HOWTO}")
    reader = read_cifar10_torchvision if torchvision_available() else read_cifar10_batches
    try:
        xtr, ctr = reader(directory, True)
        xte, cte = reader(directory, False)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"CIFAR-10 at {directory.resolve()} could not be read ({exc}). {CIFAR_HOWTO}") from None
    rng = np.random.default_rng(seed)
    ptr, pte = rng.permutation(len(xtr)), rng.permutation(len(xte))
    ytr, yte = binary_labels(ctr, spec.positive_classes), binary_labels(cte, spec.positive_classes)
    return _finish("cifar10-binary", spec, xtr[ptr], ytr[ptr], xte[pte], yte[pte])


# --------------------------------------------------------------------------- teacher


def load_teacher(spec: DataSpec, seed: int) -> Dataset:
    t = spec.teacher
    gen = torch.Generator().manual_seed(t.seed)
    x = torch.randn(t.n_samples, t.input_dim, generator=gen, dtype=torch.float64)
    teacher = BiasFreeNet(ModelSpec(kind="mlp", hidden=t.hidden), (t.input_dim,), seed=t.seed, dtype=torch.float64)
    with torch.no_grad():
        t_out = teacher(x)
    # a bias-free ReLU teacher can be one-signed everywhere: threshold at its median output
    y = torch.where(t_out >= t_out.median(), 1.0, -1.0).numpy().astype(np.float32)
    x = x.numpy()
    tr, te = _split(len(x), spec.test_fraction, seed)
    return _finish("teacher", spec, x[tr], y[tr], x[te], y[te])


# --------------------------------------------------------------------------- photo patches


def _crops(img, n: int, x_lo: int, x_hi: int, spec, rng: np.random.Generator) -> np.ndarray:
    """n random square crops inside columns [x_lo, x_hi) of `img` (a PIL image), as (n, 3, 32, 32)."""
    from PIL import Image

    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    max_side = min(spec.max_side, x_hi - x_lo, img.height)
    min_side = min(spec.min_side, max_side)
    for i in range(n):
        side = int(rng.integers(min_side, max_side + 1))
        x0 = int(rng.integers(x_lo, x_hi - side + 1))
        y0 = int(rng.integers(0, img.height - side + 1))
        patch = img.crop((x0, y0, x0 + side, y0 + side)).resize((32, 32), Image.BILINEAR)
        if rng.random() < 0.5:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(patch)
    return out.transpose(0, 3, 1, 2)


def load_photo_patches(spec: DataSpec, seed: int) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    p = spec.patches
    rng = np.random.default_rng(np.random.SeedSequence([p.seed, seed]))
    n_test = max(2, int(round(p.n_samples * spec.test_fraction)))
    n_train = p.n_samples - n_test
    sample = load_sample_images()
    photos = {Path(f).stem: im for f, im in zip(sample.filenames, sample.images)}
    parts = {"train": [], "test": []}
    for label, name in ((-1.0, "china"), (1.0, "flower")):
        img = Image.fromarray(photos[name])
        cut = int(round(img.width * (1 - spec.test_fraction)))
        for split, n, lo, hi in (("train", n_train, 0, cut), ("test", n_test, cut, img.width)):
            k = n // 2 + (n % 2 if label > 0 else 0)
            parts[split].append((_crops(img, k, lo, hi, p, rng), np.full(k, label, dtype=np.float32)))
    (xtr, ytr), (xte, yte) = ((np.concatenate([a for a, _ in parts[s]]), np.concatenate([b for _, b in parts[s]]))
                              for s in ("train", "test"))
    ptr, pte = rng.permutation(len(xtr)), rng.permutation(len(xte))
    return _finish("photo-patches", spec, xtr[ptr], ytr[ptr], xte[pte], yte[pte])


# --------------------------------------------------------------------------- textures


def load_textures(spec: DataSpec, seed: int) -> Dataset:
    from . import textures

    x, y = textures.generate(spec.textures, spec.textures.n_samples)
    tr, te = _split(len(x), spec.test_fraction, seed)
    return _finish("textures", spec, x[tr], y[tr], x[te], y[te])


LOADERS = {"digits-binary": load_digits_binary, "cifar10-binary": load_cifar10_binary, "teacher": load_teacher,
           "photo-patches": load_photo_patches, "textures": load_textures}


def load_dataset(spec: DataSpec, seed: int = 0) -> Dataset:
    return LOADERS[spec.name](spec, seed)

import pickle

import numpy as np
import pytest
import torch

from adaptsym.config import DataSpec
from adaptsym.nets.data import (DataError, cifar_dir, load_dataset, read_cifar10_batches, read_cifar10_torchvision,
                           torchvision_available)


def make_cifar_copy(root, n_per_batch=6, seed=0):
    """A small copy in the official cifar-10-batches-py pickle format."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": lab, b"data": data,
                         b"filenames": [b"x.png"] * n_per_batch}, f)
        images.append(data)
        labels.append(lab)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n_per_batch}, f)
    return d, images, labels


def test_digits_binary_labels_split_and_normalisation():
    ds = load_dataset(DataSpec(name="digits-binary"), seed=0)
    assert ds.input_shape == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert set(ds.y_train.unique().tolist()) == {-1.0, 1.0}
    assert abs(ds.x_train.mean().item()) < 1e-5 and ds.x_train.std().item() == pytest.approx(1, abs=1e-3)
    again = load_dataset(DataSpec(name="digits-binary"), seed=0)
    other = load_dataset(DataSpec(name="digits-binary"), seed=1)
    assert torch.equal(ds.x_train, again.x_train)
    assert not torch.equal(ds.x_train, other.x_train)


def test_digits_labels_follow_the_digit():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = load_dataset(DataSpec(name="digits-binary", test_fraction=0.5, positive_classes=[0]), seed=3)
    # with only digit 0 positive, the positive fraction of both splits is that of zeros
    n_pos = int((ds.y_train == 1).sum() + (ds.y_test == 1).sum())
    assert n_pos == int(np.sum(d.target == 0))


def test_teacher_labels_are_the_teachers_sign():
    ds = load_dataset(DataSpec(name="teacher", teacher={"n_samples": 500, "input_dim": 8, "hidden": [6]}), seed=0)
    assert ds.input_shape == (8,)
    assert len(ds.x_train) == 400 and set(ds.y_train.unique().tolist()) <= {-1.0, 1.0}
    assert 0.1 < (ds.y_train == 1).float().mean().item() < 0.9


def test_cifar_reader_reads_official_format(tmp_path):
    d, images, labels = make_cifar_copy(tmp_path)
    x, c = read_cifar10_batches(d, train=True)
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x.reshape(30, -1), np.concatenate(images[:5]))
    assert np.array_equal(c, np.concatenate(labels[:5]))
    ds = load_dataset(DataSpec(name="cifar10-binary", root=str(tmp_path)), seed=0)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 30 and len(ds.x_test) == 6
    expect = np.sort(np.where(np.concatenate(labels[:5]) >= 5, 1.0, -1.0))
    assert np.array_equal(np.sort(ds.y_train.numpy()), expect)
    assert cifar_dir(d) == d  # pointing at the folder itself works too


def test_cifar_missing_directory_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(DataSpec(name="cifar10-binary", root=str(tmp_path / "nowhere")), seed=0)
    msg = str(e.value)
    assert "nowhere" in msg and "cifar-10-batches-py" in msg and "data.root" in msg


def test_cifar_malformed_file_is_named(tmp_path):
    d, _, _ = make_cifar_copy(tmp_path)
    (d / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_3"):
        read_cifar10_batches(d, train=True)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing"):
        read_cifar10_batches(d, train=True)


@pytest.mark.skipif(not torchvision_available(), reason="torchvision (extra 'vision') does not import here")
def test_cifar_readers_agree(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    d, _, _ = make_cifar_copy(tmp_path)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # our copy has other md5 sums
    for train in (True, False):
        a, la = read_cifar10_batches(d, train)
        b, lb = read_cifar10_torchvision(d, train)
        assert np.array_equal(a, b) and np.array_equal(la, lb)


def test_cifar_reader_refuses_a_malicious_pickle(tmp_path):
    """A pickle in a user-given folder that would run code is refused before it runs."""
    d, _, _ = make_cifar_copy(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load .*: not part of the CIFAR-10 format"):
        read_cifar10_batches(d, train=True)
    assert not marker.exists()


def test_photo_patches_shape_labels_and_determinism():
    spec = DataSpec(name="photo-patches", patches={"n_samples": 200}, test_fraction=0.25)
    ds = load_dataset(spec, seed=0)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 150 and len(ds.x_test) == 50
    assert set(ds.y_train.tolist()) == {-1.0, 1.0} and ds.y_train.sum() == 0 and ds.y_test.sum() == 0
    assert torch.equal(load_dataset(spec, seed=0).x_train, ds.x_train)
    assert not torch.equal(load_dataset(spec, seed=1).x_train, ds.x_train)


def test_photo_patch_crops_stay_inside_their_columns():
    """Train and test crops come from disjoint column ranges: an image whose red channel is its
    column index shows which columns each crop read (bilinear resizing stays inside the crop)."""
    from PIL import Image

    from adaptsym.config import PatchSpec
    from adaptsym.nets.data import _crops

    cols = np.tile(np.arange(200, dtype=np.uint8), (150, 1))
    img = Image.fromarray(np.stack([cols, cols, cols], axis=-1))
    rng = np.random.default_rng(0)
    spec = PatchSpec(min_side=20, max_side=120)
    left = _crops(img, 300, 0, 160, spec, rng)
    right = _crops(img, 300, 160, 200, spec, rng)
    assert left.max() <= 159 and right.min() >= 160 and left.shape == (300, 3, 32, 32)

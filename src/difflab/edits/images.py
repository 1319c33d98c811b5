"""User images and masks in, model-range tensors out: orient, flatten, centre-crop, resize, validate.

These files come from users (a phone photo, a drawing exported from a paint app, a mask painted on a
layer, a 16-bit scan), so every Pillow mode is read with its real range, EXIF orientation is applied
the way viewers show the picture, and alpha is coverage over a background that contrasts with what
is drawn. Every failure is a one-line ValueError naming the file, the cause and the fix.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 89_478_485
"""Largest user image read (Pillow's own decompression-bomb threshold, 2^30 / 4 / 3 pixels): the model
needs 28x28 or 64x64, and a bigger file costs gigabytes of memory to decode."""
BLANK_CONTRAST = 0.02
"""An image whose pixels span less than this (on [0, 1]) after conversion has nothing for the model to see."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights, as Pillow's own RGB -> L conversion."""
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _open(path: str | Path, what: str) -> Image.Image:
    """Open and decode path fully; any failure becomes one line naming the file, the cause and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist; give the path of a PNG/JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"Image size ({img.width * img.height} pixels)")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(n.group(1)):,} pixels" if n else "too many pixels"
        raise ValueError(f"{what} {str(path)!r} is too large to read ({size}; the limit is {MAX_IMAGE_PIXELS:,}); "
                         "downscale it (e.g. to 1024 pixels on its long side) and give that file") from None
    except UnidentifiedImageError:
        kind = _signature(path)
        if kind:  # an image file whose header or first chunk is damaged
            raise ValueError(f"{what} {str(path)!r} is truncated or corrupt (a {kind} file Pillow cannot decode); "
                             "copy or export it again (an interrupted download or upload leaves such a file)") from None
        raise ValueError(f"{what} {str(path)!r} cannot be read as an image (not a format Pillow recognises); "
                         "export it again as PNG or JPEG") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        # Pillow reports a cut-off or damaged file as OSError ('image file is truncated'), SyntaxError
        # ('broken PNG file'), EOFError or ValueError depending on the decoder.
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{what} {str(path)!r} is truncated or corrupt ({cause}); copy or export it again "
                         "(an interrupted download or upload leaves such a file)") from None
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels themselves are fine
        return img


SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WEBP"}
"""Leading bytes of the formats users hand over: a file that starts like one is damaged, not foreign."""


def _signature(path: Path) -> str | None:
    """The image format path's first bytes announce, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in SIGNATURES.items() if head.startswith(magic)), None)


def _real_range(arr: np.ndarray, mode: str) -> np.ndarray:
    """Pixel values of one band of mode `mode` mapped to [0, 1] by the range that mode stores.

    1: {0, 1}; L, P, RGB, CMYK...: 0..255; I;16*: 0..65535; I (32-bit integers, what Pillow makes of many
    16-bit PNGs and TIFFs): 0..255 if every value fits, else 0..65535 if every value fits, else the
    image's own min..max; F (floats): as is if within [0, 1], else 0..255 if within it, else min..max."""
    arr = arr.astype(np.float64)
    if mode == "1":
        return arr.clip(0, 1)
    if mode.startswith("I;16"):
        return arr / 65535.0
    if mode in ("I", "F"):
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros_like(arr)
        lo, hi = float(finite.min()), float(finite.max())
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
        if mode == "F" and lo >= 0 and hi <= 1:
            return arr
        if lo >= 0 and hi <= 255:
            return arr / 255.0
        if mode == "I" and lo >= 0 and hi <= 65535:
            return arr / 65535.0
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr / 255.0


def to_float(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow image -> (colour (H, W, 3) float64 in [0, 1], alpha (H, W) in [0, 1] or None).

    Greyscale modes give three equal bands. Palette images with a transparent index and images with
    an alpha band give their alpha; premultiplied modes (RGBa, La) are un-premultiplied first."""
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA" if ("transparency" in img.info or img.mode == "PA") else "RGB")
    elif img.mode in ("RGBa", "La"):
        img = img.convert("RGBA" if img.mode == "RGBa" else "LA")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("1", "L", "I", "F") or img.mode.startswith("I;16"):
        grey = _real_range(np.asarray(img), img.mode)
        return np.repeat(grey[..., None], 3, axis=2), None
    if img.mode == "LA":
        arr = np.asarray(img).astype(np.float64) / 255.0
        return np.repeat(arr[..., :1], 3, axis=2), arr[..., 1]
    if img.mode == "RGBA":
        arr = np.asarray(img).astype(np.float64) / 255.0
        return arr[..., :3], arr[..., 3]
    if img.mode != "RGB":  # CMYK, YCbCr, LAB, HSV: Pillow converts them with their own formulas
        img = img.convert("RGB")
    return np.asarray(img).astype(np.float64) / 255.0, None


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) brightness with the BT.601 weights (LUMA)."""
    return rgb @ np.asarray(LUMA)


def flatten_alpha(rgb: np.ndarray, alpha: np.ndarray | None, background: float | None = None) -> np.ndarray:
    """Alpha as coverage: out = alpha * colour + (1 - alpha) * background.

    background=None picks black when what is drawn (the colour weighted by alpha) is light and white when
    it is dark, so strokes survive whatever their colour and whatever colour the transparent pixels store."""
    if alpha is None:
        return rgb
    a = alpha[..., None]
    if background is None:
        weight = float(alpha.sum())
        ink = float((luma(rgb) * alpha).sum() / weight) if weight > 0 else 0.0
        background = 0.0 if ink > 0.5 else 1.0
    return a * rgb + (1.0 - a) * background


def center_crop_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Largest centred crop with the target aspect ratio, then a bicubic resize to (H, W)."""
    h, w = size
    scale = min(img.width / w, img.height / h)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


def pil_to_tensor(img: Image.Image, channels: int, value_range: tuple[float, float]) -> torch.Tensor:
    """PIL image (any mode, alpha flattened as in flatten_alpha) -> (1, C, H, W) float32 in value_range."""
    rgb = flatten_alpha(*to_float(img))
    arr = luma(rgb)[..., None] if channels == 1 else rgb
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None]
    lo, hi = value_range
    return x * (hi - lo) + lo


def _resize_float(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float -> centre-cropped, bicubic-resized (h, w, C), clipped to [0, 1] (bicubic overshoots)."""
    bands = [np.asarray(center_crop_resize(Image.fromarray(arr[..., i].astype(np.float32), mode="F"), size))
             for i in range(arr.shape[2])]
    return np.stack(bands, axis=2).clip(0.0, 1.0)


def load_image(path: str | Path, image_shape: tuple[int, int, int], value_range: tuple[float, float],
               invert: bool | None = None) -> torch.Tensor:
    """A user image as (1, C, H, W) float32 in value_range, C, H, W = image_shape.

    Steps: EXIF orientation applied (as viewers show it); the mode's real range (see to_float); alpha
    flattened as coverage over a contrasting background (flatten_alpha); greyscale by BT.601 luma when
    C = 1; largest centred crop, bicubic resize. invert=None inverts a one-channel image whose mean is
    bright, so a dark stroke on white paper becomes MNIST's white stroke on black.

    Raises ValueError (one line: file, cause, fix) for a missing, unreadable, truncated, corrupt or too
    large file, and for an image with no contrast after conversion (BLANK_CONTRAST)."""
    c, h, w = image_shape
    img = _open(path, "image")
    rgb = flatten_alpha(*to_float(img))
    arr = luma(rgb)[..., None] if c == 1 else rgb
    arr = _resize_float(arr, (h, w))
    spread = float(arr.max() - arr.min())
    if spread < BLANK_CONTRAST:
        raise ValueError(f"image {str(path)!r} is blank after conversion to the model's {w}x{h} input (every pixel "
                         f"~{float(arr.mean()):.2f}); draw with a colour that contrasts with the background, or "
                         "give another image")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None]
    if invert is None:
        invert = c == 1 and float(x.mean()) > 0.5
    if invert:
        x = 1.0 - x
    lo, hi = value_range
    return x * (hi - lo) + lo


def load_mask(mask: str | Path | torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A binary mask (1 where new content goes) as a (1, 1, H, W) float tensor.

    A mask file is read like a user image (EXIF orientation, the mode's real range), with alpha as
    coverage over black: a mask painted white on a transparent layer repaints the painted pixels only.
    Masks are not resized: a mask drawn for another size would cover the wrong pixels. A mask that
    repaints nothing or everything is refused (the edit would be a no-op or a plain sample).
    Raises ValueError (one line) for a wrong size, non-binary values or such a mask."""
    where = "mask"
    if isinstance(mask, (str, Path)):
        img = _open(mask, "mask")
        where = f"mask {str(mask)!r}"
        arr = luma(flatten_alpha(*to_float(img), background=0.0))
    else:
        arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float64)
    arr = np.squeeze(arr)
    if arr.shape != tuple(size):
        got = f"{arr.shape[1]}x{arr.shape[0]}" if arr.ndim == 2 else f"shaped {arr.shape}"
        raise ValueError(f"{where} is {got} but the image is {size[1]}x{size[0]}; "
                         f"make a {size[1]}x{size[0]} single-channel mask or use a rectangle mask")
    arr = np.where(np.isclose(arr, 1.0, atol=1e-6), 1.0, arr)  # luma of pure white is 1 within rounding
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{where} is not binary; use only black (0, keep) and white (255, repaint) pixels, "
                         "or opaque white on a transparent layer")
    share = float(arr.mean())
    if share in (0.0, 1.0):
        raise ValueError(f"{where} repaints {'nothing' if share == 0 else 'every pixel'}; paint white (or opaque) "
                         "where new content goes and leave black (or transparent) what is kept")
    return torch.from_numpy(arr.astype(np.float32))[None, None]


def rect_mask(size: tuple[int, int], top: int, left: int, height: int, width: int) -> torch.Tensor:
    """(1, 1, H, W) mask with ones in the rectangle; it must lie inside the image."""
    h, w = size
    if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= h and left + width <= w):
        raise ValueError(f"rectangle top={top} left={left} height={height} width={width} does not fit in a "
                         f"{w}x{h} image; shrink or move it")
    m = torch.zeros(1, 1, h, w)
    m[..., top:top + height, left:left + width] = 1.0
    return m

"""User images and masks in, model-range tensors out: centre-crop, resize, validate.

Every failure is a one-line ValueError that says what to change, because these
files come from users (a web photo, a hand drawing, a mask painted elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist; give the path of a PNG/JPEG file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} {str(path)!r} cannot be read as an image ({type(e).__name__}); "
                         "give a PNG/JPEG file") from None
    return img


def center_crop_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Largest centred crop with the target aspect ratio, then a bicubic resize to (H, W)."""
    h, w = size
    scale = min(img.width / w, img.height / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


def pil_to_tensor(img: Image.Image, channels: int, value_range: tuple[float, float]) -> torch.Tensor:
    """PIL image -> (1, C, H, W) float32 in value_range."""
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).reshape(img.height, img.width, channels).permute(2, 0, 1)[None]
    lo, hi = value_range
    return x * (hi - lo) + lo


def load_image(path: str | Path, image_shape: tuple[int, int, int], value_range: tuple[float, float],
               invert: bool | None = None) -> torch.Tensor:
    """A user image as (1, C, H, W) in the model's range.

    invert=None inverts a one-channel image whose mean is bright, so a dark stroke on
    white paper becomes MNIST's white stroke on black.
    """
    c, h, w = image_shape
    img = _open(path, "image")
    if img.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    x = pil_to_tensor(center_crop_resize(img.convert("RGB"), (h, w)), c, (0.0, 1.0))
    if invert is None:
        invert = c == 1 and float(x.mean()) > 0.5
    if invert:
        x = 1.0 - x
    lo, hi = value_range
    return x * (hi - lo) + lo


def load_mask(mask: str | Path | torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A binary mask (1 where new content goes) as a (1, 1, H, W) float tensor.

    Masks are not resized: a mask drawn for another size would cover the wrong pixels.
    """
    if isinstance(mask, (str, Path)):
        img = _open(mask, "mask")
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
    arr = np.squeeze(arr)
    if arr.shape != tuple(size):
        got = f"{arr.shape[1]}x{arr.shape[0]}" if arr.ndim == 2 else f"shaped {arr.shape}"
        raise ValueError(f"mask is {got} but the image is {size[1]}x{size[0]}; "
                         f"make a {size[1]}x{size[0]} single-channel mask or use a rectangle mask")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError("mask is not binary; use only black (0, keep) and white (255, repaint) pixels")
    return torch.from_numpy(arr.copy())[None, None]


def rect_mask(size: tuple[int, int], top: int, left: int, height: int, width: int) -> torch.Tensor:
    """(1, 1, H, W) mask with ones in the rectangle; it must lie inside the image."""
    h, w = size
    if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= h and left + width <= w):
        raise ValueError(f"rectangle top={top} left={left} height={height} width={width} does not fit in a "
                         f"{w}x{h} image; shrink or move it")
    m = torch.zeros(1, 1, h, w)
    m[..., top:top + height, left:left + width] = 1.0
    return m

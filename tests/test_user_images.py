"""User images and masks as users hand them over: every Pillow mode, EXIF orientation, alpha layers,
huge, truncated and corrupt files. Each input is made here (no files from outside the test)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from difflab.edits import load_image, load_mask
from difflab.edits import images as images_module

SHAPE = (1, 28, 28)
ORIENTATION_TAG = 0x0112

# What a viewer does for each EXIF orientation, as the transform that takes the stored pixels upright.
# The file stores the inverse of it applied to the upright drawing.
UPRIGHT_FROM_STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, -1),
}


def _drawing(w: int, h: int) -> np.ndarray:
    """(h, w) bool ink of an asymmetric mark inside the centred square (which the loader keeps): a thick
    bar across the top, a thick stem down the left, a dot at the right: no rotation or flip maps it to itself."""
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    ink = np.zeros((h, w), dtype=bool)

    def box(y0, y1, x0, x1):
        ink[top + int(y0 * s):top + max(int(y1 * s), int(y0 * s) + 1), left + int(x0 * s):left + max(int(x1 * s), int(x0 * s) + 1)] = True

    box(0.10, 0.32, 0.10, 0.90)   # a thick bar across the top
    box(0.10, 0.90, 0.10, 0.24)   # a thinner stem down the left
    box(0.66, 0.86, 0.45, 0.62)   # a dot low in the middle
    return ink


def _expected(ink: np.ndarray) -> torch.Tensor:
    """What the model should see: the upright ink, white on black, centre square, area-averaged to 28x28."""
    h, w = ink.shape
    s = min(w, h)
    sq = ink[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(sq))[None, None]
    return torch.nn.functional.interpolate(t, size=SHAPE[1:], mode="area")[0, 0]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def _encode(ink: np.ndarray, mode: str, light_ink: bool, alpha: bool, hidden_colour: int) -> Image.Image:
    """The stored ink (already in stored orientation) as a Pillow image of `mode`."""
    fg, bg = (235, 25) if light_ink else (20, 230)
    grey = np.where(ink, fg, bg).astype(np.uint8)
    if mode == "1":
        return Image.fromarray(np.where(ink, light_ink, not light_ink).astype(bool))
    if mode == "L":
        return Image.fromarray(grey)
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255.0)
    rgb = np.stack([grey, (grey * 0.9).astype(np.uint8), grey], axis=2)
    if mode == "RGB":
        return Image.fromarray(rgb)
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK")
    if mode == "P":
        img = Image.fromarray(ink.astype(np.uint8), mode="P")  # index 0 paper, 1 ink
        img.putpalette([bg, bg, bg, fg, int(fg * 0.9), fg])
        if alpha:  # the paper's palette index transparent, as GIF/PNG exports do
            img.info["transparency"] = 0
        return img
    # LA / RGBA: strokes opaque on a fully transparent layer whose stored colour is hidden_colour
    a = np.where(ink, 255, 0).astype(np.uint8) if alpha else np.full(ink.shape, 255, np.uint8)
    if alpha:
        grey = np.where(ink, fg, hidden_colour).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=2)
    if mode == "LA":
        return Image.fromarray(np.stack([grey, a], axis=2), mode="LA")
    return Image.fromarray(np.concatenate([rgb, a[..., None]], axis=2), mode="RGBA")


FORMATS = {"1": ["PNG", "TIFF"], "L": ["PNG", "JPEG"], "I;16": ["PNG", "TIFF"], "I": ["TIFF"], "F": ["TIFF"],
           "RGB": ["PNG", "JPEG", "WEBP"], "CMYK": ["JPEG", "TIFF"], "P": ["PNG"], "LA": ["PNG"], "RGBA": ["PNG"]}


def _write(img: Image.Image, fmt: str, orientation: int, folder: Path) -> Path:
    path = folder / f"drawing.{fmt.lower()}"
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    kwargs = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        kwargs["quality"] = 95
    if fmt == "WEBP":
        kwargs["lossless"] = True
    img.save(path, fmt, **kwargs)
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(sorted(FORMATS)), data=st.data(), w=st.integers(20, 160), h=st.integers(20, 160),
       orientation=st.integers(1, 8), light_ink=st.booleans(), alpha=st.booleans(),
       hidden_colour=st.sampled_from([0, 255, 235, 20]))
def test_any_mode_size_orientation_and_alpha_reaches_the_model_upright_with_white_strokes(
        mode, data, w, h, orientation, light_ink, alpha, hidden_colour):
    fmt = data.draw(st.sampled_from(FORMATS[mode]))
    if fmt == "TIFF":
        # A TIFF's orientation is its own tag, which Pillow 13 applies while loading, and its writer and
        # reader disagree on the pixel layout for 5-8 (transposed): phones put EXIF orientation in JPEG/PNG.
        orientation = 1
    upright = _drawing(w, h)
    stored = np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))
    assert np.array_equal(UPRIGHT_FROM_STORED[orientation](stored), upright)  # the table itself is right
    img = _encode(stored, mode, light_ink, alpha and mode in ("LA", "RGBA", "P"), hidden_colour)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(img, fmt, orientation, Path(folder))
        try:
            x = load_image(path, SHAPE, (0.0, 1.0))
        except ValueError as e:  # allowed: the one-line user error, naming the file
            assert "\n" not in str(e) and str(path) in str(e)
            return
    assert x.shape == (1, *SHAPE) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    want = _expected(upright)
    c = _corr(x[0, 0], want)
    # orientation and polarity kept: white strokes where the upright drawing has them, and no other
    # rotation or flip of the drawing fits as well
    assert c > 0.8, f"{mode} {fmt} orientation {orientation}: correlation {c:+.2f} with the upright drawing"
    for k in range(4):
        for other in (torch.rot90(want, k), torch.rot90(want, k).T):
            if not torch.equal(other, want):
                assert _corr(x[0, 0], other) < c, f"{mode} {fmt} orientation {orientation}: fits a turned drawing"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_rotated_phone_photo_is_fed_upright(tmp_path, fmt):
    upright = _drawing(90, 60)
    img = Image.fromarray(np.where(STORED_FROM_UPRIGHT[6](upright), 20, 230).astype(np.uint8)).convert("RGB")
    path = _write(img, fmt, 6, tmp_path)
    x = load_image(path, SHAPE, (0.0, 1.0))[0, 0]
    assert _corr(x, _expected(upright)) > 0.9
    assert _corr(x, torch.rot90(_expected(upright), 1)) < 0.5


@pytest.mark.parametrize("hidden", [(0, 0, 0), (255, 255, 255)])
@pytest.mark.parametrize("ink", [(255, 255, 255), (0, 0, 0), (200, 30, 30)])
def test_strokes_on_a_transparent_layer_survive_whatever_their_colour(tmp_path, ink, hidden):
    upright = _drawing(40, 40)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[...] = (*hidden, 0)
    rgba[upright] = (*ink, 255)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "layer.png")
    x = load_image(tmp_path / "layer.png", SHAPE, (0.0, 1.0))[0, 0]
    assert _corr(x, _expected(upright)) > 0.9  # white strokes on black, as MNIST
    assert x.std() > 0.2


def test_sixteen_bit_and_float_images_keep_their_range(tmp_path):
    upright = _drawing(32, 32)
    # a dark 16-bit drawing: light strokes at 60,000 on a 3,000 background (reading it as 8-bit clips it)
    Image.fromarray(np.where(upright, 60000, 3000).astype(np.uint16)).save(tmp_path / "scan16.png")
    x = load_image(tmp_path / "scan16.png", SHAPE, (0.0, 1.0))[0, 0]
    assert _corr(x, _expected(upright)) > 0.9 and x.max() > 0.85 and x.min() < 0.1
    Image.fromarray(np.where(upright, 0.9, 0.1).astype(np.float32)).save(tmp_path / "float.tiff")
    y = load_image(tmp_path / "float.tiff", SHAPE, (0.0, 1.0))[0, 0]
    assert _corr(y, _expected(upright)) > 0.9 and y.max() > 0.8


def test_an_image_blank_after_conversion_is_refused_in_one_line(tmp_path):
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., :3] = 255  # white, fully transparent everywhere: nothing drawn
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "empty_layer.png")
    Image.new("L", (30, 30), 128).save(tmp_path / "grey.png")
    for name in ("empty_layer.png", "grey.png"):
        with pytest.raises(ValueError, match="blank after conversion") as e:
            load_image(tmp_path / name, SHAPE, (0.0, 1.0))
        assert "\n" not in str(e.value) and name in str(e.value)


def test_too_large_truncated_and_corrupt_files_name_the_cause_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 64 * 64)  # a small stand-in for 89 M pixels
    Image.new("L", (100, 100), 255).save(tmp_path / "scan.png")
    with pytest.raises(ValueError, match=r"too large to read \(10,000 pixels; the limit is 4,096\); downscale") as e:
        load_image(tmp_path / "scan.png", SHAPE, (0.0, 1.0))
    assert "scan.png" in str(e.value)
    monkeypatch.undo()

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (tmp_path / "half.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"half.jpg' is truncated or corrupt \(image file is truncated.*copy or "
                                         r"export it again") as e:
        load_image(tmp_path / "half.jpg", SHAPE, (0.0, 1.0))
    assert "\n" not in str(e.value)

    png = io.BytesIO()
    Image.new("L", (64, 64), 10).save(png, "PNG")
    raw = bytearray(png.getvalue())
    raw[40:60] = b"\xff" * 20  # damage the compressed pixel data
    (tmp_path / "damaged.png").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged.png' is truncated or corrupt .*copy or export it again"):
        load_image(tmp_path / "damaged.png", SHAPE, (0.0, 1.0))


def test_pillows_own_bomb_limit_is_a_user_error_too(tmp_path, monkeypatch):
    Image.new("1", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses > 2x this at open, warns above it
    with pytest.raises(ValueError, match=r"bomb.png' is too large to read \(90,000 pixels"):
        load_image(tmp_path / "bomb.png", SHAPE, (0.0, 1.0))


def test_mask_painted_on_a_transparent_layer_repaints_only_the_painted_pixels(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[:14] = (255, 255, 255, 0)    # keep: transparent, stored colour white
    rgba[14:] = (255, 255, 255, 255)  # repaint: opaque white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "layer.png")
    m = load_mask(tmp_path / "layer.png", (28, 28))[0, 0]
    assert float(m[:14].max()) == 0 and float(m[14:].min()) == 1
    la = np.zeros((28, 28, 2), np.uint8)
    la[:, 20:] = (255, 255)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert float(load_mask(tmp_path / "la.png", (28, 28))[0, 0].mean()) == pytest.approx(8 / 28)


def test_a_mask_that_repaints_nothing_or_everything_is_refused(tmp_path):
    Image.new("L", (28, 28), 255).save(tmp_path / "all.png")
    with pytest.raises(ValueError, match="all.png' repaints every pixel"):
        load_mask(tmp_path / "all.png", (28, 28))
    Image.new("RGBA", (28, 28), (255, 255, 255, 0)).save(tmp_path / "none.png")
    with pytest.raises(ValueError, match="none.png' repaints nothing"):
        load_mask(tmp_path / "none.png", (28, 28))
    with pytest.raises(ValueError, match="repaints nothing"):
        load_mask(torch.zeros(28, 28), (28, 28))

"""Pictures for people: image grids with labels, loss curves, GIFs. Returns PIL images.

Everything takes tensors shaped (N, C, H, W) with a stated value range, so the
MNIST [0, 1] images and DeepFloyd's [-1, 1] images go through the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def pyplot():
    """matplotlib.pyplot on the file-only Agg back-end: the one place the back-end is chosen (no display here)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) float -> (N, H, W, C) uint8, clipped to value_range."""
    lo, hi = value_range
    x = images.detach().float().cpu().clamp(lo, hi).sub(lo).div(hi - lo)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def grid(images: torch.Tensor, nrow: int | None = None, value_range=(0.0, 1.0), pad: int = 2,
         scale: int = 1) -> Image.Image:
    """Tile N images into rows of nrow, separated by pad pixels of white."""
    arr = to_uint8(images, value_range)
    n, h, w, c = arr.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol_rows = int(np.ceil(n / nrow))
    canvas = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


LABEL_PT = 8
"""Font size of the row and column labels of a labeled grid, in points."""
TITLE_PT = 9
"""Font size of a labeled grid's title, in points."""
DPI = 100
"""Pixels per inch of every matplotlib figure here: a LABEL_PT label is LABEL_PT * DPI / 72 = 11 px high."""
TITLE_GAP_PT = 6
"""White space between a grid's title and its first row, in points."""
FRAME_GREY = 0.55
"""Grey level (0 black, 1 white) of the frame drawn around each cell when frame=True."""


def labeled_grid(rows: Sequence[torch.Tensor], row_labels: Sequence[str] | None = None,
                 col_labels: Sequence[str] | None = None, value_range=(0.0, 1.0), title: str | None = None,
                 cell_inches: float = 1.1, frame: bool = False) -> Image.Image:
    """A matplotlib table of images: rows[i] is (N_i, C, H, W); labels on the left and top.

    The title gets a band of its own above the cells (tight_layout alone ignores a suptitle and lets it
    overlap the first row). frame=True draws a grey box around every cell, so an image with white edges
    (an inpainting mask) stays visible on a white page.
    """
    plt = pyplot()
    ncols = max(len(r) for r in rows)
    height = cell_inches * len(rows) + 0.5 + (TITLE_GAP_PT + TITLE_PT) / 72 * bool(title)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell_inches * ncols + 0.8, height), squeeze=False, dpi=DPI)
    for i, row in enumerate(rows):
        arr = to_uint8(row, value_range)
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(frame and j < len(arr))
                spine.set_edgecolor(str(FRAME_GREY))
            if j < len(arr):
                img = arr[j]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=255)
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(str(col_labels[j]), fontsize=LABEL_PT)
        if row_labels is not None:
            axes[i][0].set_ylabel(str(row_labels[i]), fontsize=LABEL_PT)
    fig.tight_layout()
    if title:
        _title_above(fig, axes[0], fig.suptitle(title, fontsize=TITLE_PT))
    return figure_to_image(fig)


def _title_above(fig, top_row, title) -> None:
    """Move the cells down until the first row (its column labels included) ends TITLE_GAP_PT below the
    title: tight_layout leaves a suptitle over a tall grid's first row (the out-of-distribution sweep)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title_bottom = title.get_window_extent(renderer).y0
    cells_top = max(ax.get_tightbbox(renderer).y1 for ax in top_row)
    overlap = cells_top - (title_bottom - TITLE_GAP_PT * fig.dpi / 72)
    if overlap > 0:
        fig.subplots_adjust(top=fig.subplotpars.top - overlap / fig.bbox.height)


def figure_to_image(fig) -> Image.Image:
    plt = pyplot()
    fig.canvas.draw()
    img = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return img


def trajectory_grid(frames: Sequence[torch.Tensor], timesteps: Sequence[int], rows: int,
                    title: str | None = None) -> Image.Image:
    """Up to `rows` samples (evenly picked) followed through the denoising, each column labelled with the
    timestep its frame shows."""
    n = len(frames[0])
    picks = torch.linspace(0, n - 1, min(rows, n)).long()
    columns = [f.clamp(0, 1)[picks] for f in frames]
    per_sample = [torch.stack([c[r] for c in columns]) for r in range(len(picks))]
    return labeled_grid(per_sample, None, [f"t={t}" for t in timesteps], title=title)


def loss_curve(losses: Sequence[float] | dict[str, Sequence[float]], title: str = "training loss",
               log_scale: bool = True) -> Image.Image:
    """Per-step losses (one series or several named ones) with a moving average."""
    plt = pyplot()
    series = losses if isinstance(losses, dict) else {"loss": losses}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in series.items():
        values = np.asarray(values, dtype=float)
        ax.plot(values, alpha=0.35, linewidth=0.8, label=f"{name} (per step)")
        if len(values) >= 20:
            k = max(5, len(values) // 50)
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(k - 1, len(values)), smooth, linewidth=1.5, label=f"{name} (mean of {k})")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_to_image(fig)


def save_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 80,
             hold_last_ms: int = 1500) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [duration_ms] * (len(frames) - 1) + [hold_last_ms]
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0)
    return path

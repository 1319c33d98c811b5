"""The figures people read: a grid's title clear of its first row, framed cells for white-edged images."""

from __future__ import annotations

import numpy as np
import torch

from difflab import viz

DARK = 100
"""Pixel values below this count as ink (the title's text, a black cell)."""


def _dark_rows(img) -> np.ndarray:
    """Per pixel row of the image, the share of its pixels that are dark."""
    a = np.asarray(img.convert("L"))
    return (a < DARK).mean(axis=1)


def test_a_grid_title_sits_above_the_first_row_not_over_it():
    """Black cells fill their rows; the title's text is a thin band of ink. With the old layout the first
    row of cells began right at the top of the figure, under the title; now a white gap separates them."""
    rows = [torch.zeros(8, 1, 28, 28) for _ in range(14)]  # the out-of-distribution sweep's shape: 7 sigmas x 2
    img = viz.labeled_grid(rows, [f"noisy sigma={i / 10}" for i in range(14)],
                           title="trained at sigma=0.5: out-of-distribution sweep")
    share = _dark_rows(img)
    first_cell_row = int(np.argmax(share > 0.5))  # a row across the black cells
    title_rows = np.nonzero((share > 0) & (share < 0.5))[0]
    title_rows = title_rows[title_rows < first_cell_row]
    assert len(title_rows) > 0, "no title text above the first row of cells"
    title_px = viz.TITLE_PT * viz.DPI / 72
    assert first_cell_row - title_rows.min() > title_px, "the title overlaps the first row of cells"
    gap = share[title_rows.max() + 1: first_cell_row]
    assert len(gap) > 0 and (gap == 0).any(), "no white line between the title and the first row"


def test_framed_cells_keep_a_white_image_visible_on_a_white_page():
    white = torch.ones(2, 1, 28, 28)
    plain = np.asarray(viz.labeled_grid([white]).convert("L"))
    framed = np.asarray(viz.labeled_grid([white], frame=True).convert("L"))
    assert plain.min() > 250  # a white mask on white: nothing to see
    grey = int(viz.FRAME_GREY * 255)
    assert (np.abs(framed.astype(int) - grey) < 30).sum() > 4 * 28  # at least the outline of the cells


def test_trajectory_labels_are_drawn_at_a_legible_size():
    """The t= labels are LABEL_PT points, 11 px at the figures' DPI; the page shows the strip at full size."""
    assert viz.LABEL_PT * viz.DPI / 72 >= 10
    frames = [torch.rand(3, 1, 28, 28) for _ in range(4)]
    img = viz.trajectory_grid(frames, [30, 20, 10, 0], rows=3)
    assert img.width == round((1.1 * 4 + 0.8) * viz.DPI)  # cell_inches per frame: nothing shrunk in the file

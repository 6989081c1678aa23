"""Labelled image grids for side-by-side comparisons (t2i sweeps, sr --compare)."""

from __future__ import annotations

LABEL_HEIGHT = 24
ROW_LABEL_WIDTH = 80


def compose(rows: list[list], column_labels: list[str], row_labels: list[str]):
    """PIL images in rows × columns, column labels on top and row labels on the left; a column is
    as wide as its widest image and a row as tall as its tallest, each image at its top left."""
    from PIL import Image, ImageDraw

    widths = [max(row[c].width for row in rows) for c in range(len(column_labels))]
    heights = [max(image.height for image in row) for row in rows]
    lefts = [ROW_LABEL_WIDTH + sum(widths[:c]) for c in range(len(widths))]
    tops = [LABEL_HEIGHT + sum(heights[:r]) for r in range(len(heights))]
    grid = Image.new("RGB", (ROW_LABEL_WIDTH + sum(widths), LABEL_HEIGHT + sum(heights)), "white")
    draw = ImageDraw.Draw(grid)
    for left, label in zip(lefts, column_labels):
        draw.text((left + 4, 4), label, fill="black")
    for top, height, label, row in zip(tops, heights, row_labels, rows):
        draw.text((4, top + height // 2), label, fill="black")
        for left, image in zip(lefts, row):
            grid.paste(image.convert("RGBA"), (left, top), image.convert("RGBA"))  # transparency over white
    return grid

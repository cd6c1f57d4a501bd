"""Stitched N x N image grids (MMNeedle-style haystacks) and the prompts that ask about them."""

from __future__ import annotations

from typing import Sequence

from PIL import Image

#: MMNeedle's single-needle instruction, verbatim (Wang et al. 2024).
NEEDLE_PROMPT = (
    "Given {M} image(s) indexed from 1 to {M}, each divided into {N}*{N} subimage(s), identify the subimage "
    "that best matches the provided caption. Respond with 'index, row, column' and nothing else. For example, "
    "'1, 2, 3' indicates the subimage in the first image, second row, and third column. If no match is found, "
    "respond only with '-1'.\nCaption: {caption}"
)
#: The paper's two-question form for M=1, N=2.
TOP_BOTTOM_PROMPT = "Caption: {caption}. Where is the caption? Top or Bottom?"
LEFT_RIGHT_PROMPT = "Caption: {caption}. Where is the caption? Left or Right?"


def stitch(cells: Sequence[Image.Image], n: int, cell_size: int) -> Image.Image:
    """Paste ``n*n`` images, row-major, each resized to a ``cell_size`` square, into one RGB image."""
    if len(cells) != n * n:
        raise ValueError(f"stitch needs {n * n} cells for a {n}x{n} grid, got {len(cells)}")
    canvas = Image.new("RGB", (n * cell_size, n * cell_size))
    for k, cell in enumerate(cells):
        row, col = divmod(k, n)
        tile = cell.convert("RGB")
        if tile.size != (cell_size, cell_size):
            tile = tile.resize((cell_size, cell_size), Image.BICUBIC)
        canvas.paste(tile, (col * cell_size, row * cell_size))
    return canvas


def needle_answer(image_index: int, row: int, col: int) -> str:
    """MMNeedle's answer string, 1-based: 'index, row, column'."""
    return f"{image_index}, {row}, {col}"

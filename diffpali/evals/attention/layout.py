"""Where things are in a PaliGemma sequence: which image tokens show which grid cell, which rows answer.

PaliGemma lays out ``<image> x S`` per image, then ``<bos>``, the prompt, ``\\n`` and the answer. The
S tokens of an image are SigLIP's patches in raster order (row-major), one token per patch, so the
cell of a token follows from geometry alone: the processor resizes the stitched image (a square
N x N grid of square cells) to the model's square input, and patch (pr, pc) of a P x P raster belongs
to the cell that holds its centre (a centre on a border goes to the later cell). Patches that
straddle a cell border (when P is not a multiple of N) are counted in that cell;
:func:`straddling_patches` says how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def cell_patches(image_size: int, patch_size: int, grid: int) -> list[list[int]]:
    """Per cell (row-major, 0-based k = row * grid + col), the raster indices of its patches."""
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    side = image_size // patch_size
    if grid < 1 or grid > side:
        raise ValueError(f"grid={grid}: must be between 1 and the {side} patches per side")
    cells: list[list[int]] = [[] for _ in range(grid * grid)]
    for pr in range(side):
        for pc in range(side):
            # the centre (pr + 0.5) / side as a fraction of the side, times grid: exact in integers
            row, col = (2 * pr + 1) * grid // (2 * side), (2 * pc + 1) * grid // (2 * side)
            cells[row * grid + col].append(pr * side + pc)
    return cells


def straddling_patches(image_size: int, patch_size: int, grid: int) -> int:
    """How many patches cross a cell border (0 when the patches per side are a multiple of grid)."""
    side = image_size // patch_size
    crossing = sum(1 for p in range(side) if (p * grid) // side != ((p + 1) * grid - 1) // side)
    return side * side - (side - crossing) ** 2


@dataclass(frozen=True)
class SampleLayout:
    """Key groups and query rows of one sequence, as positions in its (padded) token row.

    ``needle``, ``distractor`` and ``text`` partition every non-padding key: the needle cell's
    image tokens, every other image token, and all text tokens (bos, prompt, answer).
    ``rows`` are the positions whose next-token prediction is an answer token: the last prompt
    token (``\\n``) and each answer token but the last (the last one predicts eos).
    ``prompt_rows`` are the text positions before the answer (bos, the prompt with its caption, ``\\n``):
    they see the image through PaliGemma's bidirectional prefix and can pass on what they find.
    """

    needle: torch.Tensor
    distractor: torch.Tensor
    text: torch.Tensor
    rows: torch.Tensor
    prompt_rows: torch.Tensor
    image_tokens: torch.Tensor  #: positions of all image tokens, image after image, raster order


def sample_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    image_token_id: int,
    tokens_per_image: int,
    cells: list[list[int]],
    target: tuple[int, int, int],
    grid: int,
    eos_token_id: Optional[int],
    ignore_index: int = -100,
) -> SampleLayout:
    """The layout of one row of a training-style batch (labels on the answer only).

    ``target`` is MMNeedle's 1-based (index, row, column) of the needle cell.
    """
    valid = attention_mask.bool()
    image_tokens = torch.nonzero((input_ids == image_token_id) & valid).flatten()
    index, row, col = target
    if image_tokens.numel() % tokens_per_image or not 1 <= index <= image_tokens.numel() // tokens_per_image:
        raise ValueError(f"{image_tokens.numel()} image tokens of {tokens_per_image} per image: "
                         f"no image {index} for target {target}")
    if not (1 <= row <= grid and 1 <= col <= grid):
        raise ValueError(f"target {target}: row and column must be in 1..{grid}")
    offsets = torch.tensor(cells[(row - 1) * grid + (col - 1)], dtype=torch.long) + (index - 1) * tokens_per_image
    needle = image_tokens[offsets.to(image_tokens.device)]
    is_image = torch.zeros_like(valid)
    is_image[image_tokens] = True
    is_needle = torch.zeros_like(valid)
    is_needle[needle] = True
    answer = torch.nonzero(labels != ignore_index).flatten()
    if eos_token_id is not None:
        answer = answer[input_ids[answer] != eos_token_id]
    if answer.numel() == 0:
        raise ValueError("the sequence has no answer tokens (labels are all ignored)")
    return SampleLayout(
        needle=needle,
        distractor=torch.nonzero(is_image & ~is_needle).flatten(),
        text=torch.nonzero(valid & ~is_image).flatten(),
        rows=answer - 1,
        prompt_rows=torch.nonzero(valid & ~is_image & (labels == ignore_index)).flatten(),
        image_tokens=image_tokens,
    )

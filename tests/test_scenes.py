"""Drawn scenes: seeded, labelled correctly, laid out as haystacks are."""

from __future__ import annotations

import random

import numpy as np
import pytest

from diffpali.data.grids import stitch
from diffpali.scenes import COLORS, TILE_SIZE, draw_scene, draw_tile, sample_objects
from diffpali.scenes.draw import BACKGROUND_RANGE


def scene(seed: int, grid: int, count: int, size: int = 128):
    rng = random.Random(seed)
    return draw_scene(rng, grid, sample_objects(rng, grid, count), size)


def test_the_same_seed_draws_the_same_pixels_and_another_does_not():
    a, b, c = scene(7, 3, 5), scene(7, 3, 5), scene(8, 3, 5)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.objects == b.objects
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_each_box_holds_its_colour_and_blank_cells_are_pale(grid):
    drawn = scene(3, grid, max(1, grid * grid // 2))
    pixels = np.asarray(drawn.image).astype(int)
    cell = drawn.size // grid
    for obj in drawn.objects:
        x0, y0, x1, y1 = (int(round(v)) for v in obj.box)
        patch = pixels[y0:y1, x0:x1].reshape(-1, 3)
        distance = np.abs(patch - np.array(COLORS[obj.color])).sum(-1)
        assert (distance < 40).mean() > 0.3, f"{obj} box does not hold its colour"
        assert obj.cell == (int((y0 + y1) / 2 // cell), int((x0 + x1) / 2 // cell))
    occupied = {o.cell for o in drawn.objects}
    for row in range(grid):
        for col in range(grid):
            if (row, col) not in occupied:
                tile = pixels[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
                assert tile.min() >= BACKGROUND_RANGE[0] - 2  # bicubic resizing may undershoot a little


def test_labels_are_distinct_and_cells_are_distinct():
    for seed in range(20):
        drawn = scene(seed, 4, 16)
        assert len({(o.shape, o.color) for o in drawn.objects}) == 16
        assert len({o.cell for o in drawn.objects}) == 16


def test_a_drawn_grid_is_made_as_a_haystack_is_stitched():
    """A 64 px tile resized into its cell by the very resampling that stitches easy-vqa images."""
    drawn = draw_scene(random.Random(5), 2, {(0, 0): ("circle", "red")}, size=96)
    tile, _ = draw_tile("circle", "red", random.Random(5))  # the same stream draws the first cell
    assert TILE_SIZE == 64 and drawn.image.size == (96, 96)
    assert np.array_equal(np.asarray(drawn.image)[:48, :48], np.asarray(stitch([tile] * 4, 2, 48))[:48, :48])


def test_token_cells_follow_the_grid_after_resizing():
    drawn = scene(0, 3, 2, size=128)  # 3 x 42 px = 126 px, resized to 128 by the processor
    cells = drawn.token_cells(8)
    assert cells[0] == (0, 0) and cells[7] == (0, 2) and cells[63] == (2, 2)
    assert sorted(set(cells)) == [(r, c) for r in range(3) for c in range(3)]


def test_bad_requests_name_what_is_allowed():
    with pytest.raises(ValueError, match="do not fit a 2x2 grid"):
        sample_objects(random.Random(0), 2, 5)
    with pytest.raises(ValueError, match="unknown object"):
        draw_tile("hexagon", "red", random.Random(0))

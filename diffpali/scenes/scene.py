"""Scenes: an N x N grid of easy-vqa-style tiles, some holding an object, the rest blank.

A 1 x 1 grid is a single easy-vqa-like image. Every tile is drawn at 64 px and resized into its
cell exactly as a haystack stitches easy-vqa images, so a drawn grid and a stitched one differ
in content, never in how the pixels were made.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from .draw import COLORS, SHAPES, TILE_SIZE, draw_tile

Label = tuple[str, str]  #: (shape, colour)
ALL_LABELS: tuple[Label, ...] = tuple((s, c) for s in SHAPES for c in COLORS)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its label, its grid cell (0-based row, column) and its box in scene pixels."""

    shape: str
    color: str
    cell: tuple[int, int]
    box: tuple[float, float, float, float]  #: x0, y0, x1, y1

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A drawn image and everything in it."""

    image: Image.Image
    grid: int  #: N: the image is an N x N grid of cells
    objects: tuple[SceneObject, ...]  #: in reading order of their cells

    @property
    def size(self) -> int:
        return self.image.size[0]

    def object_in(self, cell: tuple[int, int]) -> SceneObject | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def find(self, shape: str, color: str) -> SceneObject | None:
        return next((o for o in self.objects if (o.shape, o.color) == (shape, color)), None)

    def token_cells(self, per_side: int) -> list[tuple[int, int]]:
        """The grid cell under the centre of each of ``per_side``**2 image patches, row-major.

        In fractions of the side, so it holds after the processor resizes the image to its input size.
        """
        def cell(index: int) -> int:
            return int((index + 0.5) / per_side * self.grid)

        return [(cell(r), cell(c)) for r in range(per_side) for c in range(per_side)]


def sample_objects(rng: random.Random, grid: int, count: int,
                   labels: tuple[Label, ...] = ALL_LABELS) -> dict[tuple[int, int], Label]:
    """``count`` objects with pairwise-distinct labels in distinct random cells of an N x N grid."""
    if not 0 <= count <= grid * grid:
        raise ValueError(f"{count} objects do not fit a {grid}x{grid} grid")
    if count > len(labels):
        raise ValueError(f"{count} objects with distinct labels need {count} labels, got {len(labels)}")
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], count)
    return dict(zip(cells, rng.sample(labels, count)))


def draw_scene(rng: random.Random, grid: int, placed: dict[tuple[int, int], Label], size: int = 128) -> Scene:
    """Draw ``placed`` (cell -> (shape, colour)) on an N x N grid; other cells blank.

    Cells are ``size // grid`` px, as a haystack's are for a model of input side ``size``.
    """
    cell_size = size // grid
    canvas = Image.new("RGB", (cell_size * grid, cell_size * grid))
    scale = cell_size / TILE_SIZE
    objects = []
    for row in range(grid):
        for col in range(grid):
            shape, color = placed.get((row, col), (None, None))
            tile, box = draw_tile(shape, color, rng)
            if cell_size != TILE_SIZE:
                tile = tile.resize((cell_size, cell_size), Image.BICUBIC)
            x, y = col * cell_size, row * cell_size
            canvas.paste(tile, (x, y))
            if box is not None:
                x0, y0, x1, y1 = box
                in_scene = (x + x0 * scale, y + y0 * scale, x + (x1 + 1) * scale, y + (y1 + 1) * scale)
                objects.append(SceneObject(shape, color, (row, col), in_scene))
    return Scene(canvas, grid, tuple(objects))

"""One easy-vqa-style tile: a single shape of one of eight colours on a pale background, 64 px."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

#: easy-vqa's eight colours, as RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "rectangle", "triangle")
TILE_SIZE = 64  #: easy-vqa's image side; tiles are drawn at this size, then resized into grid cells
MIN_RADIUS, MAX_RADIUS = 3, 16
BACKGROUND_RANGE = (228, 255)  #: per channel: pale, never white-only, as in easy-vqa


def pale_background(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(*BACKGROUND_RANGE) for _ in range(3))  # type: ignore[return-value]


Box = tuple[int, int, int, int]


def draw_tile(shape: str | None, color: str | None, rng: random.Random) -> tuple[Image.Image, Box | None]:
    """A 64 px tile holding ``shape`` in ``color`` (or nothing when ``shape`` is None), and the shape's box.

    The box is (x0, y0, x1, y1) in tile pixels, inclusive of the drawn extent. Sizes and positions
    are uniform over what fits: a radius of 3-16 px, the whole shape inside the tile.
    """
    tile = Image.new("RGB", (TILE_SIZE, TILE_SIZE), pale_background(rng))
    if shape is None:
        return tile, None
    if shape not in SHAPES or color not in COLORS:
        raise ValueError(f"unknown object {color!r} {shape!r}: shapes {SHAPES}, colours {tuple(COLORS)}")
    radius = rng.randint(MIN_RADIUS, MAX_RADIUS)
    cx = rng.randint(radius, TILE_SIZE - 1 - radius)
    cy = rng.randint(radius, TILE_SIZE - 1 - radius)
    fill = COLORS[color]
    pen = ImageDraw.Draw(tile)
    if shape == "circle":
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        pen.ellipse(box, fill=fill)
    elif shape == "rectangle":
        half_w, half_h = radius, rng.randint(max(MIN_RADIUS, radius // 2), radius)
        if rng.random() < 0.5:
            half_w, half_h = half_h, half_w
        box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        pen.rectangle(box, fill=fill)
    else:  # an upright equilateral-looking triangle inscribed in the radius
        top, left, right = (cx, cy - radius), (cx - radius, cy + radius * 7 // 10), (cx + radius, cy + radius * 7 // 10)
        pen.polygon([top, left, right], fill=fill)
        box = (cx - radius, cy - radius, cx + radius, cy + radius * 7 // 10)
    return tile, box

"""Procedurally drawn scenes in easy-vqa's style: seeded, unbounded, with full labels.

Nothing here reads an easy-vqa image; the shapes, colours and pale backgrounds follow its look so
that what is learnt on drawn scenes transfers to its images and to haystacks stitched from them.
"""

from .draw import COLORS, SHAPES, TILE_SIZE, draw_tile
from .scene import Scene, SceneObject, draw_scene, sample_objects

__all__ = ["COLORS", "SHAPES", "TILE_SIZE", "Scene", "SceneObject", "draw_scene", "draw_tile", "sample_objects"]

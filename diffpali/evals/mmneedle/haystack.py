"""Haystacks: which images go where, the needle caption, and the answer; built once, cached on disk.

A haystack is M stitched images, each an N x N grid of square sub-images (cells) from a source of
captioned images. No two cells of one haystack share a caption, so a caption names at most one cell.
A positive sample asks for the caption of one cell (its 1-based ``index, row, column`` is the
target); a negative asks for a caption from outside the haystack (target ``None``, answer "-1").
Needle positions are balanced: they cycle through all M*N*N cells in a shuffled order, so each
cell is the target of ``positives / (M*N*N)`` samples (±1).

The samples and their stitched PNGs are written to a cache directory named by a hash of the
source and every setting, so every model and every later run scores the very same pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from PIL import Image

from ...data.grids import stitch
from .sources import NeedleItem

MANIFEST = "haystacks.json"
FORMAT_VERSION = 1  #: bump when the builder changes what a given seed produces


@dataclass(frozen=True)
class HaystackSpec:
    """Everything that decides the samples; its hash names the cache directory."""

    source: str  #: e.g. "easy_vqa/test" or "coco:/data/captions_val2014.json"
    images: int  #: M
    grid: int  #: N
    cell_size: int  #: side of a sub-image in pixels
    samples: int
    negative_fraction: float
    seed: int

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Haystack:
    """One sample. ``cells[m][k]`` is the ref of image m's cell k (row-major); target is 1-based."""

    sample_id: int
    cells: tuple[tuple[str, ...], ...]
    captions: tuple[tuple[str, ...], ...]
    caption: str  #: the needle caption the model is asked to find
    target: Optional[tuple[int, int, int]]  #: (index, row, column), 1-based; None when absent

    @property
    def positive(self) -> bool:
        return self.target is not None

    def to_json(self) -> dict:
        return {"sample_id": self.sample_id, "cells": self.cells, "captions": self.captions,
                "caption": self.caption, "target": self.target}

    @classmethod
    def from_json(cls, data: dict) -> "Haystack":
        target = tuple(data["target"]) if data["target"] is not None else None
        return cls(int(data["sample_id"]), tuple(tuple(c) for c in data["cells"]),
                   tuple(tuple(c) for c in data["captions"]), data["caption"], target)  # type: ignore[arg-type]


def build_haystacks(
    items: Sequence[NeedleItem], *, images: int, grid: int, samples: int, negative_fraction: float, seed: int
) -> list[Haystack]:
    """Deterministic samples for ``seed``; see the module docstring for the rules."""
    per_haystack = images * grid * grid
    by_caption: dict[str, list[NeedleItem]] = {}
    for item in items:
        by_caption.setdefault(item.caption, []).append(item)
    captions = sorted(by_caption)
    negatives = round(samples * negative_fraction)
    need = per_haystack + (1 if negatives else 0)
    if len(captions) < need:
        raise ValueError(f"a haystack of {images} image(s) of {grid}x{grid} cells needs {need} distinct captions "
                         f"(one more for negatives), the source has {len(captions)}")
    rng = random.Random(seed)
    positives = samples - negatives
    slots = [(m, k) for m in range(images) for k in range(grid * grid)]
    targets: list[Optional[tuple[int, int]]] = []
    while len(targets) < positives:
        order = slots[:]
        rng.shuffle(order)
        targets += order[: positives - len(targets)]
    targets += [None] * negatives
    rng.shuffle(targets)

    out = []
    for sample_id, slot in enumerate(targets):
        chosen = rng.sample(captions, per_haystack)  # distinct captions within the haystack
        cell_items = [rng.choice(by_caption[c]) for c in chosen]
        if slot is None:
            needle = rng.choice([c for c in captions if c not in set(chosen)])
            target = None
        else:
            m, k = slot
            needle = chosen[m * grid * grid + k]
            target = (m + 1, k // grid + 1, k % grid + 1)
        rows = [cell_items[m * grid * grid : (m + 1) * grid * grid] for m in range(images)]
        out.append(Haystack(
            sample_id,
            tuple(tuple(i.ref for i in row) for row in rows),
            tuple(tuple(i.caption for i in row) for row in rows),
            needle,
            target,
        ))
    return out


def render(haystack: Haystack, paths: dict[str, str], grid: int, cell_size: int) -> list[Image.Image]:
    """The M stitched images of a haystack."""
    stitched = []
    for refs in haystack.cells:
        cells = []
        for ref in refs:
            try:
                with Image.open(paths[ref]) as im:
                    cells.append(im.convert("RGB"))
            except Exception as err:  # PIL raises several types for bad files
                raise ValueError(f"{ref}: unreadable image {paths.get(ref)!r} ({type(err).__name__}: {err})") from err
        stitched.append(stitch(cells, grid, cell_size))
    return stitched


@dataclass
class HaystackSet:
    """The cached samples of one spec and the folder holding their PNGs."""

    spec: HaystackSpec
    haystacks: list[Haystack]
    directory: Path

    def image_paths(self, haystack: Haystack) -> list[Path]:
        return [self.directory / f"{haystack.sample_id:05d}_{m + 1}.png" for m in range(len(haystack.cells))]

    def images(self, haystack: Haystack) -> list[Image.Image]:
        out = []
        for path in self.image_paths(haystack):
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        return out


def read_cached(directory: Path, spec_record: dict) -> Optional[list[Haystack]]:
    """The samples cached in ``directory`` for ``spec_record`` (None when none are); another spec's are refused."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    if data.get("spec") != spec_record:
        raise ValueError(f"{manifest}: cached for {data.get('spec')}, not {spec_record}; delete the folder")
    return [Haystack.from_json(h) for h in data["haystacks"]]


def write_cached(directory: Path, spec_record: dict, format_version: int, built: HaystackSet,
                 images: Iterable[list[Image.Image]]) -> HaystackSet:
    """Write ``built``'s samples and their images (M per sample) to ``directory``, atomically: they are
    written to a temporary sibling that is renamed, so a reader never sees half a set."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        staged = HaystackSet(built.spec, built.haystacks, staging)
        for haystack, pictures in zip(built.haystacks, images):
            for picture, path in zip(pictures, staged.image_paths(haystack)):
                picture.save(path)
        (staging / MANIFEST).write_text(json.dumps({"spec": spec_record, "format": format_version,
                                                    "haystacks": [h.to_json() for h in built.haystacks]}))
        try:
            os.replace(staging, directory)  # another process may have finished first: keep its copy
        except OSError:
            if not (directory / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return HaystackSet(built.spec, built.haystacks, directory)


def load_or_build(spec: HaystackSpec, items: Sequence[NeedleItem], cache_root: Path) -> HaystackSet:
    """The haystacks of ``spec`` from ``cache_root/<key>``, built and written there (atomically) if absent."""
    directory = cache_root / f"{spec.source.split(':')[0].replace('/', '_')}-{spec.key()}"
    cached = read_cached(directory, asdict(spec))
    if cached is not None:
        return HaystackSet(spec, cached, directory)
    haystacks = build_haystacks(items, images=spec.images, grid=spec.grid, samples=spec.samples,
                                negative_fraction=spec.negative_fraction, seed=spec.seed)
    paths = {item.ref: item.path for item in items}
    images = (render(haystack, paths, spec.grid, spec.cell_size) for haystack in haystacks)
    return write_cached(directory, asdict(spec), FORMAT_VERSION, HaystackSet(spec, haystacks, directory), images)

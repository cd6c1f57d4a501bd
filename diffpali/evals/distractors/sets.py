"""Distractor scaling: a target object among k distractors on drawn grids, built once per setting and cached.

A *point* of the benchmark is (N, k, kind, M): M images of N x N cells holding one target object and
k distractors, the other cells blank. ``hard`` distractors share the target's colour or its shape
(never both); ``easy`` ones share neither; with k = 0 the kind is ``none``. A distractor label may
repeat when k exceeds the labels of its kind (hard: 9, easy: 14); the target's label never does.
A negative sample draws the same kind of scene around a label that is then left out, and asks for
it (answer "-1"), so a negative is exactly as hard as a positive. Target slots cycle through all
M*N*N slots in a shuffled order, as MMNeedle's needle cells do.

Samples are :class:`~diffpali.evals.mmneedle.haystack.Haystack` records (blank cells have the ref "blank"
and the caption ""), so MMNeedle's parser, scorer and heatmaps apply unchanged. Every scene is drawn
from (seed, point, sample) on streams no training stage uses, written as PNGs under a folder named
by a hash of every setting, so every model sees the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ...scenes import draw_scene
from ...scenes.scene import ALL_LABELS, Label
from ..mmneedle.haystack import Haystack, HaystackSet, HaystackSpec, read_cached, write_cached

KINDS = ("hard", "easy")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DistractorPoint:
    grid: int  #: N
    distractors: int  #: k
    kind: str  #: hard | easy | none (k = 0)
    images: int = 1  #: M

    def __post_init__(self) -> None:
        if self.distractors + 1 > self.images * self.grid * self.grid:
            raise ValueError(f"{self.distractors} distractors and a target do not fit {self.images} image(s) of "
                             f"{self.grid}x{self.grid} cells")
        if (self.distractors == 0) != (self.kind == "none"):
            raise ValueError(f"kind={self.kind!r} with k={self.distractors}: "
                             f"k = 0 has kind 'none', k > 0 one of {KINDS}")

    @property
    def name(self) -> str:
        return f"N{self.grid}/M{self.images}/{self.kind}/k{self.distractors}"


def points(grids: list[int], counts: list[int], kinds: list[str], images: list[int]) -> list[DistractorPoint]:
    """Every (N, k, kind, M) that fits, k = 0 once per (N, M)."""
    out = []
    for m in images:
        for n in grids:
            for k in counts:
                if k + 1 > m * n * n:
                    continue
                for kind in (["none"] if k == 0 else kinds):
                    out.append(DistractorPoint(n, k, kind, m))
    return out


def distractor_pool(target: Label, kind: str) -> list[Label]:
    """Labels a distractor of ``kind`` may have: sharing the target's colour or shape (hard), or neither (easy)."""
    shape, color = target
    if kind == "hard":
        return [(s, c) for s, c in ALL_LABELS if (s == shape) != (c == color)]
    return [(s, c) for s, c in ALL_LABELS if s != shape and c != color]


def draw_labels(pool: list[Label], count: int, rng: random.Random) -> list[Label]:
    """``count`` labels from ``pool``: distinct while the pool lasts, then repeating."""
    labels: list[Label] = []
    while len(labels) < count:
        labels += rng.sample(pool, min(len(pool), count - len(labels)))
    return labels


def positives_per_point(samples: int, negative_fraction: float) -> int:
    """The samples of a point that hold the target (``exact`` is scored over these): the rest, a share
    ``negative_fraction`` rounded to the nearest (half to even), ask for an absent label."""
    return samples - round(samples * negative_fraction)


def build_samples(point: DistractorPoint, samples: int, negative_fraction: float, seed: int, image_size: int):
    """The haystack records and their images (M per sample) of one point."""
    slots = [(m, r, c) for m in range(point.images) for r in range(point.grid) for c in range(point.grid)]
    order = random.Random(f"distractors/{seed}/{point.name}/slots")
    negatives = samples - positives_per_point(samples, negative_fraction)
    targets: list = []
    while len(targets) < samples - negatives:
        cycle = slots[:]
        order.shuffle(cycle)
        targets += cycle[: samples - negatives - len(targets)]
    targets += [None] * negatives
    order.shuffle(targets)
    records, images = [], []
    for sample_id, target_slot in enumerate(targets):
        rng = random.Random(f"distractors/{seed}/{point.name}/{sample_id}")
        target = rng.choice(ALL_LABELS)
        pool = distractor_pool(target, point.kind) if point.distractors else []
        labels = draw_labels(pool, point.distractors, rng)
        slot = target_slot if target_slot is not None else rng.choice(slots)
        others = rng.sample([s for s in slots if s != slot], point.distractors)
        placed: dict = {}
        if target_slot is not None:
            placed[slot] = target
        for where, label in zip(others, labels):
            placed[where] = label
        scenes = [draw_scene(rng, point.grid, {(r, c): lab for (m, r, c), lab in placed.items() if m == index},
                             image_size) for index in range(point.images)]
        cells = tuple(tuple("blank" if scene.object_in((r, c)) is None else f"drawn:{scene.object_in((r, c)).name}"
                            for r in range(point.grid) for c in range(point.grid)) for scene in scenes)
        captions = tuple(tuple("" if scene.object_in((r, c)) is None else scene.object_in((r, c)).caption
                               for r in range(point.grid) for c in range(point.grid)) for scene in scenes)
        shape, color = target
        answer = None if target_slot is None else (slot[0] + 1, slot[1] + 1, slot[2] + 1)
        records.append(Haystack(sample_id, cells, captions, f"a {color} {shape}", answer))
        images.append([scene.image for scene in scenes])
    return records, images


@dataclass(frozen=True)
class DistractorSetSpec:
    """Everything that decides one point's samples; its hash names the cache folder."""

    point: DistractorPoint
    samples: int
    negative_fraction: float
    seed: int
    image_size: int  #: the model's input side; a cell is image_size // N pixels

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def load_or_build(spec: DistractorSetSpec, cache_root: Path) -> HaystackSet:
    """One point's samples from ``cache_root``, drawn and written there (atomically) when absent."""
    p = spec.point
    haystack_spec = HaystackSpec(source=f"drawn:{p.kind}:k{p.distractors}", images=p.images, grid=p.grid,
                                 cell_size=spec.image_size // p.grid, samples=spec.samples,
                                 negative_fraction=spec.negative_fraction, seed=spec.seed)
    directory = cache_root / f"distractors-{spec.key()}"
    record = json.loads(json.dumps(asdict(spec)))  # as the manifest holds it (tuples become lists)
    cached = read_cached(directory, record)
    if cached is not None:
        return HaystackSet(haystack_spec, cached, directory)
    records, images = build_samples(p, spec.samples, spec.negative_fraction, spec.seed, spec.image_size)
    return write_cached(directory, record, FORMAT_VERSION, HaystackSet(haystack_spec, records, directory), images)

"""POPE probes: balanced yes/no questions about present and absent objects, built once and cached.

For every probed image and every kind of object, ``per_kind`` present objects are asked about
(truth "yes"), each followed by one absent object of the same kind (truth "no"), so every setting
is exactly half present, every even-length prefix too, and the kind of a question never gives its
answer away. The absent objects are drawn in POPE's three settings:

* ``random``: uniformly among the absent objects of that kind;
* ``popular``: the most frequent absent objects of that kind (frequency = images containing it);
* ``adversarial``: the absent objects of that kind that co-occur most often with the image's
  present objects (summed over all of them).

Ties go to the more frequent object, then to the earlier one in the source's object order. The three
settings probe the same images with the same present objects: only the absent half differs.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ...jsonio import write_json_atomic
from .scoring import NO, YES
from .sources import LabelledImage, ObjectSource, check_images

SETTINGS = ("random", "popular", "adversarial")
FORMAT_VERSION = 1  #: bump when the builder changes what a given seed produces
PROBES_FILE = "probes.json"


@dataclass(frozen=True)
class Probe:
    """One question about one image; ``truth`` is "yes" (present) or "no" (absent)."""

    image: str  #: the image's ref
    path: str
    object: str
    kind: str
    question: str
    truth: str


@dataclass(frozen=True)
class ObjectStats:
    """Images containing each object, and each ordered pair of objects, in the counted images."""

    frequency: Counter
    cooccurrence: Counter  #: (a, b) -> images holding both; symmetric

    @classmethod
    def count(cls, images: Sequence[LabelledImage]) -> "ObjectStats":
        frequency: Counter = Counter()
        cooccurrence: Counter = Counter()
        for image in images:
            frequency.update(image.objects)
            cooccurrence.update((a, b) for a in image.objects for b in image.objects if a != b)
        return cls(frequency, cooccurrence)


def draw_absent(setting: str, present: frozenset[str], candidates: Sequence[str], k: int,
                stats: ObjectStats, rng: random.Random) -> list[str]:
    """``k`` objects among ``candidates`` (in source order) that are not ``present``, by ``setting``."""
    absent = [c for c in candidates if c not in present]
    if len(absent) < k:
        raise ValueError(f"{k} absent objects wanted but only {len(absent)} of {list(candidates)} are absent")
    if setting == "random":
        return rng.sample(absent, k)
    order = {c: i for i, c in enumerate(absent)}
    if setting not in ("popular", "adversarial"):
        raise ValueError(f"setting={setting!r}: must be one of {', '.join(SETTINGS)}")

    def rank(candidate: str) -> tuple:
        """Most frequent first (adversarial: most co-occurring with the present objects first), ties in order."""
        frequent = (-stats.frequency[candidate], order[candidate])
        if setting == "popular":
            return frequent
        return (-sum(stats.cooccurrence[(p, candidate)] for p in present), *frequent)

    return sorted(absent, key=rank)[:k]


def build_probes(source: ObjectSource, images: int, seed: int) -> dict[str, list[Probe]]:
    """Probes of ``images`` images (drawn with ``seed``; all when fewer exist) in every setting."""
    order = list(source.probed)
    random.Random(seed).shuffle(order)
    chosen = order[:images]  # a prefix: the probes of fewer images are the first ones of more
    stats = ObjectStats.count(source.counted)
    by_kind: dict[str, list[str]] = {}
    for obj, kind in source.kinds.items():
        by_kind.setdefault(kind, []).append(obj)
    probes: dict[str, list[Probe]] = {s: [] for s in SETTINGS}
    for image in chosen:
        unknown = sorted(image.objects - set(source.kinds))
        if unknown:
            raise ValueError(f"{image.ref}: objects {unknown} are not among the source's objects")
        for kind, candidates in by_kind.items():
            present = sorted(o for o in candidates if o in image.objects)
            if len(present) < source.per_kind:
                raise ValueError(f"{image.ref}: {len(present)} present {kind} object(s), "
                                 f"{source.per_kind} needed per image")
            # one random stream per image, kind and draw: an image's probes never depend on the others
            asked = random.Random(f"{seed}/present/{image.ref}/{kind}").sample(present, source.per_kind)
            for setting in SETTINGS:
                absent = draw_absent(setting, image.objects, candidates, source.per_kind, stats,
                                     random.Random(f"{seed}/{setting}/{image.ref}/{kind}"))
                for yes_obj, no_obj in zip(asked, absent):
                    for obj, truth in ((yes_obj, YES), (no_obj, NO)):
                        probes[setting].append(Probe(image.ref, image.path, obj, kind, source.question(obj), truth))
    return probes


def check_probes(probes: dict[str, list[Probe]], labels: dict[str, frozenset[str]]) -> None:
    """Each truth agrees with the image's labels: no present object is ever asked about as absent."""
    for setting, items in probes.items():
        for probe in items:
            present = probe.object in labels[probe.image]
            if present != (probe.truth == YES):
                raise ValueError(f"POPE probe ({setting}) about {probe.object!r} in {probe.image} says "
                                 f"truth={probe.truth!r}, but the labels hold {sorted(labels[probe.image])}")


def _fingerprint(source: ObjectSource) -> str:
    """A hash of every label the probes depend on, so other labels under the same name never reuse a cache."""
    digest = hashlib.sha256()
    for group in (source.probed, source.counted):
        for image in group:
            digest.update(f"{image.ref}\t{image.path}\t{','.join(sorted(image.objects))}\n".encode())
        digest.update(b"--\n")
    digest.update(json.dumps([source.kinds, source.questions, source.per_kind]).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ProbeSpec:
    """Everything that decides the probes; its hash names the cache file."""

    source: str
    labels: str  #: fingerprint of the source's labels
    images: int
    seed: int

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class ProbeSet:
    spec: ProbeSpec
    probes: dict[str, list[Probe]]
    path: Path  #: the cached file
    questions: dict[str, str]  #: kind -> question template, as asked


def load_or_build(source: ObjectSource, images: int, seed: int, cache_root: Path) -> ProbeSet:
    """The probes for ``source``/``images``/``seed`` from ``cache_root``, built and cached if absent.

    Cached probes are re-checked against the labels, so a stale or edited file cannot score a model.
    """
    spec = ProbeSpec(source.name, _fingerprint(source), images, seed)
    path = cache_root / f"{source.name.split(':')[0].replace('/', '_')}-{spec.key()}" / PROBES_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("spec") != asdict(spec) or data.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: cached for {data.get('spec')}, not {asdict(spec)}; delete the folder")
        probes = {s: [Probe(**p) for p in data["probes"][s]] for s in SETTINGS}
    else:
        probes = build_probes(source, images, seed)
        paths = {p.image: p.path for p in probes["random"]}  # every setting probes the same images
        check_images([LabelledImage(ref, path, frozenset()) for ref, path in paths.items()], source.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"spec": asdict(spec), "format": FORMAT_VERSION,
                                 "probes": {s: [asdict(p) for p in probes[s]] for s in SETTINGS}})
    check_probes(probes, {image.ref: image.objects for image in source.probed})
    return ProbeSet(spec, probes, path, dict(source.questions))

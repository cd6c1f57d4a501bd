"""Images with the objects known to be in them: easy-vqa (embedded) or COCO 2014 val (local files).

A source lists the images that may be probed, the images whose labels give object frequencies and
co-occurrences (for the popular and adversarial settings), the objects that can be asked about
(each of one *kind*; absent objects are drawn from the kind of the present one they pair with) and
a question template per kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...data import easy_vqa

#: POPE's question, verbatim (Li et al. 2023); COCO objects are asked about with it.
POPE_QUESTION = "Is there a {object} in the image?"
#: easy-vqa's own phrasings (in the tiny base's training distribution): a colour is asked about as
#: "a {color} shape", a shape by name.
EASY_VQA_QUESTIONS = {"color": "is there a {object} shape in the image?", "shape": "is there a {object} in the image?"}


@dataclass(frozen=True)
class LabelledImage:
    """One image and every object annotated in it. ``ref`` is stable and names the image in errors."""

    ref: str
    path: str
    objects: frozenset[str]


@dataclass(frozen=True)
class ObjectSource:
    """What probes are built from; ``name`` is recorded with the probes and in metrics.json."""

    name: str
    probed: list[LabelledImage]  #: images that may be asked about
    counted: list[LabelledImage]  #: images whose labels give frequencies and co-occurrences
    kinds: dict[str, str]  #: object -> kind, in a fixed order (ties in the draws follow it)
    questions: dict[str, str]  #: kind -> question template with ``{object}``
    per_kind: int  #: present objects asked per kind and image (and as many absent ones)

    def question(self, obj: str) -> str:
        return self.questions[self.kinds[obj]].format(object=obj)


def easy_vqa_source(split: str, val_fraction: float = 0.1) -> ObjectSource:
    """easy-vqa: each image holds one shape of one colour; probe ``split``, count TRAIN.

    Frequencies come from the training images only (validation carved out, as in fine-tuning), so
    "popular" and "adversarial" mean what the model saw most often, never the test labels.
    """
    def images(of_split: str) -> list[LabelledImage]:
        labels = easy_vqa.image_labels("test" if of_split == "test" else "train")
        wanted = set(easy_vqa.split_image_ids(of_split, val_fraction))
        return [LabelledImage(f"easy_vqa/{of_split}/{i}", easy_vqa.image_path(of_split, i), frozenset(labels[i]))
                for i in sorted(labels) if i in wanted]

    kinds = {**dict.fromkeys(easy_vqa.COLORS, "color"), **dict.fromkeys(easy_vqa.SHAPES, "shape")}
    return ObjectSource(f"easy_vqa/{split}", images(split), images("train"), kinds, dict(EASY_VQA_QUESTIONS), 1)


def coco_source(instances_json: str | Path, images_dir: str | Path, per_image: int = 3) -> ObjectSource:
    """COCO 2014 val instances: an image's objects are the categories of its annotations.

    As in POPE, only images with at least ``per_image`` annotated categories are probed, and
    frequencies and co-occurrences are counted over every image of the file. Image files are checked
    when probes are built (:func:`check_images`), so a missing one fails before any model runs.
    """
    instances_json = Path(instances_json).expanduser()
    try:
        payload = json.loads(instances_json.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{instances_json}: unreadable COCO instances file ({type(err).__name__}: {err})") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
            raise ValueError(f"{instances_json}: not a COCO instances file: it needs a list {key!r} "
                             "(images[].id/file_name, annotations[].image_id/category_id, categories[].id/name)")
    try:
        names = {int(c["id"]): str(c["name"]) for c in payload["categories"]}
        files = {int(im["id"]): str(im["file_name"]) for im in payload["images"]}
        objects: dict[int, set[str]] = {i: set() for i in files}
        for ann in payload["annotations"]:
            image_id, category = int(ann["image_id"]), int(ann["category_id"])
            if image_id not in objects:
                raise ValueError(f"annotation {ann.get('id')} names image_id={image_id}, which images[] does not list")
            if category not in names:
                raise ValueError(f"annotation {ann.get('id')} names category_id={category}, "
                                 "which categories[] does not list")
            objects[image_id].add(names[category])
    except KeyError as err:
        raise ValueError(f"{instances_json}: a COCO instances entry lacks the field {err} "
                         "(images[].id/file_name, annotations[].image_id/category_id, categories[].id/name)") from err
    except ValueError as err:
        raise ValueError(f"{instances_json}: {err}") from err
    images_dir = Path(images_dir).expanduser()
    counted = [LabelledImage(f"coco/val2014/{i}", str(images_dir / files[i]), frozenset(objects[i]))
               for i in sorted(files)]
    probed = [image for image in counted if len(image.objects) >= per_image]
    kinds = dict.fromkeys(names.values(), "object")
    return ObjectSource(f"coco:{instances_json.resolve()}", probed, counted, kinds, {"object": POPE_QUESTION},
                        per_image)


def check_images(images: list[LabelledImage], source: str) -> None:
    """Every image file is there; a missing one is named, with the source that listed it."""
    for image in images:
        if not Path(image.path).is_file():
            raise FileNotFoundError(f"{image.ref}: image file {image.path} is missing (listed by {source})")

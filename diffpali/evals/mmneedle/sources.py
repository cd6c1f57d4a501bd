"""Captioned images a haystack is made of: easy-vqa (embedded) or COCO 2014 val (local files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...data import easy_vqa


@dataclass(frozen=True)
class NeedleItem:
    """One captioned image. ``ref`` is stable across runs and names the image in errors and tables."""

    ref: str
    caption: str
    path: str


def caption_of(color: str, shape: str) -> str:
    """The embedded caption of an easy-vqa image; every image holds one shape of one colour."""
    return f"a {color} {shape}"


def easy_vqa_items(split: str, val_fraction: float = 0.1) -> list[NeedleItem]:
    """Every easy-vqa image of ``split`` whose colour and shape are known, captioned "a {color} {shape}"."""
    labels = easy_vqa.image_labels("test" if split == "test" else "train")
    wanted = set(easy_vqa.split_image_ids(split, val_fraction))
    return [
        NeedleItem(f"easy_vqa/{split}/{image_id}", caption_of(*labels[image_id]), easy_vqa.image_path(split, image_id))
        for image_id in sorted(labels)
        if image_id in wanted
    ]


def coco_items(captions_json: str | Path, images_dir: str | Path) -> list[NeedleItem]:
    """COCO captions: one caption per image, the one with the lowest annotation id (deterministic).

    A file without ``images``/``annotations`` or an image listed but missing on disk is an error
    that names the file, not a silent drop that would change the haystacks.
    """
    captions_json, images_dir = Path(captions_json).expanduser(), Path(images_dir).expanduser()
    try:
        payload = json.loads(captions_json.read_text())
        images = {int(im["id"]): im["file_name"] for im in payload["images"]}
        annotations = payload["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{captions_json}: not a COCO captions file with images[].id/file_name and "
                         f"annotations[].image_id/caption ({type(err).__name__}: {err})") from err
    first: dict[int, tuple[int, str]] = {}
    for ann in annotations:
        image_id, ann_id = int(ann["image_id"]), int(ann["id"])
        if image_id in images and (image_id not in first or ann_id < first[image_id][0]):
            first[image_id] = (ann_id, " ".join(str(ann["caption"]).split()))
    items = []
    for image_id in sorted(first):
        path = images_dir / images[image_id]
        if not path.is_file():
            raise FileNotFoundError(f"coco/val2014 image_id={image_id}: {path} is missing (listed in {captions_json})")
        items.append(NeedleItem(f"coco/val2014/{image_id}", first[image_id][1], str(path)))
    return items

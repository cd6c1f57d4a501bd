"""Batches for PaliGemma: one collate for training (prefix + suffix) and generation (prefix only)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from .schema import BadRecordError, RecordRef, training_target

IGNORE_INDEX = -100


def load_rgb(image: Any, ref: RecordRef | str) -> Image.Image:
    """Open an image (PIL image or path) as RGB; an unreadable file raises :class:`BadRecordError` naming its record."""
    try:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, dict):  # datasets' undecoded Image feature
            image = image.get("path") or image.get("bytes")
        if isinstance(image, bytes):  # embedded in parquet/arrow files
            image = io.BytesIO(image)
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except Exception as err:  # PIL raises several types for truncated or corrupt files
        raise BadRecordError(f"{ref}: unreadable image ({type(err).__name__}: {err})") from err


def record_image(examples: "VQAExamples", ref: RecordRef, max_side: int = 224) -> Image.Image:
    """The image of one record, shrunk to at most ``max_side`` pixels a side (for W&B tables)."""
    image = load_rgb(examples.dataset[ref.index]["image"], ref)
    image.thumbnail((max_side, max_side))
    return image


@dataclass
class PaliGemmaCollator:
    """Turns examples into model inputs with the real ``PaliGemmaProcessor``.

    Each example has ``image`` (or a list ``images``) and ``prefix`` and, for training, ``suffix``. The processor
    lays out
    ``<image>*N <bos> prefix \\n [suffix <eos>]`` and returns ``token_type_ids`` (0 on the prefix,
    1 on the suffix), which the model needs for PaliGemma's prefix-LM mask: without them the mask
    silently becomes causal over the image and prompt. Labels cover the suffix only.
    """

    processor: Any
    train: bool = True
    dataset_name: str = "data"
    #: error: an unreadable image raises, naming its record; skip: the example is left out of the
    #: batch and its message listed in ``batch["skipped"]`` (counted by the training module)
    on_bad_record: str = "error"

    def __call__(self, examples: Sequence[dict]) -> dict[str, Any]:
        skipped: list[str] = []
        if self.on_bad_record == "skip":
            examples, skipped = self._readable(examples)
            if not examples:
                return {"meta": [], "skipped": skipped}
        batch = self._collate(examples)
        if self.on_bad_record == "skip":
            batch["skipped"] = skipped
        return batch

    def _readable(self, examples: Sequence[dict]) -> tuple[list[dict], list[str]]:
        """The examples whose images open (decoded here once, so collate does not open them again)."""
        kept, skipped = [], []
        for e in examples:
            ref = e.get("ref", self.dataset_name)
            try:
                if "images" in e:
                    kept.append({**e, "images": [load_rgb(im, ref) for im in e["images"]]})
                else:
                    kept.append({**e, "image": load_rgb(e["image"], ref)})
            except BadRecordError as err:
                skipped.append(str(err))
        return kept, skipped

    def _collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        image_token = self.processor.image_token
        if all("images" in e for e in examples):  # several images per example (MMNeedle with M > 1)
            images: list = [[load_rgb(im, e.get("ref", self.dataset_name)) for im in e["images"]] for e in examples]
            texts = [image_token * len(e["images"]) + e["prefix"] for e in examples]
        else:
            images = [load_rgb(e["image"], e.get("ref", self.dataset_name)) for e in examples]
            texts = [image_token + e["prefix"] for e in examples]
        kwargs: dict[str, Any] = {"images": images, "text": texts, "return_tensors": "pt", "padding": "longest"}
        if self.train:
            kwargs["suffix"] = [e["suffix"] for e in examples]
        batch = dict(self.processor(**kwargs))
        batch.pop("labels", None)  # rebuilt below; the processor's version also labels padding
        if "token_type_ids" not in batch:
            raise RuntimeError("processor returned no token_type_ids: PaliGemma's prefix-LM mask would be lost")
        if self.train:
            labels = batch["input_ids"].clone()
            labels[(batch["token_type_ids"] == 0) | (batch["attention_mask"] == 0)] = IGNORE_INDEX
            batch["labels"] = labels
        batch["meta"] = [{k: v for k, v in e.items() if k not in ("image", "images", "prefix")} for e in examples]
        return batch


class VQAExamples(torch.utils.data.Dataset):
    """A VQA-schema dataset seen as (image, prefix, suffix) examples with metadata."""

    def __init__(self, dataset, prompt: str, name: str, split: str):
        # Images stay undecoded until collate, so a bad file names its record there.
        self.dataset = dataset.cast_column("image", dataset.features["image"].__class__(decode=False))
        self.prompt = prompt
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        return {
            "image": row["image"],
            "prefix": self.prompt.format(question=row["question"]),
            "suffix": training_target(row["answers"]),
            "answers": row["answers"],
            "category": row["category"],
            "question": row["question"],
            "question_id": row["question_id"],
            "ref": RecordRef(self.name, self.split, index, row["question_id"]),
        }


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch (not its metadata) to a device."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, Any], with_labels: bool = True) -> dict[str, torch.Tensor]:
    """The tensors PaliGemma's forward takes."""
    keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values") + (("labels",) if with_labels else ())
    return {k: batch[k] for k in keys if k in batch}

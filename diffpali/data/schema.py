"""The one record schema every VQA source is turned into (VQAv2's), and the checks on it."""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from datasets import Features, Image, Value
from datasets import Sequence as HFSequence
from PIL import Image as PILImage

NUM_ANSWERS = 10  #: VQAv2 has ten human answers per question

#: Columns of a VQA dataset. ``category`` is the breakdown reported next to the overall score:
#: VQAv2's answer_type (yes/no, number, other), or easy-vqa's question kind (yes/no, color, shape).
VQA_FEATURES = Features(
    {
        "question_id": Value("int64"),
        "image_id": Value("int64"),
        "image": Image(),
        "question": Value("string"),
        "answers": HFSequence(Value("string")),
        "answer_type": Value("string"),
        "category": Value("string"),
    }
)


class BadRecordError(ValueError):
    """A dataset record cannot be used. The message names the dataset, split, index and problem."""


@dataclass  # not frozen: Lightning rebuilds dataclasses in a batch when moving it to the device
class RecordRef:
    """Where a record lives, for error messages."""

    dataset: str
    split: str
    index: int
    question_id: Any = None

    def __str__(self) -> str:
        qid = f", question_id={self.question_id}" if self.question_id is not None else ""
        return f"{self.dataset}[{self.split}] record {self.index}{qid}"


def image_problem(image: Any) -> str | None:
    """What is wrong with an image (a path, ``datasets``' ``{"path", "bytes"}`` or a PIL image), or None.

    Opens the file and runs PIL's ``verify`` (PNG chunk checksums, truncation) without decoding
    pixels, so a whole split is checked in seconds before training starts.
    """
    if image is None or isinstance(image, PILImage.Image):
        return None
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
        return f"image file not found: {image}"
    try:
        with PILImage.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            opened.verify()
    except Exception as err:  # PIL raises several types for truncated or corrupt files
        return f"unreadable image ({type(err).__name__}: {err})"
    return None


def record_problem(question: Any, answers: Any, image: Any, check_image: bool = False) -> str | None:
    """Return what is wrong with a record, or None if nothing is.

    Question and answers are always checked; an image path must exist; with ``check_image`` the
    image is also opened and verified (:func:`image_problem`).
    """
    if not isinstance(question, str) or not question.strip():
        return "empty question"
    if not answers or not any(isinstance(a, str) and a.strip() for a in answers):
        return "no answers"
    if check_image:
        return image_problem(image)
    if isinstance(image, str) and not os.path.isfile(image):
        return f"image file not found: {image}"
    return None


def check_records(
    rows: Iterable[tuple[Any, Any, Any]],
    dataset: str,
    split: str,
    on_bad_record: str,
    ids: Sequence[Any] | None = None,
    check_images: bool = False,
) -> tuple[list[int], list[str]]:
    """Check (question, answers, image) rows before training starts.

    Returns the indices to keep and one message per skipped record. With ``on_bad_record="error"``
    the first bad record raises :class:`BadRecordError` naming it (``ids`` adds its question id).
    Images shared by several records (easy-vqa asks several questions per image) are checked once.
    """
    keep, skipped = [], []
    image_verdicts: dict[str, str | None] = {}
    for index, (question, answers, image) in enumerate(rows):
        problem = record_problem(question, answers, None)
        if problem is None and isinstance(image, str):
            if image not in image_verdicts:
                image_verdicts[image] = record_problem("q", ["a"], image, check_images)
            problem = image_verdicts[image]
        elif problem is None:
            problem = record_problem(question, answers, image, check_images)
        if problem is None:
            keep.append(index)
            continue
        message = f"{RecordRef(dataset, split, index, None if ids is None else ids[index])}: {problem}"
        if on_bad_record == "error":
            raise BadRecordError(message + " (set data.on_bad_record=skip to skip such records)")
        skipped.append(message)
    return keep, skipped


def training_target(answers: Sequence[str]) -> str:
    """The answer a model is trained to produce: the most frequent one, first on ties."""
    cleaned = [a.strip() for a in answers if isinstance(a, str) and a.strip()]
    counts = Counter(cleaned)
    best = max(counts.values())
    return next(a for a in cleaned if counts[a] == best)

"""The one record schema every VQA source is turned into (VQAv2's), and the checks on it."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from datasets import Features, Image, Sequence as HFSequence, Value

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


def record_problem(question: Any, answers: Any, image_path: str | None) -> str | None:
    """Return what is wrong with a record's cheap-to-check fields, or None if nothing is."""
    if not isinstance(question, str) or not question.strip():
        return "empty question"
    if not answers or not any(isinstance(a, str) and a.strip() for a in answers):
        return "no answers"
    if image_path is not None and not os.path.isfile(image_path):
        return f"image file not found: {image_path}"
    return None


def check_records(
    rows: Iterable[tuple[Any, Any, str | None]], dataset: str, split: str, on_bad_record: str
) -> tuple[list[int], list[str]]:
    """Check (question, answers, image_path) rows before training starts.

    Returns the indices to keep and one message per skipped record. With ``on_bad_record="error"``
    the first bad record raises :class:`BadRecordError` naming it.
    """
    keep, skipped = [], []
    for index, (question, answers, image_path) in enumerate(rows):
        problem = record_problem(question, answers, image_path)
        if problem is None:
            keep.append(index)
            continue
        message = f"{RecordRef(dataset, split, index)}: {problem}"
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

"""easy-vqa (PyPI package ``easy-vqa``) in the VQAv2 schema.

easy-vqa has 4000 train / 1000 test images (64x64, one coloured shape each) and one answer per
question. The answer is repeated ten times so the official VQAv2 scorer applies unchanged (with
ten identical answers it reduces to exact match after whitespace stripping).

It has no validation split, so one is carved out of TRAIN *by image*: a fixed permutation of the
train image ids (seed below) puts ``val_fraction`` of the images, and all their questions, in
validation. Nothing is ever tuned on the test split.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

import easy_vqa as easy_vqa_package
import numpy as np
from datasets import Dataset

from .schema import NUM_ANSWERS, VQA_FEATURES, check_records

log = logging.getLogger(__name__)

SPLIT_SEED = 20240711  #: fixes which train images form the validation split
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def question_category(answer: str) -> str:
    """easy-vqa's three question kinds, from the answer vocabulary."""
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    raise ValueError(f"unknown easy-vqa answer {answer!r}")


@dataclass(frozen=True)
class EasyVQASplit:
    """Raw columns of one easy-vqa split."""

    questions: list[str]
    answers: list[str]
    image_ids: list[int]
    image_paths: dict[int, str]


@lru_cache(maxsize=2)
def _raw(source_split: str) -> EasyVQASplit:
    if source_split == "train":
        q, a, ids = easy_vqa_package.get_train_questions()
        paths = easy_vqa_package.get_train_image_paths()
    elif source_split == "test":
        q, a, ids = easy_vqa_package.get_test_questions()
        paths = easy_vqa_package.get_test_image_paths()
    else:  # pragma: no cover - guarded by callers
        raise ValueError(source_split)
    return EasyVQASplit(list(q), list(a), [int(i) for i in ids], {int(k): v for k, v in paths.items()})


def validation_image_ids(val_fraction: float) -> set[int]:
    """Train image ids held out for validation (deterministic)."""
    ids = np.array(sorted(_raw("train").image_paths))
    perm = np.random.default_rng(SPLIT_SEED).permutation(ids)
    return {int(i) for i in perm[: int(round(val_fraction * len(ids)))]}


def split_image_ids(split: str, val_fraction: float = 0.1) -> list[int]:
    """Image ids of ``train`` (minus validation), ``validation`` or ``test``."""
    if split == "test":
        return sorted(_raw("test").image_paths)
    held_out = validation_image_ids(val_fraction)
    all_ids = sorted(_raw("train").image_paths)
    if split == "validation":
        return [i for i in all_ids if i in held_out]
    if split == "train":
        return [i for i in all_ids if i not in held_out]
    raise ValueError(f"easy_vqa split {split!r}: must be one of train, validation, test")


def image_path(split: str, image_id: int) -> str:
    return _raw("test" if split == "test" else "train").image_paths[image_id]


def load_easy_vqa(
    split: str,
    val_fraction: float = 0.1,
    limit: int | None = None,
    on_bad_record: str = "error",
    check_images: bool = False,
    skipped_out: list[str] | None = None,
) -> Dataset:
    """One split as a ``datasets.Dataset`` with :data:`VQA_FEATURES` (images decoded lazily).

    Records are checked first (:func:`check_records`); skipped ones are appended to ``skipped_out``.
    """
    source = "test" if split == "test" else "train"
    raw = _raw(source)
    wanted = set(split_image_ids(split, val_fraction))
    index = [i for i, image_id in enumerate(raw.image_ids) if image_id in wanted]
    if limit is not None:
        index = index[:limit]
    rows = [(raw.questions[i], [raw.answers[i]], raw.image_paths.get(raw.image_ids[i], "")) for i in index]
    keep, skipped = check_records(rows, "easy_vqa", split, on_bad_record, ids=index, check_images=check_images)
    if skipped_out is not None:
        skipped_out.extend(skipped)
    if skipped:
        log.warning("easy_vqa[%s]: skipped %d bad records, first: %s", split, len(skipped), skipped[0])
    index = [index[k] for k in keep]
    columns = {
        "question_id": index,
        "image_id": [raw.image_ids[i] for i in index],
        "image": [raw.image_paths[raw.image_ids[i]] for i in index],
        "question": [raw.questions[i] for i in index],
        "answers": [[raw.answers[i]] * NUM_ANSWERS for i in index],
        "answer_type": ["yes/no" if raw.answers[i] in ("yes", "no") else "other" for i in index],
        "category": [question_category(raw.answers[i]) for i in index],
    }
    dataset = Dataset.from_dict(columns, features=VQA_FEATURES)
    dataset.info.description = f"easy_vqa/{split}"
    return dataset


def image_labels(source_split: str) -> dict[int, tuple[str, str]]:
    """(color, shape) of every image whose questions reveal both, read off the question set."""
    raw = _raw(source_split)
    color: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, image_id in zip(raw.questions, raw.answers, raw.image_ids):
        if a in COLORS and ("color" in q):
            color[image_id] = a
            named = [s for s in SHAPES if s in q]
            if named:
                shape[image_id] = named[0]
        elif a in SHAPES and q.startswith("what shape"):
            shape[image_id] = a
    return {i: (color[i], shape[i]) for i in sorted(color) if i in shape}


def question_only_baseline(split: str = "test") -> dict[str, float]:
    """Accuracy of answering from the question alone: each train question's most frequent answer.

    This is the bar a model that ignores the image clears on easy-vqa; the majority answer is lower.
    """
    train = _raw("train")
    by_question: dict[str, Counter] = defaultdict(Counter)
    for question, answer in zip(train.questions, train.answers):
        by_question[question][answer] += 1
    fallback = Counter(train.answers).most_common(1)[0][0]
    raw = _raw("test" if split == "test" else "train")
    hits: dict[str, list[int]] = defaultdict(list)
    for question, answer in zip(raw.questions, raw.answers):
        guess = by_question[question].most_common(1)[0][0] if question in by_question else fallback
        hits["overall"].append(int(guess == answer))
        hits[question_category(answer)].append(int(guess == answer))
    return {k: sum(v) / len(v) for k, v in hits.items()}

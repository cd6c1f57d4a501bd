"""VQAv2 from a Hub id or a local directory, in the shared VQA schema.

Accepted inputs: a Hub dataset id (``load_dataset``), a directory saved with ``save_to_disk``, or a
directory holding ``{split}*.parquet`` / ``{split}*.arrow`` files (at its top or, as the Hub lays them
out, in ``data/{split}-*``). Answers may be ten strings or
ten ``{"answer": ...}`` dicts (the Hub's layout).

``minival`` is not a file split: it is a fixed slice of TRAIN images (each image in or out by a
hash of its id, so the slice does not depend on row order or on limits), held out of training
when it serves as validation; the reported split (VQAv2 validation) is then never tuned on.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset, load_from_disk
from datasets import Image as ImageFeature

from .schema import VQA_FEATURES, check_records

log = logging.getLogger(__name__)


def _answers(value: Any) -> list[str]:
    if not value:
        return []
    return [a["answer"] if isinstance(a, dict) else str(a) for a in value]


def _read(path: str, split: str) -> Dataset:
    local = Path(path).expanduser()
    if not local.exists():
        return load_dataset(path, split=split)
    if (local / "dataset_dict.json").exists() or (local / "dataset_info.json").exists():
        loaded = load_from_disk(str(local))
        return loaded[split] if hasattr(loaded, "keys") else loaded
    for kind in ("parquet", "arrow"):  # top level, or data/ as in the Hub's layout (data/train-00000-of-00066.parquet)
        patterns = (f"{split}*.{kind}", f"data/{split}-*.{kind}")
        files = sorted(str(p) for pattern in patterns for p in local.glob(pattern))
        if files:
            return load_dataset(kind, data_files={split: files}, split=split)
    raise FileNotFoundError(f"data.path={path!r}: no {split}*.parquet or {split}*.arrow files "
                            f"(nor data/{split}-*) and no saved dataset")


MINIVAL = "minival"
MINIVAL_SALT = "diffpali-minival"  #: fixes which train images form minival


def in_minival(image_id: int | str, fraction: float) -> bool:
    """Whether a train image belongs to minival: a stable hash of its id, not its position."""
    digest = hashlib.sha256(f"{MINIVAL_SALT}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _select_images(raw: Dataset, keep_minival: bool, fraction: float, path: str) -> Dataset:
    if "image_id" not in raw.column_names:
        raise ValueError(f"vqav2 at {path!r}: minival needs an image_id column (questions of one image stay together)")
    rows = [i for i, image_id in enumerate(raw["image_id"]) if in_minival(image_id, fraction) == keep_minival]
    return raw.select(rows)


def load_vqav2(
    path: str,
    split: str,
    limit: int | None = None,
    on_bad_record: str = "error",
    check_images: bool = False,
    skipped_out: list[str] | None = None,
    minival_fraction: float = 0.02,
    hold_out_minival: bool = False,
) -> Dataset:
    """One split as a ``datasets.Dataset`` with :data:`VQA_FEATURES`; skipped records go to ``skipped_out``.

    ``minival``: ``split="minival"`` reads the train images in minival; ``hold_out_minival`` drops them
    from the split read (train, when minival is the validation split).
    """
    if split == MINIVAL:
        raw = _select_images(_read(path, "train"), True, minival_fraction, path)
    else:
        raw = _read(path, split)
        if hold_out_minival:
            raw = _select_images(raw, False, minival_fraction, path)
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    missing = {"image", "question", "answers"} - set(raw.column_names)
    if missing:
        raise ValueError(f"vqav2 at {path!r} split {split!r} lacks columns {sorted(missing)}; has {raw.column_names}")
    answers = [_answers(a) for a in raw["answers"]]
    if isinstance(raw.features["image"], ImageFeature):
        # undecoded {"path", "bytes"}: checked and passed on without decoding every picture here
        raw = raw.cast_column("image", ImageFeature(decode=False))
    ids = raw["question_id"] if "question_id" in raw.column_names else None
    keep, skipped = check_records(zip(raw["question"], answers, raw["image"]), "vqav2", split, on_bad_record,
                                  ids=ids, check_images=check_images)
    if skipped_out is not None:
        skipped_out.extend(skipped)
    if skipped:
        log.warning("vqav2[%s]: skipped %d bad records, first: %s", split, len(skipped), skipped[0])
    raw = raw.select(keep)
    answers = [answers[k] for k in keep]
    answer_type = raw["answer_type"] if "answer_type" in raw.column_names else ["other"] * len(raw)
    columns = {
        "question_id": raw["question_id"] if "question_id" in raw.column_names else keep,
        "image_id": raw["image_id"] if "image_id" in raw.column_names else keep,
        "image": raw["image"],  # undecoded: collate opens each image and names its record if it fails
        "question": raw["question"],
        "answers": answers,
        "answer_type": answer_type,
        "category": answer_type,
    }
    return Dataset.from_dict(columns, features=VQA_FEATURES)

"""VQA scoring by batched generation: one loop for every model, variant and caller."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .data.collate import PaliGemmaCollator, VQAExamples, record_image, to_device
from .generation import generate_answers
from .metrics import VQAAccuracy

#: Breakdown categories by dataset; easy-vqa reports its shape and colour questions separately.
CATEGORIES = {"easy_vqa": ("yes/no", "color", "shape"), "vqav2": ("yes/no", "number", "other")}


@dataclass
class VQAResult:
    """Scores (fractions in [0, 1]) with the scoring convention they were computed under."""

    convention: str
    overall: float
    by_category: dict[str, float]
    count: int
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        """Flat metrics named as training names them (``test/vqa_accuracy_official/color``).

        The convention is part of every key, so no number is read under the wrong rule; a category
        with no questions is None (not 0, which would read as a score).
        """
        key = f"{prefix}vqa_accuracy_{self.convention}"
        out: dict[str, Any] = {key: self.overall, f"{prefix}count": self.count}
        for name, value in self.by_category.items():
            out[f"{key}/{name}"] = None if math.isnan(value) else value
        return out


def metric_from(values: dict[str, torch.Tensor], categories: Sequence[str], convention: str) -> VQAResult:
    return VQAResult(
        convention=convention,
        overall=float(values["overall"]),
        by_category={c: float(values[c]) for c in categories},
        count=int(values["count"]),
    )


@torch.no_grad()
def score_vqa(
    model: Any,
    processor: Any,
    dataset,
    *,
    dataset_name: str,
    split: str,
    prompt: str,
    batch_size: int,
    max_new_tokens: int,
    convention: str = "official",
    device: torch.device | str = "cpu",
    keep_predictions: int = 0,
) -> VQAResult:
    """Generate an answer for every record of ``dataset`` and score it with the VQA accuracy."""
    categories = CATEGORIES.get(dataset_name, CATEGORIES["vqav2"])
    metric = VQAAccuracy(convention=convention, answer_types=categories)
    examples = VQAExamples(dataset, prompt, dataset_name, split)
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=PaliGemmaCollator(processor, train=False, dataset_name=dataset_name),
    )
    was_training = model.training
    model.eval()
    kept: list[dict[str, Any]] = []
    from .metrics import vqa_accuracy

    for batch in loader:
        meta = batch["meta"]
        predictions = generate_answers(model, processor, to_device(batch, device), max_new_tokens)
        answers = [m["answers"] for m in meta]
        metric.update(predictions, answers, [m["category"] for m in meta])
        for m, p in zip(meta, predictions):
            if len(kept) >= keep_predictions:
                break
            kept.append(
                {
                    "image": record_image(examples, m["ref"]),  # what the model saw, for the W&B table
                    "question_id": m["question_id"],
                    "question": m["question"],
                    "prediction": p,
                    "answers": m["answers"],
                    "score": vqa_accuracy(p, m["answers"], convention=convention),
                }
            )
    model.train(was_training)
    result = metric_from(metric.compute(), categories, convention)
    result.predictions = kept
    return result

"""``evaluate.py eval=vqa`` and the VQA scoring loop (batched generation, one scorer) every caller shares,
with the lines a run ends on and the rows of its W&B prediction table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import EvaluateConfig
from ..data.collate import PaliGemmaCollator, VQAExamples, record_image, to_device
from ..data.datamodule import load_split
from ..data.easy_vqa import question_only_baseline
from ..generation import generate_answers
from ..metrics import VQAAccuracy, categories_for, vqa_accuracy
from .base import EvalOutcome, EvalTable, batch_size, max_new_tokens

CONVENTION_NAMES = {"official": "official VQAv2", "simple": "the paper's simple min(n/3, 1)"}
PREDICTION_COLUMNS = ["image", "question_id", "question", "prediction", "answers", "score"]


@dataclass
class VQAResult:
    """Scores (fractions in [0, 1]) with the scoring convention they were computed under."""

    convention: str
    overall: float
    by_category: dict[str, float]
    count: int
    predictions: list[dict[str, Any]] = field(default_factory=list)
    scores: list[tuple[int, float]] = field(default_factory=list)  #: (question id, score) of every question

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
    categories = categories_for(dataset_name)
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
    scores: list[tuple[int, float]] = []
    for batch in loader:
        meta = batch["meta"]
        predictions = generate_answers(model, processor, to_device(batch, device), max_new_tokens)
        metric.update(predictions, [record["answers"] for record in meta], [record["category"] for record in meta])
        scores += [(int(record["question_id"]), vqa_accuracy(prediction, record["answers"], convention=convention))
                   for record, prediction in zip(meta, predictions)]
        for record, prediction in zip(meta, predictions):
            if len(kept) >= keep_predictions:
                break
            kept.append(
                {
                    "image": record_image(examples, record["ref"]),  # what the model saw, for the W&B table
                    "question_id": record["question_id"],
                    "question": record["question"],
                    "prediction": prediction,
                    "answers": record["answers"],
                    "score": vqa_accuracy(prediction, record["answers"], convention=convention),
                }
            )
    model.train(was_training)
    values = metric.compute()
    return VQAResult(
        convention=convention,
        overall=float(values["overall"]),
        by_category={category: float(values[category]) for category in categories},
        count=int(values["count"]),
        predictions=kept,
        scores=scores,
    )


def run_vqa(cfg: EvaluateConfig, model: Any, processor: Any, device: str, out: Path) -> EvalOutcome:
    split = cfg.eval.split
    limit = cfg.eval.limit or (cfg.data.test_limit if split == "test" else cfg.data.val_limit)
    result = score_vqa(
        model,
        processor,
        load_split(cfg.data, split, limit),
        dataset_name=cfg.data.name,
        split=split,
        prompt=cfg.data.prompt,
        batch_size=batch_size(cfg),
        max_new_tokens=max_new_tokens(cfg),
        convention=cfg.eval.convention,
        device=device,
        keep_predictions=cfg.logger.log_predictions,
    )
    metrics = {"split": split, "convention": result.convention, **result.as_dict(f"{split}/")}
    table = EvalTable(PREDICTION_COLUMNS, prediction_rows(result.predictions))
    return EvalOutcome(metrics, score_summary(metrics, split, cfg.data.name, out), {f"{split}/predictions": table},
                       items={f"{split}/vqa_accuracy_{result.convention}": result.scores})


def prediction_rows(predictions: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows of a W&B prediction table: the image the model saw beside its question, answer and score."""
    return [[p["image"], p["question_id"], p["question"], p["prediction"], ", ".join(sorted(set(p["answers"]))),
             p["score"]] for p in predictions]


def score_summary(metrics: dict[str, Any], split: str, dataset_name: str, out: Path,
                  contents: str = "metrics.json") -> str:
    """The lines a user reads at the end of a run: score, breakdown, baseline, where things are."""
    key = f"{split}/vqa_accuracy_{metrics['convention']}"
    categories = [k[len(key) + 1 :] for k in metrics if k.startswith(key + "/")]
    parts = [f"{c} {metrics[f'{key}/{c}']:.3f}" for c in categories if metrics[f"{key}/{c}"] is not None]
    lines = [f"VQA accuracy ({dataset_name} {split}, {CONVENTION_NAMES[metrics['convention']]} convention): "
             f"{metrics[key]:.3f}  [{', '.join(parts)}]"]
    if dataset_name == "easy_vqa" and split == "test":
        base = question_only_baseline("test")
        lines.append("question-only baseline (full test split, answers from the question alone): "
                     f"{base['overall']:.3f}  "
                     f"[yes/no {base['yes/no']:.3f}, color {base['color']:.3f}, shape {base['shape']:.3f}]")
    lines.append(f"run directory: {out}  ({contents})")
    return "\n".join(lines)

"""The LightningModule: LoRA fine-tuning on the processor's labels, scoring by greedy generation.

It knows nothing of how attention is computed; it receives a ready peft-wrapped model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import lightning as L
import torch

from .config import OptimConfig
from .data.collate import model_inputs
from .evaluation import CATEGORIES
from .generation import generate_answers
from .metrics import VQAAccuracy, vqa_accuracy
from .surgery import lambda_values


def warmup_cosine(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine to 0 (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class DiffPaliModule(L.LightningModule):
    """Holds the peft-wrapped PaliGemma and its processor.

    Checkpoints keep only trainable tensors (LoRA weights and new variant modules); the frozen base
    is reloaded from its source, so a 3B model's checkpoint stays megabytes, not gigabytes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        optim: OptimConfig,
        dataset_name: str = "easy_vqa",
        max_new_tokens: int = 8,
        convention: str = "official",
        log_predictions: int = 32,
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        self.optim = optim
        self.max_new_tokens = max_new_tokens
        self.convention = convention
        self.categories: Sequence[str] = CATEGORIES.get(dataset_name, CATEGORIES["vqav2"])
        self.val_metric = VQAAccuracy(convention=convention, answer_types=self.categories)
        self.test_metric = VQAAccuracy(convention=convention, answer_types=self.categories)
        self.log_predictions = log_predictions
        self.test_predictions: list[dict[str, Any]] = []
        self.strict_loading = False  # checkpoints hold trainable tensors only

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(**model_inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["meta"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(batch["meta"]))
        if self.global_step % self.trainer.log_every_n_steps == 0:
            # The paper's failure mode is lambda collapsing to 0 or 1: watch every layer's value.
            for name, value in lambda_values(self.model).items():
                self.log(f"lambda/{name}", value, batch_size=len(batch["meta"]))

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if self.optim.name == "adamw" else torch.optim.Adam
        optimizer = cls(
            params,
            lr=self.optim.lr,
            weight_decay=self.optim.weight_decay,
            betas=tuple(self.optim.betas),
            eps=self.optim.eps,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, self.optim.warmup_steps, self.optim.schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- evaluation
    def _score(self, batch: dict[str, Any], metric: VQAAccuracy) -> list[str]:
        predictions = generate_answers(self.model, self.processor, batch, self.max_new_tokens)
        meta = batch["meta"]
        metric.update(predictions, [m["answers"] for m in meta], [m["category"] for m in meta])
        return predictions

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        predictions = self._score(batch, self.test_metric)
        for m, p in zip(batch["meta"], predictions):
            if len(self.test_predictions) < self.log_predictions:
                self.test_predictions.append(
                    {
                        "question_id": m["question_id"],
                        "image": m["ref"],
                        "question": m["question"],
                        "prediction": p,
                        "answers": m["answers"],
                        "score": vqa_accuracy(p, m["answers"], convention=self.convention),
                    }
                )

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def _log_metric(self, stage: str, metric: VQAAccuracy) -> None:
        values = metric.compute()
        # The convention is part of the key, so no number is ever read under the wrong rule.
        self.log(f"{stage}/vqa_accuracy_{self.convention}", values["overall"], prog_bar=True, sync_dist=False)
        for name in self.categories:
            value = values[name]
            if not torch.isnan(value):
                self.log(f"{stage}/vqa_accuracy_{self.convention}/{name}", value, sync_dist=False)
        metric.reset()

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["diffpali_trainable_keys"] = sorted(trainable)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        found = set(checkpoint["state_dict"])
        if expected != found:
            missing, extra = sorted(expected - found)[:3], sorted(found - expected)[:3]
            raise ValueError(
                "checkpoint does not match this model's trainable parameters "
                f"(missing e.g. {missing}, unexpected e.g. {extra}): check attn, ffn and lora settings"
            )

"""The LightningModule: LoRA fine-tuning on the processor's labels, scoring by greedy generation.

It knows nothing of how attention is computed; it receives a ready peft-wrapped model.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import lightning as L
import torch

from .checkpointing import SIGNATURE_KEY, check_signature
from .config import OptimConfig
from .data.collate import model_inputs
from .generation import generate_answers
from .metrics import VQAAccuracy, categories_for, vqa_accuracy
from .model import frozen_variant_names, new_attention_names
from .nonfinite import NonFiniteError, first_nonfinite_grad, nonfinite_report
from .strategies import shards_parameters
from .surgery import attention_transfer, lambda_values

log = logging.getLogger(__name__)


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

    Checkpoints keep only trainable tensors (LoRA weights and new variant modules) and the frozen
    copies a variant made (diff_dup's Q2/K2); the base is reloaded from its source, so a 3B model's
    checkpoint stays megabytes, not gigabytes. ``signature`` (:func:`~diffpali.checkpointing.run_signature`)
    is written into each checkpoint and checked when one is loaded.

    A NaN or inf loss or gradient is caught before the optimiser applies it: ``on_nonfinite=stop``
    raises :class:`~diffpali.nonfinite.NonFiniteError` (step, batch ids, every layer's lambda), so
    the last checkpoint stays the last good one; ``skip`` drops the update and counts it.
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
        on_nonfinite: str = "stop",
        signature: Optional[dict[str, Any]] = None,
        transfer_steps: int = 0,
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        self.optim = optim
        self.max_new_tokens = max_new_tokens
        self.convention = convention
        self.categories: Sequence[str] = categories_for(dataset_name)
        self.val_metric = VQAAccuracy(convention=convention, answer_types=self.categories)
        self.test_metric = VQAAccuracy(convention=convention, answer_types=self.categories)
        self.log_predictions = log_predictions
        self.test_predictions: list[dict[str, Any]] = []
        self.strict_loading = False  # checkpoints hold trainable tensors only
        self.on_nonfinite = on_nonfinite
        self.signature = signature
        self.skipped_records = 0  #: examples left out of training batches (unreadable images, on_bad_record=skip)
        self.skipped_steps = 0  #: optimiser steps dropped for a non-finite loss or gradient (on_nonfinite=skip)
        self._step_ids: list[Any] = []  # question ids since the last optimiser step
        self._step_loss_finite = True
        self._step_skipped = False  # the update just dropped must not advance the learning-rate schedule
        self._drop_update = False  # some rank's batch was wholly unreadable: every rank drops this update
        self._has_lambda: Optional[bool] = None  # known after the first look: whether any layer has a lambda
        self.transfer_steps = transfer_steps  #: the first N steps are attention transfer (see TrainConfig)
        self.loss_name = "loss"  #: what the last training step minimised: "transfer error" in attention transfer
        names = set(new_attention_names(model)) if transfer_steps else set()
        self._transfer_params = [p for n, p in model.named_parameters() if n in names]
        if transfer_steps and not self._transfer_params:
            raise ValueError("transfer_steps > 0, but the model has no trainable new attention parts "
                             "(second-branch LoRA, lambda, head norm) to transfer")

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        for message in batch.get("skipped", ()):
            self.skipped_records += 1
            log.warning("skipped in training: %s", message)
        if batch.get("skipped"):
            self.log("data/skipped_records_in_training", float(self.skipped_records), batch_size=1)
        if "skipped" in batch and self._any_rank_empty(not batch["meta"]):
            # Every example of this rank's batch (or another rank's) was unreadable (on_bad_record=skip).
            if self.trainer.world_size == 1:
                return None  # Lightning skips the step
            # Under DDP every rank must run backward (the gradient all-reduce waits for all of them; Lightning
            # refuses None there): a zero loss over every trainable parameter, then no update in any rank.
            self._drop_update = True
            trainable = (p.sum() for p in self.model.parameters() if p.requires_grad)
            return sum(trainable, torch.zeros((), device=self.device)) * 0.0
        self._step_ids.extend(m.get("question_id") for m in batch["meta"])
        self.loss_name = "transfer error" if self._transferring() else "loss"
        if self._transferring():
            with attention_transfer(self.model) as errors:
                self.model(**model_inputs(batch, with_labels=False))
            loss = torch.stack(errors).mean()  # over layers: each its relative error against the pretrained layer
            if not torch.isfinite(loss):
                self._step_loss_finite = False
            if self._writes_logs(self.global_step + 1):
                self.log("train/transfer_error", loss, batch_size=len(batch["meta"]))
            return loss
        loss = self.model(**model_inputs(batch)).loss
        if not torch.isfinite(loss):
            self._step_loss_finite = False  # acted on in on_before_optimizer_step, in every rank at once
        if self._writes_logs(self.global_step + 1):
            self.log("train/loss", loss, batch_size=len(batch["meta"]))
        return loss

    def _transferring(self) -> bool:
        return self.global_step < self.transfer_steps

    def _writes_logs(self, step: int) -> bool:
        """Whether Lightning hands what is logged at optimiser step ``step`` to the logger (every
        ``log_every_n_steps``). Values logged at other steps would only be dropped, and every ``self.log``
        call costs time (Lightning moves its result state each call)."""
        return step % max(1, self.trainer.log_every_n_steps) == 0

    def _any_rank_empty(self, empty: bool) -> bool:
        if self.trainer.world_size == 1:
            return empty
        flag = self.trainer.strategy.reduce(torch.tensor(float(empty), device=self.device), reduce_op="sum")
        return bool(flag.item())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are final here (accumulated, all-reduced) and not yet applied."""
        if self._transferring():  # only the new attention parts learn in transfer (AdamW skips a None gradient)
            keep = {id(p) for p in self._transfer_params}
            for p in self.model.parameters():
                if id(p) not in keep:
                    p.grad = None
        if self._drop_update:  # the same in every rank (decided by an all-reduce in training_step)
            self._drop_update = False
            self._step_ids, self._step_loss_finite = [], True
            for p in self.model.parameters():
                p.grad = None
            self._step_skipped = True
            log.warning("skipped the optimiser step at step %d: a rank's batch was wholly unreadable", self.global_step)
            return
        bad_grad = self._nonfinite_grad(optimizer)
        bad = torch.tensor(float(bad_grad is not None or not self._step_loss_finite))
        if self.trainer.world_size > 1:  # every rank must take the same decision, or DDP hangs
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        ids, loss_finite = self._step_ids, self._step_loss_finite
        self._step_ids, self._step_loss_finite = [], True
        if not bad.item():
            return
        what = ("non-finite loss" if not loss_finite else
                f"non-finite gradient of {bad_grad}" if bad_grad else "non-finite loss or gradient in another rank")
        report = nonfinite_report(what, self.global_step, self.current_epoch, ids, lambda_values(self.model),
                                  getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "")
        if self.on_nonfinite == "stop":
            raise NonFiniteError(report)
        for p in self.model.parameters():  # AdamW leaves parameters without a gradient untouched
            p.grad = None
        self._step_skipped = True
        self.skipped_steps += 1
        log.warning("skipped the optimiser step: %s", report)
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)

    def _nonfinite_grad(self, optimizer: torch.optim.Optimizer) -> Optional[str]:
        """Name of a trainable parameter with a NaN/inf gradient, or None. A single norm over the optimiser's
        gradients (NaN or inf when any element is) spares walking the model on the steps that are fine."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return None
        total = torch.nn.utils.get_total_norm(grads, foreach=True) if hasattr(torch.nn.utils, "get_total_norm") \
            else torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if torch.isfinite(total):
            return None
        return first_nonfinite_grad(self.model.named_parameters())  # None if the norm only overflowed

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's order (zero_grad, training_step, backward, on_before_optimizer_step, clipping, step),
        with the forward and backward run just before ``optimizer.step()`` instead of inside it: torch runs a
        step's closure under its no_grad and profiler scopes, a measurable share of a CPU training step
        (benchmarks/framework_overhead.py). Adam and AdamW evaluate the closure once, so nothing else changes."""
        if optimizer_closure is None:
            return super().optimizer_step(epoch, batch_idx, optimizer)
        result = optimizer_closure()
        optimizer.step(closure=lambda: result)  # Lightning's hooks and clipping still run around the step

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Lightning steps the schedule after every optimiser step; a skipped update leaves it where it was,
        so the warm-up and decay count the updates actually applied."""
        if self._step_skipped:
            self._step_skipped = False
            return
        super().lr_scheduler_step(scheduler, metric)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._writes_logs(self.global_step):
            return
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=max(1, len(batch["meta"])))
        if self._has_lambda is False:  # vanilla: no need to walk the model's modules every time
            return
        # The paper's failure mode is lambda collapsing to 0 or 1: watch every layer's value.
        values = lambda_values(self.model)
        self._has_lambda = bool(values)
        for name, value in values.items():
            self.log(f"lambda/{name}", value, batch_size=max(1, len(batch["meta"])))

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
    def _score(self, batch: dict[str, Any], metric: VQAAccuracy) -> list[tuple[dict[str, Any], str]]:
        """(record, prediction) of each real record; FSDP's padding copies (data/sampling.py) are decoded
        with the others but scored by nothing."""
        predictions = generate_answers(self.model, self.processor, batch, self.max_new_tokens,
                                       synced=shards_parameters(self.trainer.strategy))
        scored = [(m, p) for m, p in zip(batch["meta"], predictions) if not m.get("padding")]
        metric.update([p for _, p in scored], [m["answers"] for m, _ in scored], [m["category"] for m, _ in scored])
        return scored

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for record, prediction in self._score(batch, self.test_metric):
            if len(self.test_predictions) < self.log_predictions:
                self.test_predictions.append(
                    {
                        "question_id": record["question_id"],
                        "ref": record["ref"],  # the runner adds the image for the W&B table
                        "question": record["question"],
                        "prediction": prediction,
                        "answers": record["answers"],
                        "score": vqa_accuracy(prediction, record["answers"], convention=self.convention),
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
    def configure_model(self) -> None:
        """Under ``trainer.strategy=fsdp`` (:class:`~diffpali.strategies.ShardedLoRA`) the strategy shards the
        model here, once its process group exists; other strategies have no ``shard`` and leave it whole."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None:
            shard(self.model)

    def checkpoint_keys(self) -> set[str]:
        """The state-dict keys a checkpoint keeps: trainable tensors and a variant's frozen copies."""
        trainable, frozen_copies = self._saved_keys()
        return trainable | frozen_copies

    def _saved_keys(self) -> tuple[set[str], set[str]]:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        frozen_copies = {f"model.{n}" for n in frozen_variant_names(self.model)}
        return trainable, frozen_copies

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable, frozen_copies = self._saved_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable | frozen_copies}
        checkpoint["diffpali_trainable_keys"] = sorted(trainable)
        if self.signature is not None:
            checkpoint[SIGNATURE_KEY] = self.signature

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.signature is not None:
            check_signature(checkpoint, self.signature, "being loaded")
        trainable, frozen_copies = self._saved_keys()
        found = set(checkpoint["state_dict"])
        if not trainable <= found <= trainable | frozen_copies:
            missing, extra = sorted(trainable - found)[:3], sorted(found - trainable - frozen_copies)[:3]
            raise ValueError(
                "checkpoint does not match this model's trainable parameters "
                f"(missing e.g. {missing}, unexpected e.g. {extra}): check attn, ffn and lora settings"
            )

"""What ``train.py`` and ``evaluate.py`` do once Hydra has composed and validated the config."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .checkpointing import (
    AtomicCheckpointIO,
    RNGState,
    check_checkpoint,
    remove_partial_writes,
    resolve_resume,
    run_signature,
)
from .config import EvaluateConfig, TrainConfig
from .data.collate import record_image
from .data.datamodule import VQADataModule
from .evals.vqa import PREDICTION_COLUMNS, prediction_rows, score_summary
from .jsonio import write_json_atomic
from .lambda_callback import LambdaHistory, LambdaWarmup
from .lightning_module import DiffPaliModule
from .loggers import finish as finish_logger
from .loggers import log_pictures, log_table, make_logger, saved_run_id
from .model import base_record, build_model, load_adapter, load_base, save_adapter
from .paths import ADAPTER_DIR, BASE_RECORD_FILE, CHECKPOINT_DIR, METRICS_FILE, adapter_dir_of
from .progress import ConsoleProgress
from .strategies import lightning_strategy, whole_model_state
from .trained_evals import LearningCurve, evaluate_trained, run_task
from .zoo.rehearsal import RehearsalExamples

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What :func:`prepare` sets up for :func:`fit` and :func:`finish`: one training run's parts."""

    cfg: TrainConfig
    run_name: str
    out: Path
    started: float  #: time.time() at the start, for total_seconds
    resume: Optional[Path]  #: the checkpoint to resume from, checked against this config
    skipped: dict[str, int]  #: bad records left out, by split (data.on_bad_record=skip)
    datamodule: VQADataModule
    processor: Any
    module: DiffPaliModule
    logger: Any


def train(cfg: TrainConfig, run_name: str = "default") -> dict[str, Any]:
    """Fine-tune with LoRA, save the adapter, score on the test split; returns the metrics written.

    Order matters for failing fast: the resume checkpoint is checked against this config and every
    data record is checked (data.on_bad_record) before the model loads. Checkpoints are written
    atomically to ``checkpoints/last.ckpt`` every ``ckpt_every_n_steps`` steps and at epoch ends;
    ``ckpt_path=last|auto`` resumes from there with the same weights, optimiser state, RNG and data order.
    """
    run = prepare(cfg, run_name)
    trainer, fit_seconds = fit(run)
    return finish(run, trainer, fit_seconds)


def prepare(cfg: TrainConfig, run_name: str) -> Run:
    """Check the resume checkpoint and every data record, then build the model, its module and the logger."""
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for partial in remove_partial_writes(out / CHECKPOINT_DIR):
        log.warning("removed %s, left by a checkpoint save that was interrupted", partial)
    signature = run_signature(cfg.model, cfg.attn, cfg.ffn, cfg.lora)
    resume = resolve_resume(cfg.ckpt_path, out)
    if resume is not None:
        check_checkpoint(resume, signature)
        log.info("resuming from %s", resume)
    if cfg.seed is not None:  # 0 is a seed like any other
        L.seed_everything(cfg.seed, workers=True)

    datamodule = VQADataModule(cfg.data, processor=None, seed=cfg.seed)
    datamodule.setup("fit")  # loads and checks every record: a bad one stops the run before the model loads
    if cfg.data.rehearsal:  # validation and test stay the dataset's own
        mixed = RehearsalExamples(datamodule.datasets["train"], cfg.model.tiny, cfg.data.rehearsal)
        datamodule.datasets["train"] = mixed
        log.info("rehearsal: %d of %d training examples replay the base's stage 1", mixed.replayed, len(mixed))
    skipped = {split: len(messages) for split, messages in datamodule.skipped.items() if messages}
    log.info("data: %s, %s records checked in %.1f s%s", cfg.data.name,
             ", ".join(f"{split} {len(ds)}" for split, ds in datamodule.datasets.items()), time.time() - started,
             f" ({sum(skipped.values())} skipped)" if skipped else "")
    model, processor = build_model(cfg.model, cfg.attn, cfg.ffn, cfg.lora)
    base = base_record(cfg.model)
    if base is not None:  # which tiny base, and how its lambda moved in pretraining (the report reads it)
        write_json_atomic(out / BASE_RECORD_FILE, base)
    datamodule.processor = processor
    model.train()  # from_pretrained returns eval mode, which Lightning would keep (and warn about)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("model %s: %d trainable of %d parameters (%.2f%%)", cfg.model.name, trainable, total,
             100 * trainable / total)
    module = DiffPaliModule(
        model,
        processor,
        cfg.optim,
        dataset_name=cfg.data.name,
        max_new_tokens=cfg.data.max_new_tokens,
        log_predictions=cfg.logger.log_predictions,
        on_nonfinite=cfg.on_nonfinite,
        signature=signature,
        transfer_steps=cfg.transfer_steps,
    )
    # A resumed run continues its W&B run (the id kept in the run directory); a fresh one starts its own.
    logger = make_logger(cfg.logger, out, run_name, cfg.logger.group or cfg.experiment_name, asdict(cfg),
                         resume_id=saved_run_id(out) if resume is not None else None)
    if logger is not None and skipped:
        logger.log_metrics({f"data/skipped/{split}": float(n) for split, n in skipped.items()})
    return Run(cfg, run_name, out, started, resume, skipped, datamodule, processor, module, logger)


def fit(run: Run) -> tuple[L.Trainer, float]:
    """Train (resuming where asked) and save the adapter; returns the trainer and the seconds fit took."""
    cfg, out = run.cfg, run.out
    # One writer of last.ckpt (a second ModelCheckpoint would write last-v1.ckpt). Lightning takes one
    # trigger per callback: every N steps, or else every epoch. A resume replays at most N-1 steps.
    every = {"every_n_train_steps": cfg.ckpt_every_n_steps} if cfg.ckpt_every_n_steps else {}
    warmup = getattr(cfg.attn, "lambda_warmup_steps", 0)  # a knob of the differential variants only
    callbacks: list[Any] = [ModelCheckpoint(dirpath=out / CHECKPOINT_DIR, save_last=True, save_top_k=0, **every),
                            RNGState(), *([LambdaWarmup(warmup)] if warmup else []), LambdaHistory(out)]
    if cfg.curve.steps:
        callbacks.append(LearningCurve(cfg, run.processor, out, run.logger))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(ConsoleProgress())  # in place of Lightning's bar: see diffpali/console.py
    trainer = L.Trainer(
        **{**asdict(cfg.trainer), "enable_progress_bar": False,  # the config's bar is ours, added above
           "strategy": lightning_strategy(cfg.trainer.strategy)},
        enable_model_summary=False,  # the parameter counts are logged above, in one line
        logger=run.logger if run.logger is not None else False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the datamodule shards (resumable train order, unpadded eval)
        default_root_dir=str(out),
    )
    fit_started = time.time()
    trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=str(run.resume) if run.resume else None,
                weights_only=True)
    fit_seconds = time.time() - fit_started

    adapter_dir = out / ADAPTER_DIR
    whole = whole_model_state(trainer.strategy)  # FSDP: the adapter's shards gathered, in every rank at once
    if trainer.is_global_zero:
        save_adapter(
            run.module.model,
            adapter_dir,
            {"model": asdict(cfg.model), "attn": asdict(cfg.attn), "ffn": asdict(cfg.ffn), "lora": asdict(cfg.lora)},
            state_dict=whole,
        )
        log.info("adapter saved to %s", adapter_dir)
    return trainer, fit_seconds


def finish(run: Run, trainer: L.Trainer, fit_seconds: float) -> dict[str, Any]:
    """Score the test split and the configured evaluations, write metrics.json, close the logger."""
    cfg, out, module, logger = run.cfg, run.out, run.module, run.logger
    metrics: dict[str, Any] = {
        "run_name": run.run_name,
        "experiment": cfg.experiment_name,
        "seed": cfg.seed,
        "convention": "official",
        "fit_seconds": round(fit_seconds, 1),
        "train_steps": trainer.global_step,
        "resumed_from": str(run.resume) if run.resume else None,
        "skipped_records": {**run.skipped, "in_training": module.skipped_records},
        "skipped_steps": module.skipped_steps,
    }
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if cfg.test_after_fit:
        test_started = time.time()
        results = trainer.test(module, datamodule=run.datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})
        metrics["test_seconds"] = round(time.time() - test_started, 1)
        if logger is not None and module.test_predictions:
            test_set = run.datamodule.datasets["test"]
            rows = [{**p, "image": record_image(test_set, p["ref"])} for p in module.test_predictions]
            log_table(logger, "test/predictions", PREDICTION_COLUMNS, prediction_rows(rows))
    if trainer.is_global_zero and cfg.evals:
        metrics["evals"] = evaluate_trained(cfg, module.model, run.processor, out, logger)
    metrics["total_seconds"] = round(time.time() - run.started, 1)
    if trainer.is_global_zero:
        write_json_atomic(out / METRICS_FILE, metrics)
    finish_logger(logger)
    if trainer.is_global_zero:  # last, after W&B has closed: the score and where everything is
        contents = f"{METRICS_FILE}, {ADAPTER_DIR}/, {CHECKPOINT_DIR}/"
        if cfg.test_after_fit:
            print(score_summary(metrics, "test", cfg.data.name, out, contents))
        else:
            print(f"run directory: {out}  ({contents})")
    return metrics


def evaluate(cfg: EvaluateConfig, run_name: str = "evaluate") -> dict[str, Any]:
    """Score the base model or a saved adapter with ``cfg.eval.task``; writes metrics.json."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    adapter = adapter_dir_of(cfg.ckpt)
    model, processor = load_base(cfg.model)
    if adapter is not None:
        model = load_adapter(model, adapter)
    model.to(device)
    metrics, outcome = run_task(cfg, model, processor, device, out)
    logger = make_logger(cfg.logger, out, run_name, "evaluate", asdict(cfg))
    if logger is not None:
        logger.log_metrics({k: v for k, v in metrics.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for key, table in outcome.tables.items():
            log_table(logger, key, table.columns, table.rows)
        log_pictures(logger, outcome.pictures)
    finish_logger(logger)
    print(outcome.summary)  # last, after W&B has closed
    return metrics

"""What ``train.py`` and ``evaluate.py`` do once Hydra has composed and validated the config."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .analysis.lambda_history import LambdaHistory
from .checkpointing import (
    CHECKPOINT_DIR,
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
from .jsonio import write_json_atomic
from .loggers import finish, make_logger, saved_run_id
from .model import build_model, load_adapter, load_base, save_adapter
from .module import DiffPaliModule
from .progress import ConsoleProgress

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.json"


def log_table(logger: Any, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A W&B table (PIL images become ``wandb.Image``); other loggers have no tables and skip it."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or not rows:
        return
    import wandb
    from PIL import Image

    data = [[wandb.Image(v) if isinstance(v, Image.Image) else v for v in row] for row in rows]
    payload: dict[str, Any] = {key: wandb.Table(columns=columns, data=data)}
    # An offline run stores a table's images as the word "Image" (wandb/wandb#4611); the same images
    # as a captioned list survive offline and a later `wandb sync`.
    gallery = []
    for row in rows:
        caption = ", ".join(f"{c}={v}" for c, v in zip(columns, row) if not isinstance(v, Image.Image))
        gallery += [wandb.Image(v, caption=caption) for v in row if isinstance(v, Image.Image)]
    if gallery:
        payload[f"{key}_images"] = gallery
    logger.experiment.log(payload)


def log_pictures(logger: Any, pictures: dict[str, Path]) -> None:
    """PNGs already written in the run directory, logged to W&B under their keys."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger) and pictures:
        import wandb

        logger.experiment.log({key: wandb.Image(str(path)) for key, path in pictures.items()})


PREDICTION_COLUMNS = ["image", "question_id", "question", "prediction", "answers", "score"]


def prediction_rows(predictions: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows of a W&B prediction table: the image the model saw beside its question, answer and score."""
    return [[p["image"], p["question_id"], p["question"], p["prediction"], ", ".join(sorted(set(p["answers"]))),
             p["score"]] for p in predictions]


def train(cfg: TrainConfig, run_name: str = "default") -> dict[str, Any]:
    """Fine-tune with LoRA, save the adapter, score on the test split; returns the metrics written.

    Order matters for failing fast: the resume checkpoint is checked against this config and every
    data record is checked (data.on_bad_record) before the model loads. Checkpoints are written
    atomically to ``checkpoints/last.ckpt`` every ``ckpt_every_n_steps`` steps and at epoch ends;
    ``ckpt_path=last|auto`` resumes from there with the same weights, optimiser state, RNG and data order.
    """
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    for partial in remove_partial_writes(ckpt_dir):
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
    skipped = {split: len(messages) for split, messages in datamodule.skipped.items() if messages}
    log.info("data: %s, %s records checked in %.1f s%s", cfg.data.name,
             ", ".join(f"{split} {len(ds)}" for split, ds in datamodule.datasets.items()), time.time() - started,
             f" ({sum(skipped.values())} skipped)" if skipped else "")
    model, processor = build_model(cfg.model, cfg.attn, cfg.ffn, cfg.lora)
    datamodule.processor = processor
    model.train()  # from_pretrained returns eval mode, which Lightning would keep (and warn about)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("model %s: %d trainable of %d parameters (%.2f%%)", cfg.model.name, trainable, total, 100 * trainable / total)
    module = DiffPaliModule(
        model,
        processor,
        cfg.optim,
        dataset_name=cfg.data.name,
        max_new_tokens=cfg.data.max_new_tokens,
        log_predictions=cfg.logger.log_predictions,
        on_nonfinite=cfg.on_nonfinite,
        signature=signature,
    )
    resolved = asdict(cfg)
    # A resumed run continues its W&B run (the id kept in the run directory); a fresh one starts its own.
    logger = make_logger(cfg.logger, out, run_name, cfg.logger.group or cfg.experiment_name, resolved,
                         resume_id=saved_run_id(out) if resume is not None else None)
    if logger is not None and skipped:
        logger.log_metrics({f"data/skipped/{split}": float(n) for split, n in skipped.items()})
    # One writer of last.ckpt (a second ModelCheckpoint would write last-v1.ckpt). Lightning takes one
    # trigger per callback: every N steps, or else every epoch. A resume replays at most N-1 steps.
    every = {"every_n_train_steps": cfg.ckpt_every_n_steps} if cfg.ckpt_every_n_steps else {}
    callbacks: list[Any] = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, **every), RNGState(), LambdaHistory(out)]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(ConsoleProgress())  # in place of Lightning's bar: see diffpali/console.py
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=t.max_time,
        val_check_interval=t.val_check_interval,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic,
        enable_progress_bar=False,
        enable_model_summary=False,  # the parameter counts are logged above, in one line
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the datamodule shards (resumable train order, unpadded eval)
        default_root_dir=str(out),
    )
    fit_started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    fit_seconds = time.time() - fit_started

    adapter_dir = out / ADAPTER_DIR
    if trainer.is_global_zero:
        save_adapter(
            module.model,
            adapter_dir,
            {"model": asdict(cfg.model), "attn": asdict(cfg.attn), "ffn": asdict(cfg.ffn), "lora": asdict(cfg.lora)},
        )
        log.info("adapter saved to %s", adapter_dir)

    metrics: dict[str, Any] = {
        "run_name": run_name,
        "experiment": cfg.experiment_name,
        "seed": cfg.seed,
        "convention": "official",
        "fit_seconds": round(fit_seconds, 1),
        "train_steps": trainer.global_step,
        "resumed_from": str(resume) if resume else None,
        "skipped_records": {**skipped, "in_training": module.skipped_records},
        "skipped_steps": module.skipped_steps,
    }
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if cfg.test_after_fit:
        test_started = time.time()
        results = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})
        metrics["test_seconds"] = round(time.time() - test_started, 1)
        if logger is not None and module.test_predictions:
            test_set = datamodule.datasets["test"]
            rows = [{**p, "image": record_image(test_set, p["ref"])} for p in module.test_predictions]
            log_table(logger, "test/predictions", PREDICTION_COLUMNS, prediction_rows(rows))
    metrics["total_seconds"] = round(time.time() - started, 1)
    if trainer.is_global_zero:
        write_json_atomic(out / METRICS_FILE, metrics)
    finish(logger)
    if trainer.is_global_zero:  # last, after W&B has closed: the score and where everything is
        if cfg.test_after_fit:
            print(score_summary(metrics, "test", cfg.data.name, out, "metrics.json, adapter/, checkpoints/"))
        else:
            print(f"run directory: {out}  (metrics.json, adapter/, checkpoints/)")
    return metrics


CONVENTION_NAMES = {"official": "official VQAv2", "simple": "the paper's simple min(n/3, 1)"}


def score_summary(metrics: dict[str, Any], split: str, dataset_name: str, out: Path, contents: str = "metrics.json") -> str:
    """The lines a user reads at the end of a run: score, breakdown, baseline, where things are."""
    key = f"{split}/vqa_accuracy_{metrics['convention']}"
    categories = [k[len(key) + 1 :] for k in metrics if k.startswith(key + "/")]
    parts = [f"{c} {metrics[f'{key}/{c}']:.3f}" for c in categories if metrics[f"{key}/{c}"] is not None]
    lines = [f"VQA accuracy ({dataset_name} {split}, {CONVENTION_NAMES[metrics['convention']]} convention): "
             f"{metrics[key]:.3f}  [{', '.join(parts)}]"]
    if dataset_name == "easy_vqa" and split == "test":
        from .data.easy_vqa import question_only_baseline

        base = question_only_baseline("test")
        lines.append(f"question-only baseline (full test split, answers from the question alone): {base['overall']:.3f}  "
                     f"[yes/no {base['yes/no']:.3f}, color {base['color']:.3f}, shape {base['shape']:.3f}]")
    lines.append(f"run directory: {out}  ({contents})")
    return "\n".join(lines)


def resolve_adapter(ckpt: str) -> Path | None:
    """A run directory holds ``adapter/``; an adapter directory holds ``adapter_config.json``."""
    if ckpt == "base":
        return None
    path = Path(ckpt).expanduser()
    if (path / "adapter_config.json").is_file():
        return path
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        return path / ADAPTER_DIR
    from .files import UnreadableFileError

    raise UnreadableFileError(path / ADAPTER_DIR / "adapter_config.json", "the file is missing (and so is "
                              f"{path / 'adapter_config.json'})", "Give ckpt= a train.py run directory, an adapter "
                              "directory or base")


def evaluate(cfg: EvaluateConfig, run_name: str = "evaluate") -> dict[str, Any]:
    """Score the base model or a saved adapter with ``cfg.eval.task``; writes metrics.json."""
    from .eval_tasks import task_runner

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    adapter = resolve_adapter(cfg.ckpt)
    model, processor = load_base(cfg.model)
    if adapter is not None:
        model = load_adapter(model, adapter)
    model.to(device)
    started = time.time()
    outcome = task_runner(cfg.eval.task)(cfg, model, processor, device, out)
    metrics = {"ckpt": cfg.ckpt, "task": cfg.eval.task, "seed": cfg.seed, **outcome.metrics}
    metrics["eval_seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / METRICS_FILE, metrics)
    logger = make_logger(cfg.logger, out, run_name, "evaluate", asdict(cfg))
    if logger is not None:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for key, table in outcome.tables.items():
            log_table(logger, key, table.columns, table.rows)
        log_pictures(logger, outcome.pictures)
    finish(logger)
    print(outcome.summary)  # last, after W&B has closed
    return metrics

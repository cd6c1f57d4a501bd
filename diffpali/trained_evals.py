"""Evaluations of a model in training or just trained: ``cfg.evals`` after the fit, each into
``<run>/evals/<name>/``, and the learning curve (``cfg.curve``): some of them at a few optimiser steps
during the fit, each into ``<run>/evals/<name>@<step>/``. The report reads both from the run directory."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch

from .config import EvalTaskConfig, EvaluateConfig, TrainConfig
from .evals.base import EvalOutcome, write_items
from .evals.tasks import task_runner
from .jsonio import write_json_atomic
from .loggers import log_pictures, log_table
from .paths import EVALS_DIR, ITEMS_FILE, METRICS_FILE

log = logging.getLogger(__name__)


def run_task(cfg: EvaluateConfig, model: Any, processor: Any, device: str,
             out: Path) -> tuple[dict[str, Any], EvalOutcome]:
    """``cfg.eval.task`` on a loaded model: ``metrics.json`` and ``items.jsonl`` written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    outcome = task_runner(cfg.eval.task)(cfg, model, processor, device, out)
    metrics = {"ckpt": cfg.ckpt, "task": cfg.eval.task, "seed": cfg.seed, **outcome.metrics}
    metrics["eval_seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / METRICS_FILE, metrics)
    if outcome.items:
        write_items(out / ITEMS_FILE, outcome.items)
    return metrics, outcome


def capped(evaluation: EvalTaskConfig, limit: Optional[int]) -> EvalTaskConfig:
    """``evaluation`` on its first ``limit`` samples (None: unchanged)."""
    if limit is None:
        return evaluation
    return replace(evaluation, limit=min(evaluation.limit or limit, limit),
                   attention_samples=min(evaluation.attention_samples, limit))


def evaluate_trained(cfg: TrainConfig, model: Any, processor: Any, out: Path, logger: Any,
                     names: Optional[list[str]] = None, limit: Optional[int] = None,
                     suffix: str = "") -> dict[str, str]:
    """``cfg.evals`` (or those of ``names``) on ``model``, each into ``<run>/evals/<name><suffix>/``, logged to the
    run's W&B under ``<name><suffix>/``. Returns ``<name><suffix>`` -> its folder (relative to the run)."""
    done: dict[str, str] = {}
    device = str(next(model.parameters()).device)
    for name, evaluation in cfg.evals.items():
        if names is not None and name not in names:
            continue
        evaluation = capped(capped(evaluation, cfg.eval_limit), limit)
        label = f"{name}{suffix}"
        folder = out / EVALS_DIR / label
        eval_cfg = EvaluateConfig(ckpt=str(out), model=cfg.model, data=cfg.data, eval=evaluation, logger=cfg.logger,
                                  seed=cfg.seed, output_dir=str(folder))
        log.info("evaluation %s (%s) of the %s model", label, evaluation.task, "training" if suffix else "trained")
        metrics, outcome = run_task(eval_cfg, model, processor, device, folder)
        if logger is not None:
            logger.log_metrics({f"{label}/{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            for key, table in outcome.tables.items():
                log_table(logger, f"{label}/{key}", table.columns, table.rows)
            log_pictures(logger, {f"{label}/{key}": path for key, path in outcome.pictures.items()})
        done[label] = f"{EVALS_DIR}/{label}"
    return done


class LearningCurve(L.Callback):
    """Scores ``cfg.curve.evals`` after each optimiser step of ``cfg.curve.steps`` (rank 0).

    The evaluations draw from torch's, numpy's and Python's generators; their states are restored afterwards,
    so the fit's weights are those of a run without the curve. A point already written (a resumed run that
    replays its step) is not scored again. Lightning runs checkpoint callbacks after this one, so a run killed
    while scoring resumes from before the step and scores it then.
    """

    def __init__(self, cfg: TrainConfig, processor: Any, out: Path, logger: Any):
        self.cfg, self.processor, self.out, self.logger = cfg, processor, out, logger
        self.names = list(cfg.curve.evals) or list(cfg.evals)

    def _written(self, step: int) -> bool:
        return all((self.out / EVALS_DIR / f"{name}@{step}" / METRICS_FILE).is_file() for name in self.names)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step not in self.cfg.curve.steps or not trainer.is_global_zero or self._written(step):
            return
        states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        was_training = pl_module.training
        pl_module.eval()
        try:
            evaluate_trained(self.cfg, pl_module.model, self.processor, self.out, self.logger,
                             names=self.names, limit=self.cfg.curve.limit, suffix=f"@{step}")
        finally:
            pl_module.train(was_training)
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])

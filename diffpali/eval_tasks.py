"""``evaluate.py``'s tasks behind one interface: each scores a loaded model and returns an outcome.

A task gets the validated config, the model (base or adapter, already on ``device``), its processor
and the run directory, and returns an :class:`EvalOutcome`; the runner writes ``metrics.json``,
prints the summary and logs metrics, tables and pictures to W&B the same way for every task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import EvaluateConfig


@dataclass
class EvalTable:
    """Rows for a W&B table; PIL images in a row become ``wandb.Image`` when logged."""

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


@dataclass
class EvalOutcome:
    """What a task produced. ``metrics`` is flat and JSON-able; every score names its convention."""

    metrics: dict[str, Any]
    summary: str
    tables: dict[str, EvalTable] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)  #: W&B key -> PNG written in the run directory


Task = Callable[[EvaluateConfig, Any, Any, str, Path], EvalOutcome]


def cache_root(cfg: EvaluateConfig) -> Path:
    """Where built haystacks and probes are kept: ``eval.cache_dir``, else diffpali's cache folder."""
    from .model import default_cache_dir

    return Path(cfg.eval.cache_dir).expanduser() if cfg.eval.cache_dir else default_cache_dir()


def batch_size(cfg: EvaluateConfig) -> int:
    return cfg.eval.batch_size or cfg.data.eval_batch_size


def max_new_tokens(cfg: EvaluateConfig, at_least: int = 1) -> int:
    return max(cfg.eval.max_new_tokens or cfg.data.max_new_tokens, at_least)


def run_vqa(cfg: EvaluateConfig, model: Any, processor: Any, device: str, out: Path) -> EvalOutcome:
    from .data.datamodule import load_split
    from .evaluation import score_vqa
    from .runner import score_summary

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
    from .runner import PREDICTION_COLUMNS, prediction_rows

    table = EvalTable(PREDICTION_COLUMNS, prediction_rows(result.predictions))
    return EvalOutcome(metrics, score_summary(metrics, split, cfg.data.name, out), {f"{split}/predictions": table})


def task_runner(name: str) -> Task:
    """The function that runs ``eval.task=name`` (imported lazily: each pulls in only what it needs)."""
    if name == "vqa":
        return run_vqa
    if name == "mmneedle":
        from .needle.evaluate import run_mmneedle

        return run_mmneedle
    if name == "pope":
        from .pope.evaluate import run_pope

        return run_pope
    if name == "attention":
        from .analysis.evaluate import run_attention

        return run_attention
    if name == "distractors":
        from .distractors.task import run_distractors

        return run_distractors
    raise ValueError(f"eval.task={name!r}: unknown task")

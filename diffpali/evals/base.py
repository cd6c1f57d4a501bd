"""What every ``evaluate.py`` task shares: the outcome it returns, its batching settings, where its
cached samples live, and how it writes its replies. No task is imported here.

A task gets the validated config, the model (base or adapter, already on ``device``), its processor
and the run directory, and returns an :class:`EvalOutcome`; the runner writes ``metrics.json``,
prints the summary and logs metrics, tables and pictures to W&B the same way for every task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import EvaluateConfig
from ..paths import cache_root


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
    #: metric -> one score per item (question, sample, probe) as ``(item id, score)``: what a paired
    #: comparison of two models on the same items resamples (``diffpali.report.stats.paired_bootstrap``)
    items: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)


#: ``task(cfg, model, processor, device, run_dir) -> EvalOutcome``
Task = Callable[[EvaluateConfig, Any, Any, str, Path], EvalOutcome]


def samples_dir(cfg: EvaluateConfig, kind: str) -> Path:
    """Where built samples of ``kind`` (haystacks, pope) are cached: under ``eval.cache_dir``, else diffpali's cache."""
    return cache_root(cfg.eval.cache_dir) / kind


def batch_size(cfg: EvaluateConfig) -> int:
    return cfg.eval.batch_size or cfg.data.eval_batch_size


def max_new_tokens(cfg: EvaluateConfig, at_least: int = 1) -> int:
    return max(cfg.eval.max_new_tokens or cfg.data.max_new_tokens, at_least)


def write_replies(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line: every reply beside its sample, so a score can be audited line by line."""
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def write_items(path: Path, items: dict[str, list[tuple[Any, float]]]) -> None:
    """``items.jsonl``: one line per scored item, ``{"metric", "id", "score"}``."""
    write_replies(path, ({"metric": metric, "id": item, "score": float(score)}
                         for metric, scored in items.items() for item, score in scored))


def read_items(path: Path) -> dict[str, dict[Any, float]]:
    """metric -> {item id: score} from an ``items.jsonl``."""
    found: dict[str, dict[Any, float]] = {}
    with path.open() as handle:
        for line in handle:
            record = json.loads(line)
            item = tuple(record["id"]) if isinstance(record["id"], list) else record["id"]
            found.setdefault(record["metric"], {})[item] = record["score"]
    return found


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend: no display on servers and CI."""
    # Deferred: matplotlib is slow to import and only drawing needs it; the backend is chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # opens on the backend chosen just above

    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` (its folder created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path

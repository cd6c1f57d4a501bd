"""Per-layer lambda over training, recorded to ``<run>/lambda_history.jsonl`` (no W&B needed).

Written by a training callback (:class:`diffpali.lambda_callback.LambdaHistory`), read here, without
torch, by the attention analysis, its plots and the report.

One JSON object per recorded step: ``{"step": 50, "text/layer0": 0.21, "vision/layer1": 0.37, ...}``.
A resumed run drops the records from its checkpoint's step on and records them again, so every
step appears once (readers also keep the last record of a step, for files written before that).
Vanilla runs have no lambda and write no file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .paths import LAMBDA_HISTORY_FILE


def step_of(line: str) -> int | None:
    """The step of one record; None for a blank or partial line (a kill during a write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_history(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{"text/layer0": [(step, lambda), ...], ...}`` from a run's history, steps ascending, last record wins."""
    path = Path(run_dir) / LAMBDA_HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no lambda history "
                                "(vanilla runs have none; runs before it was recorded neither)")
    by_step: dict[int, dict[str, float]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.pop("step"))
            by_step[step] = {k: float(v) for k, v in record.items()}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not a lambda record ({err}): {line[:80]!r}") from err
    series: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(by_step):
        for name, value in by_step[step].items():
            series.setdefault(name, []).append((step, value))
    return series

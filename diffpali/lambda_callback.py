"""The training callback that records every layer's lambda to ``<run>/lambda_history.jsonl``
(the format and its reader: :mod:`diffpali.lambda_history`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L

from .lambda_history import step_of
from .paths import LAMBDA_HISTORY_FILE
from .strategies import shards_parameters
from .surgery import lambda_values


class LambdaHistory(L.Callback):
    """Appends every layer's lambda at the start of training and every ``log_every_n_steps`` steps.

    Same cadence as the ``lambda/...`` metrics of :class:`~diffpali.lightning_module.DiffPaliModule`; rank zero
    writes (under FSDP every rank reads).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LAMBDA_HISTORY_FILE
        self._last_step: int | None = None  # with gradient accumulation several batches end on one step
        self._vanilla = False

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._vanilla:
            return
        sharded = shards_parameters(trainer.strategy)
        if not trainer.is_global_zero and not sharded:
            return
        # Under FSDP a lambda's weights are shards: every rank joins the gathers that reading it takes.
        values = lambda_values(pl_module.model if hasattr(pl_module, "model") else pl_module)
        if not values:
            self._vanilla = True  # no differential layer now, none later: stop walking the model
            return
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": int(trainer.global_step), **values}) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._drop_from(int(trainer.global_step))
        self._record(trainer, pl_module)

    def _drop_from(self, step: int) -> None:
        """A resumed run trains again from its checkpoint's step: records from there on are replaced, not doubled."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if (recorded := step_of(line)) is not None and recorded < step]
        if len(kept) != len(lines):
            partial = self.path.with_name(f".{self.path.name}.partial")
            partial.write_text("".join(line + "\n" for line in kept))
            os.replace(partial, self.path)  # atomic: a kill here leaves the old file or the new one

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        every = max(1, int(trainer.log_every_n_steps))
        if trainer.global_step % every == 0 and trainer.global_step != self._last_step:
            self._record(trainer, pl_module)
            self._last_step = trainer.global_step

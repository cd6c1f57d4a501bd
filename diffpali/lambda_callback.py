"""The training callbacks of lambda: :class:`LambdaHistory` records every layer's lambda to
``<run>/lambda_history.jsonl`` (the format and its reader: :mod:`diffpali.lambda_history`);
:class:`LambdaWarmup` ramps lambda in (``attn.lambda_warmup_steps``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L

from .lambda_history import step_of
from .paths import LAMBDA_HISTORY_FILE
from .strategies import shards_parameters
from .surgery import lambda_values, set_lambda_ramp


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


def warmup_ramp(step: int, steps: int) -> float:
    """The ramp at optimiser step ``step`` of a warm-up of ``steps``: 0 at the start, 1 from ``steps`` on."""
    return min(1.0, step / steps) if steps > 0 else 1.0


class LambdaWarmup(L.Callback):
    """Raises every lambda's warm-up ramp linearly from 0 to 1 over ``steps`` optimiser steps.

    The ramp is a function of the global step alone, so a resumed run continues the same schedule. It is
    set when training starts and after every batch (for the next update, for validation, for the lambda
    just recorded and, after the last, for the saved adapter); list this callback before
    :class:`LambdaHistory`, which then records each lambda at the ramp it has.
    """

    def __init__(self, steps: int):
        self.steps = steps

    def _set(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        ramp = warmup_ramp(int(trainer.global_step), self.steps)
        set_lambda_ramp(pl_module.model if hasattr(pl_module, "model") else pl_module, ramp)
        return ramp

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ramp = self._set(trainer, pl_module)
        if trainer.global_step % max(1, int(trainer.log_every_n_steps)) == 0:
            pl_module.log("lambda/ramp", ramp, batch_size=1)

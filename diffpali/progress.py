"""diffpali's progress bar and one-line phase summaries for Lightning runs (see :mod:`diffpali.console`)."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("diffpali.progress")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scores(metrics: dict[str, Any], prefix: str) -> str:
    """``vqa_accuracy_official 0.750 [yes/no 0.750, color 1.000]`` from ``prefix/...`` metrics."""
    main = [k for k in metrics if k.startswith(prefix) and k.count("/") == 1]
    parts = []
    for key in sorted(main):
        value = _float(metrics[key])
        if value is None:
            continue
        subs = [f"{k[len(key) + 1:]} {_float(metrics[k]):.3f}" for k in metrics  # in the order logged
                if k.startswith(key + "/") and _float(metrics[k]) is not None]
        parts.append(f"{key[len(prefix):]} {value:.3f}" + (f" [{', '.join(subs)}]" if subs else ""))
    return "; ".join(parts) or "no scores"


class ConsoleProgress(Callback):
    """diffpali's progress bar and phase summaries (rank zero only), in place of Lightning's.

    On a terminal, one line redrawn at most ``redraws_per_second`` times; otherwise (a log file, a
    pipe, SLURM) a log line at every tenth of the run, so logs stay short and every line is new.
    """

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None, updates: int = 10,
                 redraws_per_second: float = 4.0) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.updates = updates
        self.min_redraw = 1.0 / redraws_per_second
        self._t0 = self._drawn = self._phase_t0 = 0.0
        self._first_step = 0
        self._total: float = math.inf
        self._loss: float | None = None
        self._loss_name = "loss"  #: the training module's ``loss_name``: "transfer error" in attention transfer
        self._bar_open = False
        self._questions = 0

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.monotonic()
        self._first_step = int(trainer.global_step)
        self._total = float(trainer.estimated_stepping_batches)
        if trainer.is_global_zero:
            resumed = f", resuming at step {self._first_step}" if self._first_step else ""
            total = "?" if not math.isfinite(self._total) else str(int(self._total))
            log.info("train: %s optimiser steps%s", total, resumed)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss = _float(loss.detach() if hasattr(loss, "detach") else loss)
            self._loss_name = getattr(pl_module, "loss_name", "loss")
        step = int(trainer.global_step)
        if self.interactive:
            now = time.monotonic()
            if now - self._drawn >= self.min_redraw or step >= self._total:
                self._drawn = now
                self.stream.write("\r" + self._line(step) + "\033[K")
                self.stream.flush()
                self._bar_open = True
            return
        every = max(1, math.ceil(self._total / self.updates)) if math.isfinite(self._total) else 100
        if step % every == 0 and step != getattr(self, "_last_logged", None):
            self._last_logged = step
            log.info("train: %s", self._line(step))

    def _line(self, step: int) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (step - self._first_step) / elapsed
        if math.isfinite(self._total):
            left = (self._total - step) / rate if rate > 0 else math.inf
            width, done = 24, step / max(self._total, 1)
            bar = "#" * int(width * done) + "." * (width - int(width * done))
            head = f"step {step}/{int(self._total)} [{bar}] {100 * done:3.0f}%"
        else:
            left, head = math.inf, f"step {step}"
        loss = f", {self._loss_name} {self._loss:.4f}" if self._loss is not None else ""
        return f"{head}{loss}, {rate:.2f} steps/s, {_duration(elapsed)} elapsed, {_duration(left)} left"

    def _close_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        self._close_bar()
        steps = int(trainer.global_step) - self._first_step
        elapsed = time.monotonic() - self._t0
        skipped = getattr(pl_module, "skipped_steps", 0)
        loss = f", last {self._loss_name} {self._loss:.4f}" if self._loss is not None else ""
        skip = f", {skipped} skipped (non-finite)" if skipped else ""
        log.info("train: %d steps in %s (%.2f steps/s)%s%s", steps, _duration(elapsed), steps / max(elapsed, 1e-9),
                 loss, skip)

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self) -> None:
        self._phase_t0 = time.monotonic()
        self._questions = 0

    def _count(self, batch: Any) -> None:
        if isinstance(batch, dict):
            self._questions += len(batch.get("meta", ()))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._count(batch)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._close_bar()
        questions = f"{self._questions} questions, " if trainer.world_size == 1 else ""
        log.info("validation at step %d: %s (%s%s)", trainer.global_step, _scores(trainer.callback_metrics, "val/"),
                 questions, _duration(time.monotonic() - self._phase_t0))

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start()

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._count(batch)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        questions = f"{self._questions} questions" if trainer.world_size == 1 else "its share of the questions"
        log.info("test: scored %s in %s", questions, _duration(time.monotonic() - self._phase_t0))

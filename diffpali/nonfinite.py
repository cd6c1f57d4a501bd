"""What a NaN or inf loss or gradient is reported with: the step, the batch ids, every layer's lambda."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the message says where and with which data."""


def first_nonfinite_grad(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> Optional[str]:
    """Name of the first trainable parameter whose gradient holds a NaN or inf, or None."""
    for name, p in named_parameters:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def nonfinite_report(what: str, step: int, epoch: int, batch_ids: list[Any], lambdas: dict[str, float],
                     last_checkpoint: str = "") -> str:
    """One message with everything needed to find the cause: what, when, which records, lambda per layer."""
    lam = ", ".join(f"{k}={v:.4g}" for k, v in lambdas.items()) or "none (no differential attention)"
    where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    return (f"{what} at step {step} (epoch {epoch}); batch ids (question_id): {batch_ids}; "
            f"lambda per layer: {lam}; {where}. Set on_nonfinite=skip to skip such steps instead.")

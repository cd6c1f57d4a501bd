"""A build as data: a list of :class:`Stage` records, run in order by :func:`run_stages`, each fed by a DataLoader.

A stage names what it checkpoints, what trains (parameter groups with learning-rate scales), its
schedule, a batch source and a loss. The batch source is a picklable pure function of the step, so
its batches can be drawn in DataLoader workers (``workers > 0``) or in this process (``workers = 0``)
and be the same tensors either way: the weights do not depend on where the scenes were drawn, and a
resumed stage starts drawing at its checkpoint's step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .stages import StageRunner

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]
PREFETCH_FACTOR = 4  #: batches each worker draws ahead: a few steps of slack when a batch is slow to draw


@dataclass
class Stage:
    """One resumable stage of a build."""

    name: str  #: in logs and progress bars ("stage 0")
    key: str  #: what the stage depends on (a hash): a checkpoint of another key is refused
    state_path: Path  #: its checkpoint file
    modules: dict[str, nn.Module]  #: what its checkpoint holds, by name
    #: the parameter groups that train: ``{"params": [...], "lr_scale": s}``, the learning rate times s
    groups: list[dict[str, Any]]
    lr: float  #: peak learning rate (AdamW, weight decay ``weight_decay``)
    steps: int
    warmup: int  #: linear warm-up steps, then cosine to a tenth of ``lr``
    batches: Callable[[int], Batch]  #: step -> CPU batch; picklable and a pure function of the step
    loss: Callable[[Batch], tuple[torch.Tensor, dict]]  #: batch on the device -> (loss, float terms)
    probe: Optional[Callable[[int], dict]] = None  #: held-out read-outs every ``probe_every`` steps
    #: read-outs recorded when the stage is over, before the next one starts
    summary: Optional[Callable[[], dict]] = None
    trains: list[nn.Module] = field(default_factory=list)  #: put in training mode, with gradients, to run
    frozen: list[nn.Module] = field(default_factory=list)  #: put in eval mode, without gradients, to run
    weight_decay: float = 0.01

    def parameters(self) -> list[nn.Parameter]:
        return [p for group in self.groups for p in group["params"]]


class StepBatches(Dataset):
    """Steps ``[start, stop)`` of a batch source as a map-style dataset: item ``i`` is the batch of step start+i."""

    def __init__(self, source: Callable[[int], Batch], start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int) -> Batch:
        return self.source(self.start + index)


def _one_thread(worker_id: int) -> None:
    """Drawing is Python and PIL: a worker needs no intra-op threads of its own, which would fight the
    training process's for cores."""
    torch.set_num_threads(1)


def default_workers(device: str) -> int:
    """0 on a CPU (the cores train); on a GPU enough workers that drawing keeps up, one core left to train."""
    if torch.device(device).type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def batch_loader(source: Callable[[int], Batch], start: int, stop: int, workers: int, pin: bool) -> DataLoader:
    """Batches of steps ``[start, stop)`` in order, drawn by ``workers`` processes (0: in this one)."""
    extra = {"prefetch_factor": PREFETCH_FACTOR, "worker_init_fn": _one_thread} if workers else {}
    # its own generator: a DataLoader iterator draws a base seed, which must not advance the global RNG the
    # model's initialisation comes from
    return DataLoader(StepBatches(source, start, stop), batch_size=None, shuffle=False, num_workers=workers,
                      persistent_workers=False, pin_memory=pin, generator=torch.Generator(), **extra)


def stage_runner(stage: Stage, checkpoint_every: int) -> StageRunner:
    optimizer = torch.optim.AdamW(stage.groups, lr=stage.lr, weight_decay=stage.weight_decay)
    return StageRunner(stage.name, stage.key, stage.state_path, stage.modules, optimizer, stage.lr, stage.steps,
                       warmup=stage.warmup, every=checkpoint_every)


def run_stage(stage: Stage, runner: StageRunner, device: str, workers: int, progress: bool = True,
              probe_every: int = 0) -> None:
    """Train ``stage`` from ``runner``'s step to its last, its batches drawn by ``workers`` processes."""
    for module in stage.trains:
        module.train()
        module.requires_grad_(True)
    for module in stage.frozen:
        module.train(False)
        module.requires_grad_(False)
    if runner.step >= stage.steps:  # resumed at its end: nothing to draw, no workers to start
        return
    pin = torch.device(device).type == "cuda" and workers > 0
    feed = {"batches": iter(batch_loader(stage.batches, runner.step, stage.steps, workers, pin))}

    def step_loss(step: int) -> tuple[torch.Tensor, dict]:
        batch = next(feed["batches"])
        return stage.loss({k: v.to(device, non_blocking=pin) for k, v in batch.items()})

    try:
        runner.run(step_loss, stage.parameters(), probe=stage.probe, probe_every=probe_every, progress=progress)
    finally:
        feed.clear()  # the last reference to the iterator: its workers stop now, also when a step raised


def run_stages(stages: list[Stage], device: str, workers: int = 0, progress: bool = True, probe_every: int = 0,
               checkpoint_every: int = 250) -> list[dict[str, Any]]:
    """Run ``stages`` in order, each resumed from its checkpoint; a stage whose successor has a checkpoint is
    over (that checkpoint holds its modules too) and is not run again. One record per stage: steps, training
    seconds, the loss history and the summary read-outs."""
    runners = [stage_runner(stage, checkpoint_every) for stage in stages]
    records = []
    for index, (stage, runner) in enumerate(zip(stages, runners)):
        runner.resume()  # for its record, also when a later stage's checkpoint holds its modules
        if not any(later.state_path.is_file() for later in stages[index + 1:]):
            run_stage(stage, runner, device, workers, progress=progress, probe_every=probe_every)
        record: dict[str, Any] = {"steps": runner.step, "train_seconds": round(runner.seconds, 1),
                                  "history": runner.history}
        if stage.summary is not None:
            record["summary"] = stage.summary()
        records.append(record)
    return records

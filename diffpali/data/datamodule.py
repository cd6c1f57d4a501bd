"""LightningDataModule over the VQA-schema splits: train, validation (never test) and test.

Records are checked when the splits load (:meth:`VQADataModule.setup`), which the runner calls
before the model loads, so a bad record stops a run in seconds. The module's state (epoch and
batches consumed) goes into every checkpoint, so a resumed run continues the same data order.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ..config import DataConfig
from ..strategies import shards_parameters
from .collate import PaliGemmaCollator, VQAExamples, to_device
from .easy_vqa import load_easy_vqa
from .sampling import PaddedSplit, ResumableSampler, ShardSampler
from .vqav2 import load_vqav2

SPLITS = ("train", "validation", "test")


def load_split(cfg: DataConfig, split: str, limit: int | None, skipped_out: list[str] | None = None):
    """``split`` is train, validation or test; the config maps it to the source's own split name."""
    if cfg.name == "easy_vqa":
        return load_easy_vqa(split, cfg.val_fraction, limit, cfg.on_bad_record, cfg.check_images, skipped_out)
    source_split = {"train": cfg.train_split, "validation": cfg.val_split, "test": cfg.test_split}[split]
    hold_out = split == "train" and cfg.val_split == "minival"  # minival images never train
    return load_vqav2(cfg.path, source_split, limit, cfg.on_bad_record, cfg.check_images, skipped_out,
                      minival_fraction=cfg.minival_fraction, hold_out_minival=hold_out)


class VQADataModule(L.LightningDataModule):
    """The three splits as DataLoaders; ``processor`` may be set after :meth:`setup` (data is checked first)."""

    def __init__(self, cfg: DataConfig, processor: Any, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.processor = processor
        self.seed = 0 if seed is None else seed
        self.datasets: dict[str, VQAExamples] = {}
        #: messages of the records left out before training, per split (data.on_bad_record=skip)
        self.skipped: dict[str, list[str]] = {split: [] for split in SPLITS}
        self._train_sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        limits = {"train": self.cfg.train_limit, "validation": self.cfg.val_limit, "test": self.cfg.test_limit}
        for split, limit in limits.items():
            if split not in self.datasets:
                loaded = load_split(self.cfg, split, limit, self.skipped[split])
                self.datasets[split] = VQAExamples(loaded, self.cfg.prompt, self.cfg.name, split)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _collate(self, train: bool) -> PaliGemmaCollator:
        return PaliGemmaCollator(self.processor, train=train, dataset_name=self.cfg.name,
                                 on_bad_record=self.cfg.on_bad_record)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self._ranks()
        self._train_sampler = ResumableSampler(len(self.datasets["train"]), self.seed, rank=rank, world_size=world)
        if self._resume is not None:
            self._train_sampler.resume_at(*self._resume)
        return self._loader("train", sampler=self._train_sampler, batch_size=self.cfg.batch_size)

    def _eval_loader(self, split: str) -> torch.utils.data.DataLoader:
        rank, world = self._ranks()
        examples: torch.utils.data.Dataset = self.datasets[split]
        if world > 1 and shards_parameters(self.trainer.strategy):
            examples = PaddedSplit(self.datasets[split], world)  # FSDP: every rank runs as many batches
        sampler = ShardSampler(len(examples), rank, world)
        return self._loader(split, sampler=sampler, batch_size=self.cfg.eval_batch_size, dataset=examples)

    def _loader(self, split: str, dataset: Any = None, **sampling: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.datasets[split] if dataset is None else dataset,
            num_workers=self.cfg.num_workers,
            collate_fn=self._collate(train=split == "train"),
            persistent_workers=self.cfg.num_workers > 0,
            # Worker seeds come from this generator, not the global RNG, which a resumed run must
            # find exactly where the uninterrupted run left it.
            generator=torch.Generator().manual_seed(self.seed),
            **sampling,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Only the tensors move; Lightning's default would also walk every record's metadata, every step."""
        if isinstance(batch, dict):
            return to_device(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def val_dataloader(self):
        return self._eval_loader("validation")

    def test_dataloader(self):
        return self._eval_loader("test")

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Where training is in the data: saved in every Lightning checkpoint."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches_done": done, "seed": self.seed,
                "train_size": len(self.datasets["train"]), "world_size": trainer.world_size,
                "batch_size": self.cfg.batch_size, "rehearsal": self.cfg.rehearsal}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        now = {"seed": self.seed, "train_size": len(self.datasets.get("train", ())), "batch_size": self.cfg.batch_size,
               "rehearsal": self.cfg.rehearsal}
        state = {"rehearsal": 0.0, **state}  # written before data.rehearsal existed: none
        differences = [f"{k}: checkpoint {state.get(k)}, this run {v}" for k, v in now.items() if state.get(k) != v]
        if differences:
            raise ValueError("the checkpoint's data order cannot be continued (" + "; ".join(differences)
                             + "): resume with the same seed and data settings")
        world = self._ranks()[1]
        if state["world_size"] != world:
            raise ValueError(
                f"checkpoint was written by {state['world_size']} process(es), this run has {world}: "
                "each rank's share of the data would change; resume with the same trainer.devices and num_nodes"
            )
        # Batches are consecutive slices of the rank's shard, so k batches done is k * batch_size indices.
        self._resume = (state["epoch"], state["batches_done"] * state["batch_size"])
        if self._train_sampler is not None:
            self._train_sampler.resume_at(*self._resume)

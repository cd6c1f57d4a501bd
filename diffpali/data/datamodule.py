"""LightningDataModule over the VQA-schema splits: train, validation (never test) and test."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ..config import DataConfig
from .collate import PaliGemmaCollator, VQAExamples
from .easy_vqa import load_easy_vqa
from .vqav2 import load_vqav2


def load_split(cfg: DataConfig, split: str, limit: int | None):
    """``split`` is train, validation or test; the config maps it to the source's own split name."""
    if cfg.name == "easy_vqa":
        return load_easy_vqa(split, cfg.val_fraction, limit, cfg.on_bad_record)
    source_split = {"train": cfg.train_split, "validation": cfg.val_split, "test": cfg.test_split}[split]
    return load_vqav2(cfg.path, source_split, limit, cfg.on_bad_record)


class VQADataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, processor: Any, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.processor = processor
        self.seed = 0 if seed is None else seed
        self.datasets: dict[str, VQAExamples] = {}

    def setup(self, stage: str | None = None) -> None:
        limits = {"train": self.cfg.train_limit, "validation": self.cfg.val_limit, "test": self.cfg.test_limit}
        for split, limit in limits.items():
            if split not in self.datasets:
                self.datasets[split] = VQAExamples(load_split(self.cfg, split, limit), self.cfg.prompt, self.cfg.name, split)

    def _loader(self, split: str, train: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.datasets[split],
            batch_size=self.cfg.batch_size if train else self.cfg.eval_batch_size,
            shuffle=train,
            # A seeded generator makes the data order part of the run's recorded seed.
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            num_workers=self.cfg.num_workers,
            collate_fn=PaliGemmaCollator(self.processor, train=train, dataset_name=self.cfg.name),
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("validation", train=False)

    def test_dataloader(self):
        return self._loader("test", train=False)

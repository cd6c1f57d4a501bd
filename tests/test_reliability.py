"""Reliability (DESIGN.md section 8): exact resume, atomic checkpoints, bad data, bad config,
non-finite loss, safe loading. Real tiny PaliGemma, real peft, real Lightning Trainer, real easy-vqa.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image

from diffpali.checkpointing import (
    LAST,
    AtomicCheckpointIO,
    CheckpointMismatchError,
    RNGState,
    check_checkpoint,
    read_checkpoint,
    remove_partial_writes,
    run_signature,
)
from diffpali.config import AttnConfig, DataConfig, FfnConfig, LoraConfig, ModelConfig, OptimConfig
from diffpali.data.datamodule import VQADataModule
from diffpali.model import apply_variants, wrap_lora
from diffpali.module import DiffPaliModule
from diffpali.nonfinite import NonFiniteError
from diffpali.surgery import lambda_values

ATTN = AttnConfig(variant="diff_dup")
LORA = LoraConfig(rank=4, alpha=8, dropout=0.1)  # dropout: the resumed run must restore the RNG too
SIGNATURE = run_signature(ModelConfig(), ATTN, FfnConfig(), LORA)


class Died(RuntimeError):
    """Stands in for a kill: the process state after it is thrown away."""


class Recorder(Callback):
    """Question ids of every training batch, and an optional death before a given step."""

    def __init__(self, die_before_step: int | None = None) -> None:
        self.ids: list[list[int]] = []
        self.die_before_step = die_before_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.die_before_step:
            raise Died(f"killed before step {trainer.global_step}")
        self.ids.append([m["question_id"] for m in batch["meta"]])


def _data(tiny_processor, **overrides: Any) -> VQADataModule:
    cfg = DataConfig(**{"train_limit": 20, "val_limit": 4, "test_limit": 4, "batch_size": 4, **overrides})
    datamodule = VQADataModule(cfg, tiny_processor, seed=0)
    datamodule.setup("fit")
    return datamodule


def _module(tiny_processor, config, init_seed: int, **kwargs: Any) -> DiffPaliModule:
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)  # the base: the same in every run, as if loaded from disk
    torch.manual_seed(init_seed)  # what the run adds (Q2/K2 copies, lambda, LoRA) must come from the checkpoint
    model = wrap_lora(model, LORA, apply_variants(model, ATTN, FfnConfig())).train()
    return DiffPaliModule(model, tiny_processor, OptimConfig(lr=5e-3, warmup_steps=2), signature=SIGNATURE, **kwargs)


def _fit(module, datamodule, ckpt_dir: Path, recorder: Recorder, max_epochs: int = 2, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=ckpt_dir.parent,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=1),
                   RNGState(), recorder],
        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer


def _state(module: DiffPaliModule, trainer: L.Trainer) -> dict[str, Any]:
    return {
        "params": {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad},
        "optimizer": trainer.optimizers[0].state_dict()["state"],
        "lambda": lambda_values(module.model),
        "step": trainer.global_step,
    }


@pytest.fixture(scope="module")
def tiny_config(tiny_processor):
    from conftest import small_spec

    from diffpali.zoo.tiny import build_config

    return build_config(small_spec(layers=1), tiny_processor)


# ---------------------------------------------------------------------------------------- resume
def test_a_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_run(tiny_processor, tiny_config, tmp_path):
    # 20 records, batch 4: 5 steps per epoch, 10 in all; the kill comes in the middle of epoch 2.
    whole = Recorder()
    module = _module(tiny_processor, tiny_config, init_seed=0)
    expected = _state(module, _fit(module, _data(tiny_processor), tmp_path / "a", whole))
    assert expected["step"] == 10

    killed = Recorder(die_before_step=7)
    with pytest.raises(Died):
        _fit(_module(tiny_processor, tiny_config, init_seed=0), _data(tiny_processor), tmp_path / "b", killed)
    assert torch.load(tmp_path / "b" / LAST, weights_only=True)["global_step"] == 7

    resumed = Recorder()
    module = _module(tiny_processor, tiny_config, init_seed=123)  # other init: everything must come from the checkpoint
    got = _state(module, _fit(module, _data(tiny_processor), tmp_path / "b", resumed, ckpt_path=tmp_path / "b" / LAST))

    assert killed.ids + resumed.ids == whole.ids, "data order differs after resuming"
    assert got["step"] == expected["step"] and got["lambda"] == expected["lambda"]
    for name, tensor in expected["params"].items():
        assert torch.equal(got["params"][name], tensor), name
    assert expected["optimizer"].keys() == got["optimizer"].keys()
    for key, state in expected["optimizer"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[field], got["optimizer"][key][field]), (key, field)


def test_a_checkpoint_for_another_model_is_refused_naming_the_fields(tiny_processor, tiny_config, tmp_path):
    module = _module(tiny_processor, tiny_config, init_seed=0)
    _fit(module, _data(tiny_processor, train_limit=4), tmp_path / "c", Recorder(), max_epochs=1)
    other = run_signature(ModelConfig(), AttnConfig(variant="vanilla"), FfnConfig(), LoraConfig(rank=8, alpha=16))
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint(tmp_path / "c" / LAST, other)
    message = str(info.value)
    assert "attn.variant: checkpoint 'diff_dup', this run 'vanilla'" in message
    assert "lora.rank: checkpoint 4, this run 8" in message
    assert "lora.alpha: checkpoint 8, this run 16" in message
    assert "towers" not in message and "dropout" not in message  # only fields that differ and shape the model
    check_checkpoint(tmp_path / "c" / LAST, SIGNATURE)  # the matching config loads


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / LAST
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:  # torch.save fails partway through writing, as a kill or a full disk would
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000), "x": Unpicklable()}, path)
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == [LAST], "a partial file was left behind"


def test_partial_files_of_a_killed_save_are_removed_at_the_next_start(tmp_path):
    (tmp_path / f".{LAST}.4242.partial").write_bytes(b"half a checkpoint")
    (tmp_path / LAST).write_bytes(b"kept")
    assert [p.name for p in remove_partial_writes(tmp_path)] == [f".{LAST}.4242.partial"]
    assert [p.name for p in tmp_path.iterdir()] == [LAST]


def test_checkpoints_load_without_pickle(tmp_path):
    """A checkpoint carrying a pickled object (code on load) is refused by weights_only loading."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Died("x")}, path)
    with pytest.raises(ValueError, match=r"evil.ckpt cannot be read safely: it holds a pickled object \(test_reliability.Died\)"):
        read_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)

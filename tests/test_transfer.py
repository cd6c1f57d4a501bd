"""Attention transfer (``transfer_steps``): the variant's new parts learn to reproduce each pretrained layer,
on tiny random PaliGemmas with the real transformers, peft and Lightning classes."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from diffpali.config import ConfigError, LoraConfig, OptimConfig, TrainConfig, attn_settings, to_typed
from diffpali.data.collate import PaliGemmaCollator, model_inputs
from diffpali.lightning_module import DiffPaliModule
from diffpali.model import new_attention_names, wrap_lora
from diffpali.surgery import apply_attention, attention_transfer

#: The paper's settings (head norm, lambda_init by depth): a retrofit that changes every layer at step 0.
PAPER = {"diff_split": {"variant": "diff_split"}, "diff_dup_separate": {"variant": "diff_dup"},
         "diff_v2_plain": {"variant": "diff_v2", "v2_lambda_init": "plain"}}


def converted(model, fields: dict):
    cfg = attn_settings(fields)
    cfg.validate()
    return apply_attention(model, cfg)


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@pytest.mark.parametrize("name", sorted(PAPER))
def test_in_transfer_every_layer_passes_the_pretrained_output_on_and_scores_its_own(name, tiny_model, tiny_batch):
    pretrained = copy.deepcopy(tiny_model)
    converted(tiny_model, PAPER[name])
    inputs = model_inputs(tiny_batch, with_labels=False)
    assert not torch.allclose(logits(tiny_model, inputs), logits(pretrained, inputs), atol=1e-4)  # changed
    with attention_transfer(tiny_model) as errors:
        transferred = logits(tiny_model, inputs)
    assert torch.allclose(transferred, logits(pretrained, inputs), atol=1e-5)
    assert len(errors) == 4 and all(float(e) > 0 for e in errors)  # two layers in each of two towers
    # on leaving, the layers compute their own output again
    assert not torch.allclose(logits(tiny_model, inputs), logits(pretrained, inputs), atol=1e-4)
    assert all(getattr(m, "diffpali_transfer", None) is None for m in tiny_model.modules())


def test_transfer_needs_a_converted_layer(tiny_model):
    with pytest.raises(ValueError, match="needs a differential attention"):
        with attention_transfer(tiny_model):
            pass


def _examples(n: int = 8):
    colors = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    return [{"image": Image.new("RGB", (32, 32), rgb), "prefix": "answer en what color is the shape?", "suffix": name,
             "answers": [name] * 10, "category": "color"}
            for k in range(n) for name, rgb in [list(colors.items())[k % 2]]]


def test_transfer_steps_train_only_the_new_parts_and_lower_the_error(tiny_model, tiny_processor):
    torch.manual_seed(0)
    model = wrap_lora(tiny_model, LoraConfig(rank=4, alpha=8.0), converted(tiny_model, PAPER["diff_dup_separate"]))
    collate = PaliGemmaCollator(tiny_processor, train=True)
    loader = torch.utils.data.DataLoader(_examples(), batch_size=4, collate_fn=collate)
    probe = model_inputs(collate(_examples(4)), with_labels=False)

    def error() -> float:
        with torch.no_grad(), attention_transfer(model) as errors:
            model(**probe)
        return float(torch.stack(errors).mean())

    new = set(new_attention_names(model))
    assert new and all(".branch2.lora_" in n or ".diff_lambda." in n or ".diff_norm." in n for n in new)
    before_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    before = error()
    module = DiffPaliModule(model, tiny_processor, OptimConfig(lr=2e-2, warmup_steps=0, schedule="constant"),
                            max_new_tokens=3, transfer_steps=6)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 6
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before_params[n])}
    assert changed and changed <= new  # the pretrained branch's LoRA and every other adapter stayed put
    assert error() < before


def _train_config(**overrides) -> TrainConfig:
    return to_typed(OmegaConf.create({"output_dir": ".", **overrides}), TrainConfig)


def test_transfer_steps_are_refused_where_they_cannot_work():
    with pytest.raises(ConfigError, match=r"transfer_steps=5: needs a differential attention"):
        _train_config(transfer_steps=5)
    with pytest.raises(ConfigError, match=r"transfer_steps=5: cannot run with model.activation_checkpointing=true"):
        _train_config(transfer_steps=5, attn={"variant": "diff_split"}, model={"activation_checkpointing": True})
    with pytest.raises(ConfigError, match=r"transfer_steps=-1: must be >= 0"):
        _train_config(transfer_steps=-1)
    assert _train_config(transfer_steps=5, attn={"variant": "diff_split"}).transfer_steps == 5


def test_the_console_names_the_transfer_error_apart_from_the_loss(tiny_model, tiny_processor):
    import io

    from diffpali.progress import ConsoleProgress

    torch.manual_seed(0)
    model = wrap_lora(tiny_model, LoraConfig(rank=4, alpha=8.0), converted(tiny_model, PAPER["diff_dup_separate"]))
    loader = torch.utils.data.DataLoader(_examples(), batch_size=4,
                                         collate_fn=PaliGemmaCollator(tiny_processor, train=True))
    module = DiffPaliModule(model, tiny_processor, OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant"),
                            max_new_tokens=3, transfer_steps=2)
    console = io.StringIO()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ConsoleProgress(console, interactive=True, redraws_per_second=1e9)])
    trainer.fit(module, train_dataloaders=loader)
    lines = [line for line in console.getvalue().split("\r") if line.startswith("step ")]
    assert [("transfer error" in line, ", loss " in line) for line in lines] == [(True, False), (True, False),
                                                                                 (False, True), (False, True)]

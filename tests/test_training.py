"""LoRA fine-tuning through the real Lightning Trainer, and adapter save/reload."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from peft import PeftModel
from PIL import Image

from diffpali.config import LoraConfig, OptimConfig
from diffpali.data.collate import PaliGemmaCollator, model_inputs
from diffpali.lightning_module import DiffPaliModule, warmup_cosine
from diffpali.model import lora_target_regex, wrap_lora


def _examples(n: int = 16):
    colors = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    return [
        {"image": Image.new("RGB", (32, 32), rgb), "prefix": "answer en what color is the shape?", "suffix": name,
         "answers": [name] * 10, "category": "color"}
        for k in range(n) for name, rgb in [list(colors.items())[k % 2]]
    ]


def _loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return model(**model_inputs(batch)).loss.item()


def test_lora_targets_only_the_chosen_projections_of_the_chosen_towers(tiny_model):
    peft_model = wrap_lora(tiny_model, LoraConfig(rank=4, alpha=8, towers=["text"]))
    adapted = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert adapted and all(".language_model." in n for n in adapted)
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {n.rsplit(".", 1)[-1] for n in adapted} == projections
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert "vision_tower" in lora_target_regex(LoraConfig(towers=["vision"]))


def test_a_few_lightning_steps_lower_the_loss(tiny_model, tiny_processor, tmp_path):
    torch.manual_seed(0)
    model = wrap_lora(tiny_model, LoraConfig(rank=8, alpha=16))
    collate = PaliGemmaCollator(tiny_processor, train=True)
    loader = torch.utils.data.DataLoader(_examples(), batch_size=4, shuffle=False, collate_fn=collate)
    probe = collate(_examples(4))
    before = _loss(model, probe)
    module = DiffPaliModule(model, tiny_processor, OptimConfig(lr=5e-3, warmup_steps=0, schedule="constant"),
                            dataset_name="easy_vqa", max_new_tokens=3)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 12
    after = _loss(model, probe)
    # a random tiny base has near-uniform logits (tied 0.02-std embeddings), so the room to fall is
    # small; 0.25 nats is well beyond run-to-run noise (0 here: seeded, CPU)
    assert before - after > 0.25, (before, after)


def test_saved_adapter_reloads_to_identical_logits(tiny_model, tiny_processor, tiny_batch, tmp_path):
    from transformers import PaliGemmaForConditionalGeneration

    base_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = wrap_lora(tiny_model, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():  # make the adapter non-trivial (lora_B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    expected = model(**model_inputs(tiny_batch, with_labels=False)).logits
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    fresh = PaliGemmaForConditionalGeneration(tiny_model.config)
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    got = reloaded(**model_inputs(tiny_batch, with_labels=False)).logits
    assert torch.equal(got, expected)


def test_learning_rate_schedule_warms_up_then_decays():
    assert warmup_cosine(0, 100, 10, "cosine") == 0.1
    assert warmup_cosine(9, 100, 10, "cosine") == 1.0
    assert warmup_cosine(10, 100, 10, "cosine") == 1.0
    assert warmup_cosine(55, 100, 10, "cosine") == 0.5
    assert warmup_cosine(100, 100, 10, "cosine") == 0.0
    assert warmup_cosine(50, 100, 0, "constant") == 1.0


def test_lambda_values_are_read_per_layer_through_the_peft_wrapper(tiny_model):
    from diffpali.config import DiffDupSettings
    from diffpali.surgery import apply_attention, lambda_values

    assert lambda_values(tiny_model) == {}  # vanilla has none
    saved = apply_attention(tiny_model, DiffDupSettings(lambda_std=0.0))
    model = wrap_lora(tiny_model, LoraConfig(rank=4, alpha=8), saved)
    values = lambda_values(model)
    assert sorted(values) == ["text/layer0", "text/layer1", "vision/layer0", "vision/layer1"]
    assert values["text/layer0"] == pytest.approx(0.2)
    assert values["text/layer1"] == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    trained_lambda = "language_model.layers.0.self_attn.diff_lambda.modules_to_save.default"
    with torch.no_grad():  # a change to the trained copy shows: the values come from what trains
        for name, p in model.named_parameters():
            if "modules_to_save" in name and name.endswith(f"{trained_lambda}.lq1"):
                p.fill_(1.0)
            if "modules_to_save" in name and name.endswith(f"{trained_lambda}.lk1"):
                p.fill_(0.1)
    assert lambda_values(model)["text/layer0"] != pytest.approx(0.2)

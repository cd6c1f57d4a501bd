"""QLoRA: ``model.quantization=nf4`` loads the tiny PaliGemma's linear layers in 4 bits (bitsandbytes, an optional
extra: the quantized tests skip without it) and LoRA trains on top; variants that copy projections are refused."""

from __future__ import annotations

import pytest
import torch

from diffpali.config import ConfigError, FfnConfig, LoraConfig, ModelConfig, TrainConfig, TrainerConfig, settings_for
from diffpali.config.commands import check_quantized


@pytest.mark.parametrize("attn, ffn, trainer, key", [
    (settings_for("diff_dup_separate"), FfnConfig(), TrainerConfig(), "attn.variant='diff_dup': copies pretrained q/k"),
    (settings_for("diff_v2"), FfnConfig(), TrainerConfig(), "attn.variant='diff_v2': copies pretrained q/k"),
    (settings_for("vanilla"), FfnConfig(variant="swiglu"), TrainerConfig(), "ffn.variant='swiglu': builds SigLIP"),
    (settings_for("vanilla"), FfnConfig(), TrainerConfig(strategy="fsdp"), "trainer.strategy='fsdp': FSDP cannot"),
])
def test_a_4bit_base_refuses_what_would_copy_or_shard_its_packed_weights(attn, ffn, trainer, key):
    cfg = TrainConfig(model=ModelConfig(quantization="nf4"), attn=attn, ffn=ffn, trainer=trainer)
    with pytest.raises(ConfigError) as info:
        check_quantized(cfg)
    assert str(info.value).startswith(key)


def test_a_4bit_base_allows_the_variants_that_add_no_copy():
    pytest.importorskip("bitsandbytes")
    for attn in (settings_for("vanilla"), settings_for("diff_split"), settings_for("diff_dup_shared")):
        check_quantized(TrainConfig(model=ModelConfig(quantization="nf4"), attn=attn,
                                    ffn=FfnConfig(variant="swiglu", towers=["text"])))


@pytest.mark.parametrize("variant", ["vanilla", "diff_split"])
def test_lora_trains_on_a_4bit_base_and_its_adapter_reloads(variant, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from diffpali.data.collate import PaliGemmaCollator, model_inputs
    from diffpali.model import build_model, load_adapter, load_base, save_adapter

    model_cfg = ModelConfig(quantization="nf4")
    attn, lora = settings_for(variant), LoraConfig(rank=4, alpha=8, dropout=0.0)
    model, processor = build_model(model_cfg, attn, FfnConfig(), lora)
    packed = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any("language_model" in n for n in packed) and any("vision_tower" in n for n in packed)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and "diff" not in n)
    from PIL import Image

    examples = [{"image": Image.new("RGB", (32, 32), (200, 0, 0)), "prefix": "answer en what color?",
                 "suffix": "red", "answers": ["red"] * 10, "category": "color", "question_id": k} for k in range(2)]
    batch = PaliGemmaCollator(processor, train=True)(examples)
    with torch.no_grad():  # validation before training (train.py's sanity check) must leave the base trainable
        model.eval()(**model_inputs(batch, with_labels=False))
    model.train()
    loss = model(**model_inputs(batch)).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # B starts at 0, so A has no gradient yet
    with torch.no_grad():
        for p in model.parameters():  # a step, so the adapter differs from its initialisation
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 1e-2)
    model.eval()
    inputs = model_inputs(PaliGemmaCollator(processor, train=False)(examples), with_labels=False)
    with torch.no_grad():
        expected = model(**inputs).logits
    save_adapter(model, tmp_path / "adapter", {"attn": vars(attn), "ffn": vars(FfnConfig())})
    reloaded = load_adapter(load_base(model_cfg)[0], tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5)

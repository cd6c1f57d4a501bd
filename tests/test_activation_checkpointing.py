"""Activation checkpointing (non-reentrant) with every attention variant, LoRA and both decoders: the same
gradients as without it, while each layer really runs its forward twice."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import small_spec, tiny_paligemma2
from transformers import PaliGemmaForConditionalGeneration

from diffpali.attention import VARIANTS
from diffpali.config import LoraConfig, ModelConfig, settings_for
from diffpali.data.collate import model_inputs
from diffpali.model import enable_activation_checkpointing, wrap_lora
from diffpali.surgery import apply_attention, attention_modules
from diffpali.zoo.tiny import build_config


def base(decoder: str, processor) -> PaliGemmaForConditionalGeneration:
    if decoder == "gemma2":
        return tiny_paligemma2(processor)
    torch.manual_seed(0)
    return PaliGemmaForConditionalGeneration(build_config(small_spec(), processor))


def gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(5)  # LoRA dropout: the same masks in both runs (checkpointing replays them)
    model(**model_inputs(batch)).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("decoder", ["gemma", "gemma2"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpointed_gradients_equal_plain_ones(tiny_processor, tiny_batch, decoder, variant):
    model = base(decoder, tiny_processor)
    saved = apply_attention(model, settings_for(variant))
    with torch.no_grad():  # lambda off its init, so its gradient and the second branch's are not trivial
        for name, param in model.named_parameters():
            if ".diff_lambda." in name:
                param.normal_(0, 0.3)
    twin = copy.deepcopy(model)
    enable_activation_checkpointing(twin)  # where build_model does it: after the variants, before LoRA
    lora = LoraConfig(rank=4, alpha=8.0, dropout=0.1)
    torch.manual_seed(1)
    plain = wrap_lora(model, lora, saved).train()
    torch.manual_seed(1)
    checkpointed = wrap_lora(twin, lora, saved).train()

    calls = []
    for _, module in attention_modules(checkpointed, "text") + attention_modules(checkpointed, "vision"):
        module.register_forward_pre_hook(lambda module, args: calls.append(module))
    expected, got = gradients(plain, tiny_batch), gradients(checkpointed, tiny_batch)
    layers = len(attention_modules(checkpointed, "text")) + len(attention_modules(checkpointed, "vision"))
    assert len(calls) == 2 * layers  # each layer's forward ran again in the backward pass

    assert expected.keys() == got.keys()
    assert any(".lora_B." in n for n in got)
    assert VARIANTS[variant].differential == any("diff_lambda" in n for n in got)
    assert all(g.abs().max() > 0 for n, g in expected.items() if ".lora_B." in n or "diff_lambda" in n)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_activation_checkpointing_is_a_model_switch_off_by_default():
    assert ModelConfig().activation_checkpointing is False

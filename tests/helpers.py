"""Helpers shared by tests and the scripts they run (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from diffpali.config import TinySpec

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

CORPUS = [
    "answer en what color is the shape?",
    "answer en what shape is this?",
    "answer en is there a red circle?",
    "caption en",
    "a red circle",
    "a blue triangle",
    "yes",
    "no",
    "Caption: a red circle. Where is the caption? Top or Bottom?",
]


def small_spec(image_size: int = 32, patch_size: int = 16, layers: int = 2) -> TinySpec:
    """A random-init spec small enough for unit tests (a few hundred thousand parameters)."""
    spec = TinySpec()
    spec.vision.hidden_size, spec.vision.num_hidden_layers = 32, layers
    spec.vision.num_attention_heads, spec.vision.intermediate_size = 2, 64
    spec.vision.image_size, spec.vision.patch_size = image_size, patch_size
    spec.text.hidden_size, spec.text.num_hidden_layers = 32, layers
    spec.text.num_attention_heads, spec.text.num_key_value_heads, spec.text.head_dim = 4, 1, 16
    spec.text.intermediate_size, spec.text.vocab_size = 64, 300
    return spec


def smoke_model(cache: Path) -> list[str]:
    """A one-layer tiny spec: its key differs from the shipped base, so it is built on first use."""
    return [
        f"model.cache_dir={cache}",
        "model.tiny.stage0.steps=2",
        "model.tiny.stage0.batch_size=8",
        "model.tiny.stage1.steps=3",
        "model.tiny.stage1.batch_size=8",
        "model.tiny.vision.image_size=32",
        "model.tiny.stage1.match_layer=1",
        "model.tiny.vision.hidden_size=32",
        "model.tiny.vision.intermediate_size=64",
        "model.tiny.vision.num_hidden_layers=1",
        "model.tiny.text.hidden_size=32",
        "model.tiny.text.intermediate_size=64",
        "model.tiny.text.num_hidden_layers=1",
    ]


SMOKE_DATA = ["data.train_limit=48", "data.val_limit=16", "data.test_limit=40", "data.batch_size=8",
              "data.eval_batch_size=16"]


def diff_dup_lora_model(layers: int = 2):
    """A seeded random tiny PaliGemma with diff_dup attention and LoRA r4 (what the multi-process scripts train),
    and its processor. Imports torch and transformers: for test scripts, not for collecting tests."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    from diffpali.config import DiffDupSettings, FfnConfig, LoraConfig
    from diffpali.model import apply_variants, wrap_lora
    from diffpali.zoo.tiny import build_config, build_processor, train_tokenizer

    spec = small_spec(layers=layers)
    processor = build_processor(train_tokenizer(CORPUS, spec.text.vocab_size), spec)
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(build_config(spec, processor))
    saved = apply_variants(model, DiffDupSettings(), FfnConfig())
    return wrap_lora(model, LoraConfig(rank=4, alpha=8), saved), processor


def tiny_paligemma2(processor, seed: int = 0):
    """The ``tiny_paligemma2`` architecture (Gemma 2 decoder: soft-caps, sliding window, query_pre_attn_scalar)
    with random float32 weights, sized to ``processor``'s vocabulary and image. Imports torch: for tests only."""
    from dataclasses import replace

    import torch

    from diffpali.config.architectures import ARCHITECTURES
    from diffpali.zoo.architecture import build_random

    arch = ARCHITECTURES["tiny_paligemma2"]
    arch = replace(arch, vision=replace(arch.vision, image_size=processor.image_processor.size["height"]),
                   text=replace(arch.text, vocab_size=len(processor.tokenizer)))
    return build_random(arch, torch.float32, seed=seed, image_token_index=processor.image_token_id)


def sharpen_text_logits(model, factor: float = 40.0) -> None:
    """Scale the decoder's query and key weights so its attention logits reach past Gemma 2's soft-cap of 50
    (a random init's are ~1, where tanh(s / 50) * 50 is s to within 1e-4)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".language_model." in name and (".q_proj." in name or ".k_proj." in name) and name.endswith("weight"):
                param.mul_(factor)


def compose_train(*overrides: str):
    """``train.py``'s config for these overrides as Hydra composes it (a DictConfig; ``to_typed`` checks it)."""
    from hydra import compose, initialize_config_dir

    from diffpali.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))

"""Shared fixtures: tiny PaliGemma models built with the real transformers classes, offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: tiny models gain nothing from two, and lose much when the other core is busy.
torch.set_num_threads(1)

from diffpali.config import TinySpec  # noqa: E402
from diffpali.zoo.tiny import build_config, build_processor, train_tokenizer  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_processor():
    spec = small_spec()
    return build_processor(train_tokenizer(CORPUS, spec.text.vocab_size), spec)


@pytest.fixture
def tiny_model(tiny_processor):
    """A fresh random tiny PaliGemmaForConditionalGeneration (fp32, eval mode, seeded)."""
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(build_config(small_spec(), tiny_processor))
    return model.eval()


@pytest.fixture
def tiny_batch(tiny_processor):
    """A padded training batch of 3 examples (different prompt lengths) from the real processor."""
    from PIL import Image

    from diffpali.data.collate import PaliGemmaCollator

    colors = [(255, 0, 0), (0, 0, 255), (0, 128, 0)]
    examples = [
        {"image": Image.new("RGB", (40, 40), c), "prefix": p, "suffix": s}
        for c, p, s in zip(
            colors,
            ["answer en what color is the shape?", "caption en", "answer en is there a red circle?"],
            ["red", "a blue triangle", "no"],
        )
    ]
    return PaliGemmaCollator(tiny_processor, train=True)(examples)

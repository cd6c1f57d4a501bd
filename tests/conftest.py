"""Shared fixtures: tiny PaliGemma models built with the real transformers classes, offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: tiny models gain nothing from two, and lose much when the other core is busy.
torch.set_num_threads(1)

from helpers import CORPUS, small_spec  # noqa: E402

from diffpali.zoo.tiny import build_config, build_processor, train_tokenizer  # noqa: E402


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

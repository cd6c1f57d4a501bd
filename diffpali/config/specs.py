"""The tiny zoo model's architecture and pretraining recipe (``model.tiny``): the key of a built base."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .attn import AttnSettings, attn_settings
from .rules import fail


@dataclass
class VisionSpec:
    """SigLIP vision tower of the tiny zoo model."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    #: input side in pixels: 128 keeps a 2x2 haystack's cells at easy-vqa's native 64 px and a 4x4's at 32 px
    image_size: int = 128
    patch_size: int = 16  #: 8 x 8 = 64 image tokens; a 4x4 grid cell is 2 x 2 patches


@dataclass
class TextSpec:
    """Gemma text decoder of the tiny zoo model."""

    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 1  #: multi-query, as in Gemma 2B
    head_dim: int = 32
    intermediate_size: int = 512
    vocab_size: int = 768  #: BPE vocabulary trained locally, before PaliGemma's extra tokens


@dataclass
class Stage0Spec:
    """Stage 0: the vision tower alone, per-token label heads on drawn scenes (thrown away after)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3


#: The tasks of stage 1's mixture (zoo/mixture.py).
STAGE1_TASKS = ("vqa", "vqa_drawn", "caption", "exist", "count", "where", "needle", "detect")
#: Share of easy-vqa TRAIN images stage 1's ``vqa`` task holds out (the first of ``easy_vqa``'s fixed permutation):
#: a fine-tune whose ``data.val_fraction`` is at most this validates only on images the base never saw.
STAGE1_VAL_FRACTION = 0.1


def _stage1_opening() -> dict[str, float]:
    return {"caption": 0.6, "vqa_drawn": 0.2, "detect": 0.2}


def _stage1_weights() -> dict[str, float]:
    return {"vqa": 0.15, "vqa_drawn": 0.15, "caption": 0.04, "exist": 0.1, "count": 0.02,
            "where": 0.24, "needle": 0.2, "detect": 0.1}


@dataclass
class Stage1Spec:
    """Stage 1: projector and decoder on the multimodal mixture (``zoo/mixture.py``), the tower frozen."""

    steps: int = 9000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    #: share of examples per task: vqa, vqa_drawn, caption, exist, count, where, needle, detect (needle,
    #: whose prompt is long, gets batches of its own; the others are mixed within batches)
    weights: dict[str, float] = field(default_factory=_stage1_weights)
    #: the mixture of the first ``opening_steps`` steps: captions, which teach the decoder to read the image
    opening: dict[str, float] = field(default_factory=_stage1_opening)
    opening_steps: int = 300
    #: decoder hidden state (0 = embeddings) the training-only match head reads: after the first layer, so
    #: that layer binds words to image tokens and the later ones read the answer off them
    match_layer: int = 1
    match_weight: float = 1.0  #: weight of the match head's loss; 0 turns it off
    vision_lr_scale: float = 0.0  #: the tower's learning rate as a share of ``lr``; 0 keeps stage 0's tower frozen


def _vanilla_attn() -> dict[str, Any]:
    return {"variant": "vanilla", "towers": ["vision", "text"]}


@dataclass
class TinySpec:
    """Architecture and pretraining recipe of the offline tiny PaliGemma.

    The directory of a built base is keyed by a hash of this whole spec, so changing any field
    builds (and caches) a new base instead of silently reusing one trained for other settings.
    """

    vision: VisionSpec = field(default_factory=VisionSpec)
    text: TextSpec = field(default_factory=TextSpec)
    stage0: Stage0Spec = field(default_factory=Stage0Spec)
    stage1: Stage1Spec = field(default_factory=Stage1Spec)
    seed: int = 0  #: initialisation and every data stream of the build
    #: the attention the base is pretrained with, from the first step: an ``attn`` record (``variant`` and that
    #: variant's knobs, as ``attn=<option> attn.<knob>=...`` give); vanilla: the stock attention, a stock base
    attn: dict[str, Any] = field(default_factory=_vanilla_attn)

    def attention(self, key: str = "attn") -> AttnSettings:
        """The typed settings of ``attn``: an unknown variant or knob, or a bad value, fails naming ``key``."""
        settings = attn_settings(self.attn, key)
        settings.validate(key)
        if getattr(settings, "lambda_warmup_steps", 0):  # the ramp is a fine-tune's callback; a build has none
            fail(f"{key}.lambda_warmup_steps", settings.lambda_warmup_steps, "must be 0 in a base pretrained from "
                 "scratch (the warm-up eases a retrofit in; a build trains lambda from the first step)")
        return settings

"""A real PaliGemma architecture with random weights: the full model without a download.

The numbers come from :mod:`diffpali.config.architectures`; the classes are transformers' own
(SigLIP, Gemma or Gemma 2, PaliGemma), so a model built here runs every code path a checkpoint
from the Hub would. It is built directly on its device: on the meta device followed by
``to_empty()`` the non-persistent buffers (SigLIP's position ids, the rotary frequencies) would
stay uninitialised.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    SiglipVisionConfig,
)

from ..config.architectures import PALIGEMMA_TOKENIZER_SIZE, Architecture

#: Gemma's special token ids, as in the Hub's configs.
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2


def paligemma_config(arch: Architecture, image_token_index: int = PALIGEMMA_TOKENIZER_SIZE,
                     vocab_size: int | None = None) -> PaliGemmaConfig:
    """The ``PaliGemmaConfig`` of ``arch`` (``vocab_size`` overrides the decoder's embedding rows)."""
    v, t = arch.vision, arch.text
    vision = SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, patch_size=v.patch_size, image_size=v.image_size,
        projection_dim=t.hidden_size, vision_use_head=False,
    )
    common = dict(
        vocab_size=vocab_size or t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, max_position_embeddings=8192,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    if t.family == "gemma2":
        text = Gemma2Config(**common, query_pre_attn_scalar=t.query_pre_attn_scalar,
                            attn_logit_softcapping=t.attn_logit_softcapping,
                            final_logit_softcapping=t.final_logit_softcapping, sliding_window=t.sliding_window)
    else:
        text = GemmaConfig(**common)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_index=image_token_index, projection_dim=t.hidden_size,
                             hidden_size=t.hidden_size)
    config.text_config.vocab_size = vocab_size or t.vocab_size
    config.vision_config.projection_dim = t.hidden_size
    return config


def build_random(arch: Architecture, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                 seed: int = 0, **config_kwargs) -> PaliGemmaForConditionalGeneration:
    """``arch`` with random weights (transformers' own init), built in ``dtype`` on ``device``."""
    config = paligemma_config(arch, **config_kwargs)
    torch.manual_seed(seed)
    with torch.device(device):
        model = PaliGemmaForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()

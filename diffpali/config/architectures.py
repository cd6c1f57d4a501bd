"""The real PaliGemma architectures, as numbers written in the repository (no download, no torch).

Each entry gives what a model config on the Hub says about one checkpoint: the SigLIP tower, the
Gemma or Gemma 2 decoder and the image size. They serve three things that must work without the
weights: building the full architecture with random weights (a rehearsal on any machine), the memory
plan before anything loads, and FLOP counts in benchmarks. ``depth`` cuts both towers to fewer layers
to check the shapes of models too large for the machine at hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

#: The Gemma tokenizer (256,000 pieces) plus PaliGemma's 1,024 <loc> and 128 <seg> tokens.
PALIGEMMA_TOKENIZER_SIZE = 257_152
#: Rows of the Hub checkpoints' embedding (the tokenizer padded to a multiple of 64).
PALIGEMMA_VOCAB_ROWS = 257_216


@dataclass(frozen=True)
class VisionArch:
    """A SigLIP vision tower (PaliGemma uses So400m/14 without its pooling head)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 224

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class TextArch:
    """A Gemma (``gemma``) or Gemma 2 (``gemma2``) decoder."""

    family: str = "gemma"  #: gemma | gemma2
    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_hidden_layers: int = 18
    num_attention_heads: int = 8
    num_key_value_heads: int = 1
    head_dim: int = 256
    vocab_size: int = PALIGEMMA_VOCAB_ROWS
    #: gemma2: logits scaled by query_pre_attn_scalar ** -0.5 (not always head_dim ** -0.5)
    query_pre_attn_scalar: Optional[int] = None
    attn_logit_softcapping: Optional[float] = None  #: gemma2: tanh(s / cap) * cap before the softmax
    final_logit_softcapping: Optional[float] = None  #: gemma2: the same on the output logits
    sliding_window: Optional[int] = None  #: gemma2: the window of every other layer


@dataclass(frozen=True)
class Architecture:
    """One PaliGemma checkpoint's shape, and the Hub id whose config it copies."""

    hub_id: str
    vision: VisionArch
    text: TextArch

    def at_depth(self, layers: Optional[int]) -> "Architecture":
        """The same widths with each tower cut to ``layers`` layers (None: the full depth)."""
        if layers is None:
            return self
        return replace(self, vision=replace(self.vision, num_hidden_layers=layers),
                       text=replace(self.text, num_hidden_layers=layers))


GEMMA_2B = TextArch()
GEMMA2_2B = TextArch(family="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                     attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096)
GEMMA2_9B = replace(GEMMA2_2B, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                    num_attention_heads=16, num_key_value_heads=8)
GEMMA2_27B = replace(GEMMA2_2B, hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                     num_attention_heads=32, num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144)


#: A tiny PaliGemma 2 with random weights, offline: small widths, every Gemma 2 feature switched on and
#: made to matter at test lengths (a 16-dim head scaled by 24 ** -0.5, a window of 8 tokens on the first
#: of each two layers, two KV heads for four query heads), and the vocabulary and 128 px image of the
#: tiny processor shipped with diffpali (1,731 tokens, 64 image tokens).
TINY_PALIGEMMA2 = Architecture(
    "",  # no Hub checkpoint
    VisionArch(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, patch_size=16,
               image_size=128),
    replace(GEMMA2_2B, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=1731, query_pre_attn_scalar=24, sliding_window=8),
)


def _at(size: int) -> VisionArch:
    return VisionArch(image_size=size)


#: Every architecture a ``model=`` config can name, by that config's ``model.architecture``.
ARCHITECTURES: dict[str, Architecture] = {
    "paligemma_3b_224": Architecture("google/paligemma-3b-pt-224", _at(224), GEMMA_2B),
    "paligemma_3b_448": Architecture("google/paligemma-3b-pt-448", _at(448), GEMMA_2B),
    "paligemma_3b_896": Architecture("google/paligemma-3b-pt-896", _at(896), GEMMA_2B),
    "paligemma2_3b_224": Architecture("google/paligemma2-3b-pt-224", _at(224), GEMMA2_2B),
    "paligemma2_3b_448": Architecture("google/paligemma2-3b-pt-448", _at(448), GEMMA2_2B),
    "paligemma2_3b_896": Architecture("google/paligemma2-3b-pt-896", _at(896), GEMMA2_2B),
    "paligemma2_10b_224": Architecture("google/paligemma2-10b-pt-224", _at(224), GEMMA2_9B),
    "paligemma2_10b_448": Architecture("google/paligemma2-10b-pt-448", _at(448), GEMMA2_9B),
    "paligemma2_28b_448": Architecture("google/paligemma2-28b-pt-448", _at(448), GEMMA2_27B),
    "tiny_paligemma2": TINY_PALIGEMMA2,
}

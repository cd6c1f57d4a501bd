"""PaliGemma's two towers, described once: where their modules live, which attention classes they use,
and the sub-config key transformers selects their attention implementation by. The attention
surgery, the FFN swap, LoRA's targets and the attention recorder all read :data:`TOWER_TABLE`; the
config checks the tower names (``diffpali.config.TOWERS``) with ``check_towers``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaAttention
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention
from transformers.models.siglip.modeling_siglip import SiglipAttention

from .config import TOWERS


@dataclass(frozen=True)
class Tower:
    """One tower of PaliGemmaForConditionalGeneration."""

    name: str  #: the config's name for it: vision | text
    prefix: str  #: module-name prefix inside PaliGemmaForConditionalGeneration
    attention: tuple[type[nn.Module], ...]  #: its attention module classes (one per model generation)
    config_key: str  #: the sub-config key ``set_attn_implementation`` takes

    @property
    def pattern(self) -> str:
        """The prefix as a regex."""
        return re.escape(self.prefix)

    def attention_names(self) -> str:
        return " or ".join(cls.__name__ for cls in self.attention)


#: Every tower, by name (text first: the order lambdas are logged in).
TOWER_TABLE: dict[str, Tower] = {
    "text": Tower("text", "model.language_model.", (GemmaAttention, Gemma2Attention), "text_config"),
    "vision": Tower("vision", "model.vision_tower.", (SiglipAttention,), "vision_config"),
}

if sorted(TOWER_TABLE) != sorted(TOWERS):
    raise TypeError(f"towers table {sorted(TOWER_TABLE)} and the config's towers {sorted(TOWERS)} disagree")

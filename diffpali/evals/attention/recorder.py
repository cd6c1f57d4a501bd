"""Explicit attention maps of the text decoder, for analysis only.

The registered kernels (:mod:`diffpali.attention`, transformers' ``sdpa``) never build an N x N map.
:func:`record_attention` swaps the text tower, for the duration of a ``with`` block, to a recording
implementation: it runs each layer's own variant kernel (the very same code as the fast path) with an
eager ``attend`` that computes the softmax map explicitly and keeps it. On exit the model is switched
back to the implementation it had, so the default path is never touched outside the block.

Recorded per text layer (float32, detached, on the model's device):

- ``effective``: the map the layer applies to V. Vanilla: softmax(Q K^T s). Differential:
  softmax(Q1 K1^T s) - lambda softmax(Q2 K2^T s); its rows sum to 1 - lambda and may hold negative
  entries.
- ``branches``: the two softmax maps of a differential layer (None for vanilla), and ``lam`` (a
  float, or per head and query token for DIFF V2).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface

from ...attention import VARIANTS, Vanilla
from ...surgery import IMPLEMENTATION_PREFIX, TOWERS, variant_mask

#: Stock text implementations the recorder can stand in for (besides diffpali's own).
STOCK = ("sdpa", "eager")
RECORD_IMPLEMENTATION = "diffpali_record"


@dataclass
class LayerMaps:
    """One text layer's maps for one forward, each (batch, heads, queries, keys)."""

    effective: torch.Tensor
    branches: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    lam: Any = None  #: float; DIFF V2: (batch, heads, queries)


class AttentionRecorder:
    """Collects :class:`LayerMaps` by text-layer depth during the forwards of a ``with`` block."""

    def __init__(self, depths: dict[int, int]):
        self._depths = depths  # id(attention module) -> its 0-based depth in the text tower
        self.layers: dict[int, LayerMaps] = {}

    def store(self, module: nn.Module, maps: LayerMaps) -> None:
        depth = self._depths.get(id(module))
        if depth is None:
            raise RuntimeError(f"{type(module).__name__} is not a text attention layer of the recorded model")
        self.layers[depth] = maps

    def take(self) -> dict[int, LayerMaps]:
        """The maps of the last forward, by depth; clears them so the next forward starts empty."""
        layers, self.layers = dict(sorted(self.layers.items())), {}
        return layers


_ACTIVE: Optional[AttentionRecorder] = None


def _softmax_map(query: torch.Tensor, key: torch.Tensor, mask: Optional[torch.Tensor], scaling: float,
                 is_causal: bool, softcap: Optional[float] = None) -> torch.Tensor:
    """softmax(Q K^T s) in float32 with the mask semantics of transformers' SDPA path.

    A bool mask keeps True; a float mask is added; no mask with ``is_causal`` and several queries
    means SDPA's upper-left causal mask. Masked scores get the float32 minimum, not -inf, so a fully
    masked (padding) row is uniform rather than NaN and cannot poison the rows that matter.
    ``softcap`` (Gemma 2): the logits become tanh(s / cap) * cap before the mask, as in stock eager.
    """
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    lowest = torch.finfo(torch.float32).min
    if mask is not None:
        scores = scores.masked_fill(~mask, lowest) if mask.dtype == torch.bool else scores + mask.float()
    elif is_causal and query.shape[2] > 1:
        q, k = query.shape[2], key.shape[2]
        causal = torch.arange(q, device=scores.device)[:, None] >= torch.arange(k, device=scores.device)[None, :]
        scores = scores.masked_fill(~causal, lowest)
    return torch.softmax(scores, dim=-1)


def _apply(attn: torch.Tensor, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """attn @ V as SDPA returns it: (batch, seq, heads, dim) in the input dtype."""
    value = repeat_kv(value, attn.shape[1] // value.shape[1])
    return torch.matmul(attn, value.float()).to(like.dtype).transpose(1, 2).contiguous()


def _recording_attention(module: nn.Module, query, key, value, attention_mask, *, scaling: float, dropout: float = 0.0,
                         is_causal: Optional[bool] = None, softcap: Optional[float] = None,
                         **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The layer's own variant kernel, attending eagerly; the maps it attends with are recorded."""
    if dropout:
        raise RuntimeError(f"attention recording needs the model in eval mode (attention dropout={dropout})")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    variant = getattr(module, "diffpali_variant", None) or Vanilla
    maps: list[torch.Tensor] = []

    def attend(q, k, v, mask, scale):
        attn = _softmax_map(q, k, mask, scale, causal, softcap)
        maps.append(attn)
        return _apply(attn, v, q)

    output = variant.kernel(module, query, key, value, attention_mask, scaling, attend)
    if _ACTIVE is not None:
        effective, branches, lam = variant.combine_maps(module, maps)
        _ACTIVE.store(module, LayerMaps(effective.detach(), tuple(b.detach() for b in branches) if branches else None,
                                        lam.detach() if isinstance(lam, torch.Tensor) else lam))
    return output, None


def _register() -> None:
    AttentionInterface.register(RECORD_IMPLEMENTATION, _recording_attention)
    AttentionMaskInterface.register(RECORD_IMPLEMENTATION, variant_mask)  # the mask every replaced kernel gets


def bare_model(model: nn.Module) -> nn.Module:
    """The PaliGemmaForConditionalGeneration inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_layers(model: nn.Module) -> list[nn.Module]:
    """The text tower's attention modules in depth order (bare or peft-wrapped model)."""
    prefix, cls, _ = TOWERS["text"]
    return [m for n, m in bare_model(model).named_modules() if n.startswith(prefix) and isinstance(m, cls)]


def text_implementation(model: nn.Module) -> str:
    return bare_model(model).config.text_config._attn_implementation


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecorder]:
    """Inside the block, every forward records each text layer's maps (see the module docstring).

    Refuses to nest, and to run on a text implementation without an eager twin (e.g. flash attention).
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("record_attention is already active; blocks do not nest")
    original = text_implementation(model)
    supported = (*STOCK, *(IMPLEMENTATION_PREFIX + key for key, v in VARIANTS.items() if v.differential))
    if original not in supported:
        raise ValueError(f"text attention implementation {original!r} cannot be recorded; "
                         f"supported: {', '.join(supported)}")
    base = bare_model(model)
    _register()
    recorder = AttentionRecorder({id(m): depth for depth, m in enumerate(text_layers(model))})
    base.set_attn_implementation({TOWERS["text"][2]: RECORD_IMPLEMENTATION})
    _ACTIVE = recorder
    try:
        yield recorder
    finally:
        _ACTIVE = None
        base.set_attn_implementation({TOWERS["text"][2]: original})

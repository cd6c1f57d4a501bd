"""Explicit attention maps of the text decoder, for analysis only.

The registered kernels (:mod:`diffpali.attention`, transformers' ``sdpa``) never build an N x N map.
:func:`record_attention` swaps the text tower, for the duration of a ``with`` block, to eager twins
registered under their own names: each computes the softmax map(s) explicitly, records them, and
returns the same output as the kernel it replaces (the differential combination and head norm are
the very same function, :func:`diffpali.attention._differential`). On exit the model is switched back
to the implementation it had, so the default path is never touched outside the block.

Recorded per text layer (float32, detached, on the model's device):

- ``effective``: the map the layer applies to V. Vanilla: softmax(Q K^T s). Differential:
  softmax(Q1 K1^T s) - lambda softmax(Q2 K2^T s); its rows sum to 1 - lambda and may hold negative
  entries.
- ``branches``: the two softmax maps of a differential layer (None for vanilla), and ``lam``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..attention import _differential, split_halves
from ..surgery import TOWERS

#: The text implementations the recorder has an eager twin for: name -> kind of map.
KINDS: dict[str, str] = {
    "sdpa": "plain",
    "eager": "plain",
    "diffpali_diff_split": "split",
    "diffpali_diff_dup_shared": "shared",
    "diffpali_diff_dup_separate": "separate",
}
RECORD_PREFIX = "diffpali_record_"


@dataclass
class LayerMaps:
    """One text layer's maps for one forward, each (batch, heads, queries, keys)."""

    effective: torch.Tensor
    branches: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    lam: Optional[float] = None


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
                 is_causal: bool) -> torch.Tensor:
    """softmax(Q K^T s) in float32 with the mask semantics of transformers' SDPA path.

    A bool mask keeps True; a float mask is added; no mask with ``is_causal`` and several queries
    means SDPA's upper-left causal mask. Masked scores get the float32 minimum, not -inf, so a fully
    masked (padding) row is uniform rather than NaN and cannot poison the rows that matter.
    """
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
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


def _eager_twin(kind: str) -> Callable[..., tuple[torch.Tensor, None]]:
    """An AttentionInterface function computing the maps of ``kind`` explicitly and recording them."""

    def attention(module: nn.Module, query, key, value, attention_mask, *, scaling: float, dropout: float = 0.0,
                  is_causal: Optional[bool] = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if dropout:
            raise RuntimeError(f"attention recording needs the model in eval mode (attention dropout={dropout})")
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        if kind == "plain":
            attn = _softmax_map(query, key, attention_mask, scaling, causal)
            output, maps = _apply(attn, value, query), LayerMaps(attn)
        else:
            if kind == "split":
                first, second = split_halves(key.shape[-1], key)
                half = scaling * math.sqrt(2.0)
                attn1 = _softmax_map(query, key * first, attention_mask, half, causal)
                attn2 = _softmax_map(query, key * second, attention_mask, half, causal)
            elif kind == "shared":
                attn1 = attn2 = _softmax_map(query, key, attention_mask, scaling, causal)
            else:  # separate: [Q1; Q2] and [K1; K2] arrive as extra heads
                query1, query2 = query.chunk(2, dim=1)
                key1, key2 = key.chunk(2, dim=1)
                attn1 = _softmax_map(query1, key1, attention_mask, scaling, causal)
                attn2 = _softmax_map(query2, key2, attention_mask, scaling, causal)
                query = query1
            with torch.no_grad():
                lam = float(module.diff_lambda())
            output = _differential(module, _apply(attn1, value, query), _apply(attn2, value, query))
            maps = LayerMaps(attn1 - lam * attn2, (attn1, attn2), lam)
        if _ACTIVE is not None:
            _ACTIVE.store(module, LayerMaps(maps.effective.detach(),
                                            tuple(b.detach() for b in maps.branches) if maps.branches else None,
                                            maps.lam))
        return output, None

    return attention


def _register_twins() -> None:
    for name, kind in KINDS.items():
        AttentionInterface.register(RECORD_PREFIX + name, _eager_twin(kind))
        AttentionMaskInterface.register(RECORD_PREFIX + name, sdpa_mask)  # the mask every replaced kernel gets


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
    if original not in KINDS:
        raise ValueError(f"text attention implementation {original!r} cannot be recorded; "
                         f"supported: {', '.join(KINDS)}")
    base = bare_model(model)
    _register_twins()
    recorder = AttentionRecorder({id(m): depth for depth, m in enumerate(text_layers(model))})
    base.set_attn_implementation({TOWERS["text"][2]: RECORD_PREFIX + original})
    _ACTIVE = recorder
    try:
        yield recorder
    finally:
        _ACTIVE = None
        base.set_attn_implementation({TOWERS["text"][2]: original})

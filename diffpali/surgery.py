"""Apply an attention variant to a loaded PaliGemma or PaliGemma 2, through transformers' attention plug-in points.

Each variant's kernel (:data:`diffpali.attention.VARIANTS`) is registered as an ``AttentionInterface``
function and selected per tower with ``set_attn_implementation``; the attention modules keep their
stock forward. Its ``attend`` is transformers' SDPA wrapper, except for a module that soft-caps its
logits (Gemma 2 passes ``softcap=``): SDPA cannot soft-cap, so there ``attend`` is Gemma 2's own eager
attention, soft-capping every branch's logits before its softmax, with the layer's own mask (full or
sliding window) as stock eager builds it. The name is not saved
in ``config.json``, so every process that builds or reloads a model must run :func:`apply_attention`
(or at least :func:`ensure_registered`, which importing this module also does).

A variant with a second query or key branch replaces ``q_proj``/``k_proj`` by a projection that
returns both branches as extra heads: the stock rotary rotates them, and the stock KV cache (a
``DynamicCache`` concatenates along the sequence only) stores a second key beside the first,
whatever the installed transformers calls the cache argument. A static/preallocated cache, sized for
the config's KV heads, is not supported with such a branch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as softcapped_eager_forward

from .attention import VARIANTS, AttentionVariant, variant_for
from .branches import DiffLambda, TokenLambda
from .config import AttnSettings
from .towers import TOWER_TABLE

IMPLEMENTATION_PREFIX = "diffpali_"


def implementation_name(variant: type[AttentionVariant]) -> str:
    """The name a differential variant's kernel is registered under (vanilla registers nothing: it keeps the
    model's stock implementation, ``sdpa``, or ``eager`` on Gemma 2)."""
    return IMPLEMENTATION_PREFIX + variant.name


def variant_mask(*args, config=None, **kwargs) -> Optional[torch.Tensor]:
    """The mask function registered with every variant: the one stock transformers would use for ``config``.

    A soft-capped decoder (Gemma 2) runs eager in stock transformers, so it gets the eager mask (float,
    0 or the dtype's minimum, never skipped for ``is_causal``), which its eager ``attend`` adds to the
    soft-capped logits exactly as stock does; everything else gets the SDPA mask. transformers builds
    the pattern itself (causal, sliding window, PaliGemma's bidirectional prefix, padding) and passes
    it here as ``mask_function``, so each layer gets its own full or sliding-window mask.
    """
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return eager_mask(*args, config=config, **kwargs)
    return sdpa_mask(*args, config=config, **kwargs)


def kernel_function(variant: type[AttentionVariant]) -> Callable:
    """``variant.kernel`` as an ``AttentionInterface`` function: SDPA ``attend``, or a soft-capping eager one."""

    def attention(module: nn.Module, query, key, value, attention_mask, *, scaling: float, dropout: float = 0.0,
                  softcap: Optional[float] = None, **kwargs) -> tuple[torch.Tensor, None]:
        if softcap is None:
            def attend(q, k, v, mask, scale):
                return sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scale, **kwargs)[0]
        else:  # Gemma 2: tanh(s / cap) * cap on each call's logits, i.e. on each branch before its softmax
            def attend(q, k, v, mask, scale):
                return softcapped_eager_forward(module, q, k, v, mask, dropout=dropout, scaling=scale,
                                                softcap=softcap)[0]

        out = variant.kernel(module, query, key, value, attention_mask, scaling, attend)
        losses = getattr(module, "diffpali_transfer", None)
        if losses is None:
            return out, None
        # attention transfer: score this layer against the pretrained one, and pass the pretrained output on,
        # so every layer learns from the inputs the pretrained model gives it (not from its converted neighbours)
        target = variant.teacher(module, query, key, value, attention_mask, scaling, attend).detach()
        losses.append(relative_error(out, target))
        return target, None

    attention.__name__ = f"{variant.name}_attention"
    return attention


#: Registered attention implementations, by name (filled from VARIANTS by :func:`ensure_registered`).
IMPLEMENTATIONS: dict[str, Callable] = {}


def ensure_registered() -> None:
    """Register every differential variant's attention function and its mask function with transformers.

    Idempotent, and it picks up variants added to VARIANTS since the last call. The mask function
    matters as much as the attention one: for a name missing from ``AttentionMaskInterface``
    transformers builds no mask at all and the decoder sees the future.
    """
    for variant in VARIANTS.values():
        name = implementation_name(variant)
        if variant.differential and name not in IMPLEMENTATIONS:
            IMPLEMENTATIONS[name] = kernel_function(variant)
            AttentionInterface.register(name, IMPLEMENTATIONS[name])
            AttentionMaskInterface.register(name, variant_mask)


def attention_modules(model: nn.Module, tower: str) -> list[tuple[str, nn.Module]]:
    """(name, module) of a tower's attention modules, in depth order (bare or peft-wrapped model)."""
    spec = TOWER_TABLE[tower]
    # a peft wrapper prepends "base_model.model." to the names, hence `in`, not startswith
    found = [(n, m) for n, m in model.named_modules() if spec.prefix in n and isinstance(m, spec.attention)]
    if not found:
        raise NotImplementedError(
            f"attn.towers={tower}: no {spec.attention_names()} under '{spec.prefix}'; diff variants support "
            "PaliGemma and PaliGemma 2 (Gemma or Gemma 2 text, SigLIP vision) only"
        )
    return found


def apply_attention(model: nn.Module, cfg: AttnSettings) -> list[str]:
    """Swap in the variant ``cfg`` selects on the towers in ``cfg.towers`` of a PaliGemmaForConditionalGeneration.

    Returns the child-module names peft must train and save whole (``modules_to_save``), e.g.
    ``diff_lambda`` and ``diff_norm``. Second branches are frozen copies meant to receive LoRA
    adapters like the pretrained projections; they are not returned here. ``vanilla`` touches nothing.
    """
    variant = variant_for(cfg)
    if not variant.differential:
        return []
    ensure_registered()
    saved: set[str] = set()
    for tower in cfg.towers:
        for depth, (name, module) in enumerate(attention_modules(model, tower)):
            if getattr(module, "diffpali_variant", None) is not None:
                # a base pretrained with this very variant (zoo.variant_base) keeps it: nothing to attach
                if module.diffpali_variant is variant and module.diffpali_settings == cfg:
                    saved.update(module.diffpali_saved)
                    continue
                raise RuntimeError(f"{name} already has a differential attention ({module.diffpali_settings}); "
                                   "apply_attention converts a layer once")
            module.diffpali_saved = variant.attach(name, module, depth, cfg)
            module.diffpali_variant, module.diffpali_settings = variant, cfg
            saved.update(module.diffpali_saved)
    model.set_attn_implementation({TOWER_TABLE[tower].config_key: implementation_name(variant) for tower in cfg.towers})
    return sorted(saved)


def relative_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the target's mean square, in float32: layers of any scale weigh alike."""
    output, target = output.float(), target.float()
    return (output - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


@contextmanager
def attention_transfer(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within it, each converted layer outputs what the pretrained layer would and appends to the list it
    yields the relative error (:func:`relative_error`) of its own output: the loss of attention transfer.

    The variant's output depends on the pretrained one only through Q, K and V, which come from the
    pretrained stream, so each layer's error has gradients for that layer's new parts alone.
    """
    layers = [m for m in model.modules() if getattr(m, "diffpali_variant", None) is not None]
    if not layers:
        raise ValueError("attention transfer needs a differential attention: this model has no converted layer")
    losses: list[torch.Tensor] = []
    for layer in layers:
        layer.diffpali_transfer = losses
    try:
        yield losses
    finally:
        for layer in layers:
            layer.diffpali_transfer = None


def set_lambda_ramp(model: nn.Module, ramp: float) -> int:
    """Set the warm-up ramp (0 to 1) of every lambda that has one (``attn.lambda_warmup_steps``); returns how many.

    Every copy is set, peft's trained copy (``modules_to_save``) and the original it wraps alike.
    """
    count = 0
    for module in model.modules():
        buffer = module._buffers.get("ramp") if isinstance(module, (DiffLambda, TokenLambda)) else None
        if buffer is not None:
            buffer.fill_(ramp)
            count += 1
    return count


def lambda_values(model: nn.Module) -> dict[str, float]:
    """Current lambda of every converted layer, keyed ``{tower}/layer{depth}`` (empty for vanilla).

    A lambda that varies by token (DIFF V2) is its mean over the last forward's tokens, with its
    spread under ``{tower}/layer{depth}/std``. Works on a bare or peft-wrapped model: the lambda
    modules are called (peft forwards calls to the trained copy), never read attribute by attribute.
    """
    values: dict[str, float] = {}
    for tower, spec in TOWER_TABLE.items():
        layers = [m for n, m in model.named_modules() if spec.prefix in n and isinstance(m, spec.attention) and
                  getattr(m, "diffpali_variant", None) is not None]
        for depth, module in enumerate(layers):
            for suffix, value in module.diffpali_variant.lambda_summary(module).items():
                values[f"{tower}/layer{depth}" + (f"/{suffix}" if suffix else "")] = value
    return values


ensure_registered()

"""Apply an attention variant to a loaded PaliGemma, through transformers' attention plug-in points.

Each diff variant is an ``AttentionInterface`` function (:mod:`diffpali.attention`) selected per
tower with ``set_attn_implementation``. The name is not saved in ``config.json``, so every process
that builds or reloads a model must run :func:`apply_attention` (or at least
:func:`ensure_registered`, which importing this module also does).

``diff_dup`` with ``dup_mode=separate`` also needs Q2/K2 from projections of its own. Their
``q_proj``/``k_proj`` become :class:`BranchedProjection` modules that return ``[Q1; Q2]`` and
``[K1; K2]`` as extra heads, and the attention module keeps its stock forward: the rotary rotates
K2 like K1, and the stock KV cache (a ``DynamicCache`` concatenates along the sequence only)
stores K2 beside K1, whatever the installed transformers calls the cache argument. A
static/preallocated cache, sized for the config's KV heads, is not supported in that mode.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.gemma.modeling_gemma import GemmaAttention
from transformers.models.siglip.modeling_siglip import SiglipAttention

from .attention import (
    DiffLambda,
    HeadRMSNorm,
    diff_dup_separate_attention,
    diff_dup_shared_attention,
    diff_split_attention,
    lambda_init_for,
)
from .config import AttnConfig

#: Registered attention implementations, one per variant (and diff_dup mode).
IMPLEMENTATIONS: dict[str, Callable] = {
    "diffpali_diff_split": diff_split_attention,
    "diffpali_diff_dup_shared": diff_dup_shared_attention,
    "diffpali_diff_dup_separate": diff_dup_separate_attention,
}
#: Per tower: module-name prefix inside PaliGemmaForConditionalGeneration, its attention class,
#: and the sub-config key ``set_attn_implementation`` takes.
TOWERS: dict[str, tuple[str, type[nn.Module], str]] = {
    "text": ("model.language_model.", GemmaAttention, "text_config"),
    "vision": ("model.vision_tower.", SiglipAttention, "vision_config"),
}
#: Seed of the symmetry-breaking noise on Q2/K2 (mixed with each projection's name): fixed, so a
#: fresh base plus apply_attention rebuilds the same frozen copies a saved adapter was trained on.
BRANCH_NOISE_SEED = 0x5EED


def ensure_registered() -> None:
    """Register every diff attention function and its mask function with transformers (idempotent).

    The mask function matters as much as the attention one: for a name missing from
    ``AttentionMaskInterface`` transformers builds no mask at all and the decoder sees the future.
    """
    for name, function in IMPLEMENTATIONS.items():
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sdpa_mask)


def implementation_name(cfg: AttnConfig) -> str:
    """The registered attention implementation for a diff variant."""
    if cfg.variant == "diff_split":
        return "diffpali_diff_split"
    return f"diffpali_diff_dup_{cfg.dup_mode}"


class BranchedProjection(nn.Module):
    """A query or key projection that also computes the second branch: ``[x W; x W2]``.

    It takes the place of ``q_proj``/``k_proj`` inside a stock attention module, so the stock
    forward views the doubled width as twice the heads: the rotary rotates Q2/K2 with the same
    cos/sin as Q1/K1, and whatever cache argument the installed transformers passes stores K2 beside
    K1. ``branch1`` is the pretrained projection, ``branch2`` its copy; both are LoRA targets.
    """

    def __init__(self, branch1: nn.Module, branch2: nn.Module):
        super().__init__()
        self.branch1 = branch1
        self.branch2 = branch2

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(hidden_states), self.branch2(hidden_states)], dim=-1)


def attention_modules(model: nn.Module, tower: str) -> list[tuple[str, nn.Module]]:
    """(name, module) of a tower's attention modules, in depth order."""
    prefix, cls, _ = TOWERS[tower]
    found = [(n, m) for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, cls)]
    if not found:
        raise NotImplementedError(
            f"attn.towers={tower}: no {cls.__name__} under '{prefix}'; diff variants support "
            "PaliGemma (Gemma text, SigLIP vision) only"
        )
    return found


def _noisy_copy(linear: nn.Module, relative_std: float, name: str) -> nn.Module:
    """A copy of a pretrained projection plus noise of std ``relative_std`` x its weights' RMS.

    The noise breaks the symmetry between the two branches from the first step. It comes from a
    generator seeded by the copy's name, not the global RNG, so it is the same in every process.
    """
    twin = copy.deepcopy(linear)
    if relative_std > 0:
        generator = torch.Generator().manual_seed(BRANCH_NOISE_SEED ^ zlib.crc32(name.encode()))
        weight = twin.weight
        noise = torch.randn(weight.shape, generator=generator).to(weight)
        with torch.no_grad():
            weight.add_(noise * relative_std * weight.float().pow(2).mean().sqrt().to(weight.dtype))
    return twin


def _convert(name: str, module: nn.Module, depth: int, cfg: AttnConfig) -> list[str]:
    """Attach the diff parts to one attention module; returns their child names for modules_to_save."""
    if hasattr(module, "diff_lambda"):
        raise RuntimeError(f"{name} already has a differential attention; apply_attention runs once per model")
    lambda_init = lambda_init_for(depth, cfg)
    device = module.q_proj.weight.device
    branch_dim = module.head_dim // 2 if cfg.variant == "diff_split" else module.head_dim
    module.diff_lambda = DiffLambda(branch_dim, lambda_init, cfg.lambda_std, cfg.lambda_pairs == "tied", device)
    saved = ["diff_lambda"]
    if cfg.head_norm:
        module.diff_norm = HeadRMSNorm(module.head_dim, lambda_init, device)
        saved.append("diff_norm")
    if cfg.variant == "diff_dup" and cfg.dup_mode == "separate":
        # the noise seeds keep the names the second branch had when it was a sibling (q2_proj, k2_proj)
        module.q_proj = BranchedProjection(module.q_proj, _noisy_copy(module.q_proj, cfg.branch_noise, f"{name}.q2_proj"))
        module.k_proj = BranchedProjection(module.k_proj, _noisy_copy(module.k_proj, cfg.branch_noise, f"{name}.k2_proj"))
    return saved


def apply_attention(model: nn.Module, cfg: AttnConfig) -> list[str]:
    """Swap in ``cfg.variant`` on the towers in ``cfg.towers`` of a PaliGemmaForConditionalGeneration.

    Returns the child-module names peft must train and save whole (``modules_to_save``):
    ``diff_lambda`` and, with ``head_norm``, ``diff_norm``. In ``dup_mode=separate`` the new
    ``q_proj.branch2``/``k_proj.branch2`` are frozen copies meant to receive LoRA adapters like
    the pretrained ``branch1``; they are not returned here. ``vanilla`` touches nothing and returns [].
    """
    if cfg.variant == "vanilla":
        return []
    ensure_registered()
    saved: set[str] = set()
    for tower in cfg.towers:
        for depth, (name, module) in enumerate(attention_modules(model, tower)):
            saved.update(_convert(name, module, depth, cfg))
    implementation = implementation_name(cfg)
    model.set_attn_implementation({TOWERS[tower][2]: implementation for tower in cfg.towers})
    return sorted(saved)


def lambda_values(model: nn.Module) -> dict[str, float]:
    """Current lambda of every converted layer, keyed ``{tower}/layer{depth}`` (empty for vanilla).

    Works on a bare or peft-wrapped model: the lambda modules are called (peft forwards calls to
    the trained copy), never read attribute by attribute.
    """
    values: dict[str, float] = {}
    for tower, (prefix, cls, _) in TOWERS.items():
        # a peft wrapper prepends "base_model.model." to the names, hence `in`, not startswith
        layers = [m for n, m in model.named_modules() if prefix in n and isinstance(m, cls) and hasattr(m, "diff_lambda")]
        for depth, module in enumerate(layers):
            with torch.no_grad():
                values[f"{tower}/layer{depth}"] = float(module.diff_lambda())
    return values


ensure_registered()

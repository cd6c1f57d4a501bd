"""Attention variants on pretrained weights: the shared parts, one class per variant, and ``VARIANTS``.

Differential attention (paper section 3, eqs. 2-6; Differential Transformer V2 for ``diff_v2``) in
model-side math only. A variant class says three things:

- ``attach``: what it adds to one pretrained attention module (lambda, head norm, a second query or
  key branch) and which of those children train and are saved whole (peft ``modules_to_save``);
- ``frozen``: name patterns of the frozen tensors it creates, which are saved beside the adapter;
- ``kernel``: how the layer's output is computed from Q, K, V, given an ``attend`` function that
  returns softmax(Q K^T s) V. The fast path passes transformers' SDPA wrapper (masks, ``is_causal``
  and grouped KV heads as in the stock ``sdpa`` path, no N x N matrix), or on a soft-capped Gemma 2
  decoder Gemma 2's eager attention, which caps the logits of each call; the attention recorder passes
  an eager function that also keeps the maps. All run the same kernel.

Per-layer parts are child modules of the attention module and are always *called*, never read
attribute by attribute, because peft's ``modules_to_save`` replaces them with wrappers that forward
calls to the trained copy. Each class names its settings (``settings``, an option of the ``attn``
group in ``diffpali.config.attn``); :func:`check_registry` proves at import that the two agree. Adding a
variant: one class here, one settings dataclass, one ``conf/attn/*.yaml``, one branch of the test
oracle (``docs/design.md`` walks through an example).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from .branches import BranchedProjection, DiffLambda, HeadRMSNorm, QueryWithLambda, TokenLambda, noisy_copy
from .config import (
    ATTN_SETTINGS,
    AttnSettings,
    DiffDupSettings,
    DiffSplitSettings,
    DiffV2Settings,
    LambdaSettings,
    VanillaSettings,
    register_settings,
    settings_from_record,
)

#: ``attend(query, key, value, mask, scaling) -> (batch, seq, heads, dim)``: one softmax(Q K^T s) V.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], float], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# shared parts
# ---------------------------------------------------------------------------------------------
def lambda_init_for(layer_index: int, cfg: LambdaSettings) -> float:
    """lambda_init of the layer at 0-based ``layer_index`` in its tower (eq. 4).

    The schedule's l is ``layer_index + cfg.layer_index_base``: base 1 gives the paper's
    0.2, 0.356, 0.471, ...; base 0 evaluates the same formula at l = 0 for the first layer.
    """
    if cfg.lambda_schedule == "constant":
        return cfg.lambda_init
    depth = layer_index + cfg.layer_index_base
    return 0.8 - 0.6 * math.exp(-0.3 * (depth - 1))


def differential(module: nn.Module, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(A1 V - lambda A2 V), then the optional per-head norm, in float32; back in the input dtype."""
    lam = module.diff_lambda()
    with torch.autocast(first.device.type, enabled=False):
        heads = first.float() - lam * second.float()
    norm = getattr(module, "diff_norm", None)
    if norm is not None:
        heads = norm(heads)
    return heads.to(first.dtype)


def split_halves(head_dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 masks over a head's channels selecting the two D/2-dim halves of ``diff_split``.

    HF Gemma's rotary (``rotate_half``) rotates channel i together with channel i + D/2, so a half
    made of contiguous channels would cut rotary pairs and q.k would stop depending on the position
    difference alone. Each half therefore takes whole pairs: the first the even pairs (channels i
    and i + D/2 for even i < D/2), the second the odd ones. Interleaving rather than taking pairs
    [0, D/4) and [D/4, D/2) gives both branches the full range of rotary frequencies; the even pairs
    are exactly a D/2-dim rotary with the same base, as each branch has in the original
    Differential Transformer. SigLIP has no rotary; the same halves serve it.
    """
    if head_dim % 4:
        raise ValueError(f"diff_split needs a head dim divisible by 4 (whole rotary pairs per half), got {head_dim}")
    pair = torch.arange(head_dim, device=like.device) % (head_dim // 2)
    first = (pair % 2 == 0).to(like.dtype)
    return first, 1 - first


# ---------------------------------------------------------------------------------------------
# the variants
# ---------------------------------------------------------------------------------------------
class AttentionVariant:
    """Base class: a named way of computing attention from a pretrained module (see the module docstring)."""

    #: unique id (``diff_dup_separate``): what its settings' ``name()`` gives; the registered kernel's name suffix
    name: ClassVar[str]
    #: the settings type it reads (one option of the attn group; several classes may share one, by mode)
    settings: ClassVar[type[AttnSettings]]
    frozen: ClassVar[tuple[str, ...]] = ()  #: regexes of frozen tensor names the variant creates
    differential: ClassVar[bool] = True

    @classmethod
    def attach(cls, name: str, module: nn.Module, depth: int, cfg: Any) -> list[str]:
        """Add the variant's parts to one attention module; returns the children peft must save whole."""
        lambda_init = lambda_init_for(depth, cfg)
        device = module.v_proj.weight.device
        tied = cfg.lambda_pairs == "tied"
        module.diff_lambda = DiffLambda(cls.branch_dim(module), lambda_init, cfg.lambda_std, tied, device,
                                        warmup=cfg.lambda_warmup_steps > 0)
        saved = ["diff_lambda"]
        if cfg.head_norm:
            module.diff_norm = HeadRMSNorm(module.head_dim, lambda_init, device)
            saved.append("diff_norm")
        return saved

    @classmethod
    def branch_dim(cls, module: nn.Module) -> int:
        return module.head_dim

    @staticmethod
    def kernel(module: nn.Module, query, key, value, mask, scaling: float, attend: Attend) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def teacher(module: nn.Module, query, key, value, mask, scaling: float, attend: Attend) -> torch.Tensor:
        """The pretrained layer's output from the same Q, K, V: what attention transfer trains the variant to
        reproduce. The first branch is the pretrained projection wherever a variant has two."""
        return attend(query, key, value, mask, scaling)

    @staticmethod
    def combine_maps(module: nn.Module, maps: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, Optional[tuple], Optional[torch.Tensor]]:
        """(effective map, the two branch maps, lambda) from the maps ``attend`` computed, in call order.

        Maps are (batch, heads, queries, keys); lambda is (batch, heads, queries) for every variant
        (None for vanilla), so readers need not know whether it varies by token. A scalar lambda is
        spread in float64, where a mean over any of its entries is exactly the scalar.
        """
        attn1, attn2 = maps
        with torch.no_grad():
            lam = float(module.diff_lambda())
        return attn1 - lam * attn2, (attn1, attn2), attn1.new_full(attn1.shape[:3], lam, dtype=torch.float64)

    @staticmethod
    def lambda_summary(module: nn.Module) -> dict[str, float]:
        """This layer's lambda for logging: {"": value}, or {"": mean, "std": spread} when it varies by token;
        under a warm-up also {"learned": the part of lambda the ramp does not set}, which starts where it
        started without one (0 with tied pairs), so it tells whether lambda moved."""
        with torch.no_grad():
            summary = {"": float(module.diff_lambda())}
            if module.diffpali_settings.lambda_warmup_steps:
                summary["learned"] = float(module.diff_lambda(learned_only=True))
            return summary


class Vanilla(AttentionVariant):
    """The pretrained attention, untouched: the stock ``sdpa`` path, nothing attached."""

    name = "vanilla"
    settings = VanillaSettings
    differential = False

    @classmethod
    def attach(cls, name, module, depth, cfg) -> list[str]:
        return []

    @staticmethod
    def kernel(module, query, key, value, mask, scaling, attend):
        return attend(query, key, value, mask, scaling)

    @staticmethod
    def combine_maps(module, maps):
        return maps[0], None, None


class DiffSplit(AttentionVariant):
    """Eq. 2 on pretrained heads: each head of dim D gives Q1,K1 and Q2,K2 of dim D/2; V keeps D.

    q1 . k1 over the first half equals q . (k * mask1) over the whole head, so zeroing the other half
    of K lets each branch run as an ordinary SDPA with equal q/k/v head dims and no gather. The scale
    is that of dim D/2: sqrt(2) times the module's.
    """

    name = "diff_split"
    settings = DiffSplitSettings

    @classmethod
    def branch_dim(cls, module):
        return module.head_dim // 2

    @staticmethod
    def kernel(module, query, key, value, mask, scaling, attend):
        first, second = split_halves(key.shape[-1], key)           # (D,) 0/1 masks, whole rotary pairs
        half_scaling = scaling * math.sqrt(2.0)                    # 1 / sqrt(D/2)
        attn1 = attend(query, key * first, value, mask, half_scaling)   # softmax(Q1 K1^T s) V
        attn2 = attend(query, key * second, value, mask, half_scaling)  # softmax(Q2 K2^T s) V
        return differential(module, attn1, attn2)


class DiffDupShared(AttentionVariant):
    """Eq. 5 as the paper's code does it: Q2,K2 are Q1,K1, so the output is (1 - lambda) softmax(Q K^T s) V.

    The head norm then cancels (1 - lambda) and lambda is inert: kept to reproduce the paper and to
    show exactly that. One SDPA call gives both (identical) maps.
    """

    name = "diff_dup_shared"
    settings = DiffDupSettings

    @staticmethod
    def kernel(module, query, key, value, mask, scaling, attend):
        attn = attend(query, key, value, mask, scaling)            # (B, T, H, D)
        return differential(module, attn, attn)

    @staticmethod
    def combine_maps(module, maps):
        return AttentionVariant.combine_maps(module, [maps[0], maps[0]])


class DiffDupSeparate(AttentionVariant):
    """Eq. 5 with branches that can diverge: Q2,K2 come from copies of the pretrained Q,K projections
    (plus ``attn.branch_noise``) with LoRA adapters of their own; values are shared.

    ``q_proj``/``k_proj`` become :class:`BranchedProjection`, so Q2 and K2 arrive as extra heads,
    ``query = [Q1; Q2]`` (2H heads) and ``key = [K1; K2]`` (2 x KV heads): K2 is cached beside K1.
    """

    name = "diff_dup_separate"
    settings = DiffDupSettings
    frozen = (r"\.(q_proj|k_proj)\.branch2\.(base_layer\.)?(weight|bias)$",)

    @classmethod
    def attach(cls, name, module, depth, cfg) -> list[str]:
        saved = super().attach(name, module, depth, cfg)
        # each copy's noise is seeded by its own name (q2_proj, k2_proj): the same in every process
        for proj in ("q_proj", "k_proj"):
            pretrained = getattr(module, proj)
            twin = noisy_copy(pretrained, cfg.branch_noise, f"{name}.{proj[0]}2_proj")
            setattr(module, proj, BranchedProjection(pretrained, twin, module.head_dim))
        return saved

    @staticmethod
    def kernel(module, query, key, value, mask, scaling, attend):
        query1, query2 = query.chunk(2, dim=1)                     # (B, H, T, D) each
        key1, key2 = key.chunk(2, dim=1)                           # (B, H_kv, T, D) each
        attn1 = attend(query1, key1, value, mask, scaling)
        attn2 = attend(query2, key2, value, mask, scaling)
        return differential(module, attn1, attn2)

    @staticmethod
    def teacher(module, query, key, value, mask, scaling, attend):
        return attend(query.chunk(2, dim=1)[0], key.chunk(2, dim=1)[0], value, mask, scaling)


class DiffV2(AttentionVariant):
    """Differential Transformer V2: doubled query heads sharing their GQA group's K and V, one SDPA call,
    out = A[:, 0::2] V - lambda(x) A[:, 1::2] V with lambda = sigmoid(x W_lambda) per token and head;
    no head norm, no lambda_init schedule, a KV cache the size of vanilla's.

    Query head 2i is the pretrained head i, 2i+1 a copy (plus ``attn.branch_noise``) with its own
    LoRA; both sit in head i's GQA group (Gemma 2B: the single KV head; SigLIP: head i's own K, V).
    """

    name = "diff_v2"
    settings = DiffV2Settings
    frozen = (r"\.q_proj\.branch2\.(base_layer\.)?(weight|bias)$",)

    @classmethod
    def attach(cls, name, module, depth, cfg) -> list[str]:
        heads = module.q_proj.out_features // module.head_dim
        width = module.q_proj.in_features
        device = module.q_proj.weight.device
        twin = noisy_copy(module.q_proj, cfg.branch_noise, f"{name}.q2_proj")
        warmup = cfg.lambda_warmup_steps > 0
        lam = TokenLambda(width, heads, cfg.v2_lambda_init, device, warmup=warmup)
        module.q_proj = QueryWithLambda(module.q_proj, twin, module.head_dim, lam, keep_learned=warmup)
        kv_heads = module.k_proj.out_features // module.head_dim
        module.num_key_value_groups = 2 * heads // kv_heads        # read by the SDPA wrapper to repeat K, V
        return ["diff_lambda"]

    @staticmethod
    def kernel(module, query, key, value, mask, scaling, attend):
        attn = attend(query, key, value, mask, scaling)            # (B, T, 2H, D): both maps, one call
        lam = module.q_proj.last_lambda                            # (B, T, H), float32
        with torch.autocast(attn.device.type, enabled=False):
            out = attn[:, :, 0::2].float() - lam[..., None] * attn[:, :, 1::2].float()
        return out.to(attn.dtype)

    @staticmethod
    def teacher(module, query, key, value, mask, scaling, attend):
        # the even query heads are the pretrained ones; one call keeps the GQA grouping the module was given
        return attend(query, key, value, mask, scaling)[:, :, 0::2]

    @staticmethod
    def combine_maps(module, maps):
        attn = maps[0]                                             # (B, 2H, Tq, Tk)
        lam = module.q_proj.last_lambda.detach().float().transpose(1, 2)[..., None]  # (B, H, Tq, 1)
        attn1, attn2 = attn[:, 0::2], attn[:, 1::2]
        return attn1 - lam * attn2, (attn1, attn2), lam.squeeze(-1)

    @staticmethod
    def lambda_summary(module):
        lam = module.q_proj.last_lambda
        if lam is None:
            return {}
        lam = lam.detach().float()
        summary = {"": float(lam.mean()), "std": float(lam.std()) if lam.numel() > 1 else 0.0}
        if module.q_proj.last_learned is not None:
            summary["learned"] = float(module.q_proj.last_learned.float().mean())
        return summary


#: Every attention variant, by name. Kernel registration, the recorder, the saved frozen tensors and the
#: tests read this table; its settings types (``diffpali.config.ATTN_SETTINGS``) are the config's choices.
VARIANTS: dict[str, type[AttentionVariant]] = {
    cls.name: cls for cls in (Vanilla, DiffSplit, DiffDupShared, DiffDupSeparate, DiffV2)
}


def check_registry() -> None:
    """The classes and the settings agree: each class's settings are an option of the attn group that
    names it, and each name an option can select has its class. Runs at import and on registration."""
    for name, cls in VARIANTS.items():
        option = cls.settings.__dataclass_fields__["variant"].default
        if name != cls.name or ATTN_SETTINGS.get(option) is not cls.settings or name not in cls.settings.names():
            raise TypeError(f"attention variant {name!r} ({cls.__name__}): its settings {cls.settings.__name__} "
                            f"are not the attn option {option!r} that selects {name!r}")
    for option, settings in ATTN_SETTINGS.items():
        missing = [name for name in settings.names() if name not in VARIANTS]
        if missing:
            raise TypeError(f"attn={option} ({settings.__name__}) selects {', '.join(missing)}, "
                            "which no attention variant class implements")


def register_variant(cls: type[AttentionVariant]) -> type[AttentionVariant]:
    """Add a variant: its class here, its settings to the attn group (``conf/attn/<option>.yaml`` picks them)."""
    register_settings(cls.settings)
    VARIANTS[cls.name] = cls
    check_registry()
    return cls


def variant_for(cfg: AttnSettings | Mapping[str, Any]) -> type[AttentionVariant]:
    """The variant class ``cfg`` selects; ``cfg`` may be a run's recorded attn dict (old flat records too)."""
    settings = cfg if isinstance(cfg, AttnSettings) else settings_from_record(cfg)
    return VARIANTS[settings.name()]


check_registry()

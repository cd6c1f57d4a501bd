"""Differential attention (paper section 3, eqs. 2-6): the lambda, the per-head norm, the kernels.

Model-side math only. Each kernel has the signature of a transformers ``AttentionInterface``
function, ``(module, query, key, value, attention_mask, *, scaling, dropout, **kwargs)``, and runs
two ``scaled_dot_product_attention`` calls through transformers' own SDPA wrapper, so masks,
``is_causal`` and grouped KV heads behave exactly as in the stock ``sdpa`` path and no N x N
attention matrix is built. The per-layer parts live in child modules of the attention module:
``diff_lambda`` (:class:`DiffLambda`) and, when enabled, ``diff_norm`` (:class:`HeadRMSNorm`).
They are always *called*, never read attribute by attribute, because peft's ``modules_to_save``
replaces them with wrappers that forward calls to the trained copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .config import AttnConfig

HEAD_NORM_EPS = 1e-5


def lambda_init_for(layer_index: int, cfg: AttnConfig) -> float:
    """lambda_init of the layer at 0-based ``layer_index`` in its tower (eq. 4).

    The schedule's l is ``layer_index + cfg.layer_index_base``: base 1 gives the paper's
    0.2, 0.356, 0.471, ...; base 0 evaluates the same formula at l = 0 for the first layer.
    """
    if cfg.lambda_schedule == "constant":
        return cfg.lambda_init
    depth = layer_index + cfg.layer_index_base
    return 0.8 - 0.6 * math.exp(-0.3 * (depth - 1))


class DiffLambda(nn.Module):
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (eq. 3), one scalar per layer.

    The vectors have the dimension of one branch's query. They are created in float32 and always
    evaluated in float32 with autocast off: lambda multiplies a whole attention map, and a bf16
    exp of a dot product is too coarse for it.
    """

    def __init__(self, dim: int, lambda_init: float, std: float, tied: bool = False, device: torch.device | None = None):
        super().__init__()
        self.lambda_init = lambda_init
        vectors = torch.empty(4, dim, dtype=torch.float32, device=device).normal_(0.0, std)
        if tied:  # exp(lq1.lk1) - exp(lq2.lk2) = 0 exactly, while each term still has a gradient
            vectors[2:] = vectors[:2]
        self.lq1, self.lk1, self.lq2, self.lk2 = (nn.Parameter(v.clone()) for v in vectors)

    def forward(self) -> torch.Tensor:
        with torch.autocast(self.lq1.device.type, enabled=False):
            first = torch.exp(torch.dot(self.lq1.float(), self.lk1.float()))
            second = torch.exp(torch.dot(self.lq2.float(), self.lk2.float()))
            return first - second + self.lambda_init


class HeadRMSNorm(nn.Module):
    """(1 - lambda_init) * RMSNorm(head) over each head's channels (eq. 6), in float32.

    One learnable weight of the head dimension is shared by the heads of a layer, as in the
    Differential Transformer; the fixed factor (1 - lambda_init) keeps gradients on the scale of
    the pretrained attention at init.
    """

    def __init__(self, dim: int, lambda_init: float, device: torch.device | None = None):
        super().__init__()
        self.scale = 1.0 - lambda_init
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32, device=device))

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        with torch.autocast(heads.device.type, enabled=False):
            normed = F.rms_norm(heads.float(), (heads.shape[-1],), self.weight.float(), HEAD_NORM_EPS)
            return normed * self.scale


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


def _sdpa(module: nn.Module, query, key, value, mask, scaling: float, dropout: float, **kwargs) -> torch.Tensor:
    """One softmax(Q K^T s) V through transformers' SDPA wrapper; returns (batch, seq, heads, dim)."""
    output, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    return output


def _differential(module: nn.Module, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(A1 V - lambda A2 V), then the optional per-head norm, in float32; back in the input dtype."""
    lam = module.diff_lambda()
    with torch.autocast(first.device.type, enabled=False):
        heads = first.float() - lam * second.float()
    norm = getattr(module, "diff_norm", None)
    if norm is not None:
        heads = norm(heads)
    return heads.to(first.dtype)


def diff_split_attention(
    module: nn.Module, query, key, value, attention_mask, *, scaling: float, dropout: float = 0.0, **kwargs
) -> tuple[torch.Tensor, None]:
    """``diff_split`` (eq. 2): each pretrained head gives Q1,K1 and Q2,K2 of dim D/2; V keeps dim D.

    q1 . k1 over the first half equals q . (k * mask1) over the whole head, so zeroing the other
    half of K lets each branch run as an ordinary SDPA with equal q/k/v head dims (every fused
    kernel accepts it) and no gather. The scale is that of dim D/2: sqrt(2) times the module's.
    """
    first, second = split_halves(key.shape[-1], key)
    half_scaling = scaling * math.sqrt(2.0)
    attn1 = _sdpa(module, query, key * first, value, attention_mask, half_scaling, dropout, **kwargs)
    attn2 = _sdpa(module, query, key * second, value, attention_mask, half_scaling, dropout, **kwargs)
    return _differential(module, attn1, attn2), None


def diff_dup_shared_attention(
    module: nn.Module, query, key, value, attention_mask, *, scaling: float, dropout: float = 0.0, **kwargs
) -> tuple[torch.Tensor, None]:
    """``diff_dup`` with ``dup_mode=shared`` (eq. 5 as the paper's code does it): Q2,K2 are Q1,K1.

    Both maps are the same tensor, so one SDPA call gives both and the output is (1 - lambda)
    softmax(Q K^T s) V; the head norm then cancels (1 - lambda) and lambda is inert (kept to
    reproduce the paper and show exactly that).
    """
    attn = _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    return _differential(module, attn, attn), None


def diff_dup_separate_attention(
    module: nn.Module, query, key, value, attention_mask, *, scaling: float, dropout: float = 0.0, **kwargs
) -> tuple[torch.Tensor, None]:
    """``diff_dup`` with ``dup_mode=separate``: Q2,K2 come from the module's own q2/k2 projections.

    The module's forward passes them as extra heads, ``query = [Q1; Q2]`` (2 x heads) and
    ``key = [K1; K2]`` (2 x KV heads), which is how K2 reaches the KV cache; values are shared.
    """
    query1, query2 = query.chunk(2, dim=1)
    key1, key2 = key.chunk(2, dim=1)
    attn1 = _sdpa(module, query1, key1, value, attention_mask, scaling, dropout, **kwargs)
    attn2 = _sdpa(module, query2, key2, value, attention_mask, scaling, dropout, **kwargs)
    return _differential(module, attn1, attn2), None

"""The modules a variant attaches to a pretrained attention module: a second query or key branch made from
a copy of the pretrained weights in place of its projection, DIFF V1's lambda and head norm, and DIFF V2's
per-token lambda.
"""

from __future__ import annotations

import copy
import zlib
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

#: Seed of the symmetry-breaking noise on second branches (mixed with each copy's name): fixed, so a
#: fresh base plus the variant rebuilds the same frozen copies a saved adapter was trained on.
BRANCH_NOISE_SEED = 0x5EED
HEAD_NORM_EPS = 1e-5


def noisy_copy(linear: nn.Module, relative_std: float, name: str) -> nn.Module:
    """A copy of a pretrained projection plus noise of std ``relative_std`` x its weights' RMS.

    The noise breaks the symmetry between two branches from the first step. It comes from a
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


class Float32Module(nn.Module):
    """A module whose floating-point parameters stay float32 whatever the model is cast to.

    ``model.to(torch.bfloat16)`` (Lightning's ``bf16-true`` does exactly that) reaches every tensor
    through ``_apply``; here a cast that would change a float32 tensor's dtype only moves it to the
    target device, so lambda's parameters keep float32 precision and its arithmetic stays float32.
    """

    def _apply(self, fn, recurse=True):
        def device_only(tensor: torch.Tensor) -> torch.Tensor:
            applied = fn(tensor)
            if tensor.is_floating_point() and applied.dtype != tensor.dtype:
                return tensor.to(applied.device)
            return applied

        return super()._apply(device_only, recurse)


class DiffLambda(Float32Module):
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (eq. 3), one scalar per layer.

    The vectors have the dimension of one branch's query. They are created in float32, stay float32
    when the model is cast (``bf16-true``) and are always evaluated in float32 with autocast off: lambda
    multiplies a whole attention map, and a bf16 exp of a dot product is too coarse for it.

    ``warmup``: lambda_init is ramped in, ``ramp * lambda_init``, by a ``ramp`` buffer (0 at the start)
    that the training loop raises to 1 (:func:`set_lambda_ramp`); the learned part is not scaled, so it
    has its gradient from the first step. The buffer is saved with the module, so a trained adapter
    reloads at the ramp it ended with.
    """

    def __init__(self, dim: int, lambda_init: float, std: float, tied: bool = False,
                 device: torch.device | None = None, warmup: bool = False):
        super().__init__()
        self.lambda_init = lambda_init
        vectors = torch.empty(4, dim, dtype=torch.float32, device=device).normal_(0.0, std)
        if tied:  # exp(lq1.lk1) - exp(lq2.lk2) = 0 exactly, while each term still has a gradient
            vectors[2:] = vectors[:2]
        self.lq1, self.lk1, self.lq2, self.lk2 = (nn.Parameter(v.clone()) for v in vectors)
        if warmup:
            self.register_buffer("ramp", torch.zeros((), dtype=torch.float32, device=device))

    def forward(self, learned_only: bool = False) -> torch.Tensor:
        """lambda; ``learned_only``: its learned part, exp(lq1 . lk1) - exp(lq2 . lk2), without lambda_init."""
        with torch.autocast(self.lq1.device.type, enabled=False):
            first = torch.exp(torch.dot(self.lq1.float(), self.lk1.float()))
            second = torch.exp(torch.dot(self.lq2.float(), self.lk2.float()))
            if learned_only:
                return first - second
            ramp = getattr(self, "ramp", None)
            return first - second + (self.lambda_init if ramp is None else ramp * self.lambda_init)


class HeadRMSNorm(Float32Module):
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


class BranchedProjection(nn.Module):
    """A query or key projection that also computes a second branch from a copy of its weights.

    It takes the place of ``q_proj``/``k_proj`` inside a stock attention module, so the stock
    forward views the doubled width as twice the heads: the rotary rotates the second branch with
    the same cos/sin, and whatever cache argument the installed transformers passes stores a second
    key beside the first. ``branch1`` is the pretrained projection, ``branch2`` its copy; both are LoRA
    targets. ``interleave``: heads come as (1, 2, 1, 2, ...) per head instead of all of 1 then all of 2.
    """

    def __init__(self, branch1: nn.Module, branch2: nn.Module, head_dim: int, interleave: bool = False):
        super().__init__()
        self.branch1 = branch1
        self.branch2 = branch2
        self.head_dim = head_dim
        self.interleave = interleave

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first, second = self.branch1(hidden_states), self.branch2(hidden_states)
        if not self.interleave:
            return torch.cat([first, second], dim=-1)
        heads = (*first.shape[:-1], -1, self.head_dim)
        return torch.stack([first.view(heads), second.view(heads)], dim=-2).flatten(-3)


class TokenLambda(Float32Module):
    """DIFF V2's lambda per token and head: sigmoid(x W + b), times a per-head ``gate``.

    ``init="plain"``: the authors' projection, W = 0, b = 0, gate 1, so lambda = sigmoid(0) = 0.5
    everywhere at init. ``init="exact"``: the same, but the gate starts at 0, so lambda = 0 and the
    layer computes the pretrained attention exactly; the gate's gradient, -sigmoid(.) <dL/dout, A2 V>,
    is not zero, so lambda leaves 0 at the first step. ``warmup`` (plain only): the gate is the learned
    part, from 0, plus a ``ramp`` buffer the training loop raises from 0 to 1, so the layer starts as the
    pretrained one and ends at the plain init's gate plus what was learned. Float32 (kept through a cast
    of the model), autocast off, as every lambda here.
    """

    def __init__(self, width: int, heads: int, init: str, device: torch.device | None = None,
                 warmup: bool = False):
        super().__init__()
        self.proj = nn.Linear(width, heads, device=device, dtype=torch.float32)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        starts_open = init == "plain" and not warmup
        self.gate = nn.Parameter(torch.full((heads,), 1.0 if starts_open else 0.0, device=device,
                                            dtype=torch.float32))
        if warmup:
            self.register_buffer("ramp", torch.zeros((), dtype=torch.float32, device=device))

    def forward(self, hidden_states: torch.Tensor, learned_only: bool = False) -> torch.Tensor:
        """lambda, (B, T, H); ``learned_only``: sigmoid(x W + b) g, the part the ramp does not set."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            ramp = getattr(self, "ramp", None)
            gate = self.gate if ramp is None or learned_only else self.gate + ramp
            return torch.sigmoid(self.proj(hidden_states.float())) * gate


class QueryWithLambda(BranchedProjection):
    """V2's query side: interleaved Q1/Q2 heads, and lambda computed from the same input x.

    transformers hands the attention function Q, K and V only, not x; lambda is a function of x, so
    it is computed here, where x is, and kept (``last_lambda``, (B, T, H)) for the kernel of this
    very forward to read.
    """

    def __init__(self, branch1, branch2, head_dim: int, diff_lambda: TokenLambda, keep_learned: bool = False):
        super().__init__(branch1, branch2, head_dim, interleave=True)
        self.diff_lambda = diff_lambda
        self.keep_learned = keep_learned  #: under a warm-up, also keep lambda's learned part (for logging)
        self.last_lambda: Optional[torch.Tensor] = None
        self.last_learned: Optional[torch.Tensor] = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        self.last_lambda = self.diff_lambda(hidden_states)
        if self.keep_learned:
            with torch.no_grad():
                self.last_learned = self.diff_lambda(hidden_states, learned_only=True)
        return super().forward(hidden_states)

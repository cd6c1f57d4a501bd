"""The modules a variant attaches in place of a pretrained projection: a second query or key branch
made from a copy of the pretrained weights, and DIFF V2's per-token lambda.
"""

from __future__ import annotations

import copy
import zlib
from typing import Optional

import torch
from torch import nn

#: Seed of the symmetry-breaking noise on second branches (mixed with each copy's name): fixed, so a
#: fresh base plus the variant rebuilds the same frozen copies a saved adapter was trained on.
BRANCH_NOISE_SEED = 0x5EED


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
    is not zero, so lambda leaves 0 at the first step. Float32 (kept through a cast of the model), autocast off,
    as every lambda here.
    """

    def __init__(self, width: int, heads: int, init: str, device: torch.device | None = None):
        super().__init__()
        self.proj = nn.Linear(width, heads, device=device, dtype=torch.float32)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.gate = nn.Parameter(torch.full((heads,), 0.0 if init == "exact" else 1.0, device=device,
                                            dtype=torch.float32))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden_states.device.type, enabled=False):
            return torch.sigmoid(self.proj(hidden_states.float())) * self.gate


class QueryWithLambda(BranchedProjection):
    """V2's query side: interleaved Q1/Q2 heads, and lambda computed from the same input x.

    transformers hands the attention function Q, K and V only, not x; lambda is a function of x, so
    it is computed here, where x is, and kept (``last_lambda``, (B, T, H)) for the kernel of this
    very forward to read.
    """

    def __init__(self, branch1, branch2, head_dim: int, diff_lambda: TokenLambda):
        super().__init__(branch1, branch2, head_dim, interleave=True)
        self.diff_lambda = diff_lambda
        self.last_lambda: Optional[torch.Tensor] = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        self.last_lambda = self.diff_lambda(hidden_states)
        return super().forward(hidden_states)

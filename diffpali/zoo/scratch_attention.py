"""The attention a tiny base is pretrained with, put in place on the freshly initialised model.

A retrofit (``train.py attn=...``) converts pretrained layers: its second branches are copies of the
pretrained projections, frozen under LoRA. A base pretrained with the variant is the authors' setting
instead: two independently initialised branches, and every weight trained from the first step.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..branches import BranchedProjection
from ..config import AttnSettings
from ..surgery import apply_attention


def convert_for_pretraining(model: nn.Module, settings: AttnSettings, seed: int) -> None:
    """Apply ``settings`` to a randomly initialised model, redraw every second branch, make everything trainable.

    The variant's second query/key branch starts as a near-copy of the first (the retrofit's symmetry
    breaking); from scratch it is redrawn: normal, at the first branch's own weight scale, from a
    generator seeded by (build seed, module name), so a build stays a function of its spec.
    """
    apply_attention(model, settings)
    for name, module in model.named_modules():
        if isinstance(module, BranchedProjection):
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}.branch2".encode()))
            first, second = module.branch1.weight, module.branch2.weight
            drawn = torch.randn(second.shape, generator=generator, dtype=torch.float32) * first.float().std()
            with torch.no_grad():
                second.copy_(drawn.to(second))
    model.requires_grad_(True)

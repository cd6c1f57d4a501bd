"""A differential attention in place from the first step of pretraining, as its authors train it.

The variants were written to convert a pretrained model: a second query or key branch starts as a
copy of the first plus a little noise, and copies are frozen for LoRA. A model trained from its
random initialisation has nothing to keep, so here every second branch is drawn again,
independently, as a projection of its own (the two branches of the Differential Transformer are
two independently initialised projections), and every parameter trains.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..branches import BranchedProjection
from ..config import AttnSettings
from ..surgery import apply_attention


def branch_generator(seed: int, name: str) -> torch.Generator:
    """A generator of its own for the tensor ``name``: its draw depends on (seed, name) only, not on the
    global RNG, so adding or converting a tower never moves another's initialisation."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def redraw_second_branches(model: nn.Module, seed: int) -> list[str]:
    """Draw every second-branch tensor anew: normal, with the std of the same tensor of its first branch
    (0 for a bias initialised to zeros, which stays zeros). Returns the names of the tensors drawn."""
    drawn = []
    for module_name, module in model.named_modules():
        if not isinstance(module, BranchedProjection):
            continue
        first = dict(module.branch1.named_parameters())
        for name, tensor in module.branch2.named_parameters():
            full = f"{module_name}.branch2.{name}"
            std = first[name].detach().float().std() if first[name].numel() > 1 else torch.tensor(0.0)
            noise = torch.randn(tensor.shape, generator=branch_generator(seed, full), dtype=torch.float32)
            tensor.copy_((noise * std.cpu()).to(tensor))
            drawn.append(full)
    return drawn


def convert_from_scratch(model: nn.Module, settings: AttnSettings, seed: int) -> list[str]:
    """Apply ``settings`` to a freshly initialised ``model``, re-draw its second branches and make every
    parameter trainable (the variants freeze their copies for LoRA). Returns the re-drawn tensors' names."""
    apply_attention(model, settings)
    drawn = redraw_second_branches(model, seed)
    model.requires_grad_(True)
    return drawn

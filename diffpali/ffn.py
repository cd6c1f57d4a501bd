"""Feed-forward variants (paper eq. 7) applied to a loaded PaliGemma.

``swiglu`` computes (silu(x W_G) * x W_1) W_2 in the chosen towers, starting from the pretrained
weights wherever they exist:

- Gemma (text) is already gated, down(gelu_tanh(gate(x)) * up(x)), so only its activation module
  becomes SiLU; gate/up/down keep their pretrained tensors and stay LoRA targets. No new weights.
- SigLIP (vision) is fc1-gelu-fc2, so each MLP is replaced by :class:`SiglipSwiGLU`, which keeps the
  pretrained fc1 (W_1) and fc2 (W_2) under their own names, so the LoRA targets ``fc1``/``fc2``
  still match, and adds a new ``gate`` (W_G). The gate is returned for peft ``modules_to_save``: it
  trains whole and its weights are written into the adapter, so reloading never depends on how
  ``gate_init`` (or the RNG) would rebuild it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PaliGemmaForConditionalGeneration

from .config import FfnConfig
from .towers import TOWER_TABLE


class SiglipSwiGLU(nn.Module):
    """SwiGLU replacing a SigLIP MLP: fc2(silu(gate(x)) * fc1(x)), with SigLIP's biases."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, gate_init: str) -> None:
        super().__init__()
        self.fc1 = fc1  # W_1: the pretrained up projection, the same tensors
        self.fc2 = fc2  # W_2: the pretrained down projection, the same tensors
        self.gate = nn.Linear(
            fc1.in_features, fc1.out_features, bias=fc1.bias is not None,
            device=fc1.weight.device, dtype=fc1.weight.dtype,
        )  # W_G: new
        with torch.no_grad():
            if gate_init == "copy_fc1":
                # With h = fc1(x) the block computes silu(h) * h = h^2 sigmoid(h) where it computed gelu(h):
                # not the pretrained function, but built on the pretrained features h, unlike a random gate.
                # A copy, not a tie: fc1 must not move when W_G trains.
                self.gate.weight.copy_(fc1.weight)
                if fc1.bias is not None:
                    self.gate.bias.copy_(fc1.bias)
            else:
                # SigLIP's own init for its MLP weights; unrelated to the pretrained function.
                nn.init.xavier_uniform_(self.gate.weight)
                if self.gate.bias is not None:
                    nn.init.zeros_(self.gate.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.gate(hidden_states)) * self.fc1(hidden_states))


def _is_gemma_mlp(module: nn.Module) -> bool:
    """Gemma/Gemma 2 MLP: down(act_fn(gate(x)) * up(x)). Duck-typed so every Gemma generation matches."""
    return all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _is_siglip_mlp(module: nn.Module) -> bool:
    """SigLIP MLP: fc2(activation_fn(fc1(x))). A SiglipSwiGLU has no activation_fn, so it never matches twice."""
    return all(hasattr(module, a) for a in ("fc1", "fc2", "activation_fn"))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def apply_ffn(model: PaliGemmaForConditionalGeneration, cfg: FfnConfig) -> list[str]:
    """Swap in ``cfg.variant`` in ``cfg.towers``; returns module names that peft must save whole.

    ``mlp`` touches nothing. ``swiglu`` modifies ``model`` in place; it must be re-applied to a fresh
    base before loading an adapter trained with it (the activation swap is not part of the adapter).
    """
    if cfg.variant == "mlp":
        return []
    if cfg.variant != "swiglu":
        raise ValueError(f"ffn.variant={cfg.variant!r}: must be one of mlp, swiglu")

    new_modules: list[str] = []
    for tower in cfg.towers:
        prefix = TOWER_TABLE[tower].prefix
        # Collect first: replacing modules while iterating named_modules() would visit the new ones.
        mlps = [(n, m) for n, m in model.named_modules() if n.startswith(prefix)]
        if tower == "text":
            found = [(n, m) for n, m in mlps if _is_gemma_mlp(m)]
            for _, mlp in found:
                # The module's activation only: the shared text config (and any other tower) keeps gelu-tanh.
                mlp.act_fn = nn.SiLU()
        else:
            found = [(n, m) for n, m in mlps if _is_siglip_mlp(m)]
            for name, mlp in found:
                _set_module(model, name, SiglipSwiGLU(mlp.fc1, mlp.fc2, cfg.gate_init))
                new_modules.append(f"{name}.gate")
        if not found:
            # Silently doing nothing would make a "swiglu" run identical to the baseline.
            raise ValueError(f"ffn.towers={cfg.towers}: no {tower} MLP to convert to SwiGLU (already applied?)")
    return new_modules

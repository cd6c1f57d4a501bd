"""A base pretrained with a differential attention: how it is saved, recognised and loaded.

A vanilla base is an ordinary ``save_pretrained`` folder. A base built with a variant in place holds
parameters no stock PaliGemma has (lambda, head norms, second branches), so it is saved as:

- ``config.json`` and the processor files, as any PaliGemma;
- ``base_attention.json``: the variant's settings (the ``attn`` record a run would write);
- ``diffpali_model.safetensors``: every tensor of the converted model under its own module names.

The weights file has another name than ``model.safetensors`` on purpose: a stock
``from_pretrained`` finds no weights and fails, instead of loading the vanilla part and silently
dropping the differential one. :func:`load_variant_base` rebuilds the model from its config, applies
the same variant and loads every tensor strictly.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

from ..config import AttnSettings
from ..config.bases import base_attention
from ..files import UnreadableFileError, check_files
from ..paths import BASE_ATTENTION_FILE, VARIANT_MODEL_FILE
from ..surgery import apply_attention


def save_variant_base(model: PaliGemmaForConditionalGeneration, settings: AttnSettings,
                      directory: str | Path) -> None:
    """Write a base whose attention is ``settings`` (already applied to ``model``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    # save_model keeps one copy of tensors that share storage (the tied embedding and LM head)
    save_model(model, str(directory / VARIANT_MODEL_FILE))
    (directory / BASE_ATTENTION_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n")


def load_variant_base(directory: str | Path, dtype: torch.dtype = torch.float32,
                      remedy: str = "Rebuild the base") -> tuple[PaliGemmaForConditionalGeneration, AttnSettings]:
    """The differential base in ``directory``, its variant applied and every tensor loaded; and its settings."""
    directory = Path(directory)
    settings = base_attention(directory)
    if settings is None:
        raise ValueError(f"{directory}: no {BASE_ATTENTION_FILE}; a vanilla base loads with from_pretrained")
    check_files(directory, remedy, required=("config.json", VARIANT_MODEL_FILE))
    config = PaliGemmaConfig.from_pretrained(directory)
    model = PaliGemmaForConditionalGeneration(config)
    apply_attention(model, settings)
    missing, unexpected = load_model(model, str(directory / VARIANT_MODEL_FILE), strict=False)
    if missing or unexpected:
        raise UnreadableFileError(directory / VARIANT_MODEL_FILE,
                                  f"its tensors do not match attn={settings.name()} on this config "
                                  f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})", remedy)
    return model.to(dtype).eval(), settings

"""What a base model directory says about itself, read before any model loads: the attention it was pretrained with.

A tiny base built with a differential attention (``python -m diffpali.basecard --set attn=diff_split``)
carries that attention in its weights; a run on it keeps it. :func:`resolve_base_attention` makes the
run's ``attn`` the base's own (so records, labels and saved adapters name what actually runs), and
refuses an ``attn=`` that would convert it a second time. Torch-free: it reads one JSON file.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..files import UnreadableFileError, read_json
from ..paths import BASE_ATTENTION_FILE
from .attn import AttnSettings, settings_from_record
from .groups import ModelConfig
from .rules import fail


def base_attention(directory: str | Path) -> Optional[AttnSettings]:
    """The attention settings ``directory`` was pretrained with, or None for a stock (vanilla) base."""
    path = Path(directory).expanduser() / BASE_ATTENTION_FILE
    if not path.is_file():
        return None
    record = read_json(path, f"It is written with the base; rebuild the base in {directory}")
    try:
        return settings_from_record(record)
    except (TypeError, ValueError) as err:
        raise UnreadableFileError(path, f"not an attention record ({err})",
                                  f"Rebuild the base in {directory}") from err


def declared_attention(model: ModelConfig) -> tuple[Optional[AttnSettings], str]:
    """The attention the configured base was pretrained with (None: vanilla), and where that was read."""
    if model.name_or_path and Path(model.name_or_path).expanduser().is_dir():
        return base_attention(model.name_or_path), f"model.name_or_path={model.name_or_path}"
    if model.source == "zoo":
        return model.tiny.attention("model.tiny.attn"), "model.tiny.attn"
    return None, ""


def resolve_base_attention(model: ModelConfig, attn: AttnSettings) -> AttnSettings:
    """The attention a run on this base computes: the base's own when it was pretrained with a variant.

    ``attn`` left at vanilla keeps the base's attention, and so does ``attn`` equal to it; any other
    ``attn`` is refused, since converting a converted layer again has no meaning.
    """
    base, where = declared_attention(model)
    if base is None or base.variant == "vanilla":
        return attn
    if attn.variant != "vanilla" and asdict(attn) != asdict(base):
        fail("attn", attn.name(), f"the base ({where}) was pretrained with attn={base.name()} {base_knobs(base)}; "
             "leave attn at vanilla to keep its attention, or use a vanilla base")
    return base


def base_knobs(settings: AttnSettings) -> str:
    values = asdict(settings)
    return "(" + ", ".join(f"{k}={values[k]}" for k in settings.knobs()) + ")"

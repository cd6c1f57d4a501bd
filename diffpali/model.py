"""Load a base PaliGemma (tiny zoo or ``from_pretrained``), apply the method's variants, wrap in LoRA.

No training code lives here: these functions return ordinary ``nn.Module`` objects.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

from .attention import VARIANTS
from .config import AttnSettings, FfnConfig, LoraConfig, ModelConfig, TinySpec, settings_from_record
from .ffn import apply_ffn
from .files import check_files, read_json
from .paths import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    BASE_ATTENTION_FILE,
    SHIPPED_TINY_DIR,
    VARIANT_WEIGHTS_FILE,
    VARIANTS_FILE,
    cache_root,
)
from .surgery import apply_attention
from .towers import TOWER_TABLE
from .zoo.build import BUILD_INFO, build_base
from .zoo.random_base import load_random
from .zoo.tiny import spec_key, stage0_key
from .zoo.variant_base import load_variant_base

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_remedy(directory: Path) -> str:
    """What to do about a damaged base model directory, by where it comes from."""
    directory = Path(directory)
    if directory.resolve() == SHIPPED_TINY_DIR.resolve():
        return ("It is the tiny base shipped with diffpali: restore it (git checkout -- diffpali/zoo/tiny_paligemma "
                "in a clone, or reinstall diffpali)")
    if directory.parent.name == "tiny" and (directory / "build_info.json").exists():
        return f"It is a cached tiny base: delete {directory} and it is rebuilt on next use"
    return f"Copy or download the model into {directory} again"


def _built_key(directory: Path) -> str | None:
    info = directory / "build_info.json"
    if not info.is_file():
        return None
    return read_json(info, base_remedy(directory)).get("key")


def resolve_tiny_base(spec: TinySpec, cache_dir: str | None = None, device: str | None = None,
                      quiet: bool = False) -> Path:
    """Directory of the tiny base for ``spec``: the shipped one, a cached one, or a new build.

    The key is a hash of the whole spec (architecture and pretraining recipe), so a changed spec
    never silently reuses weights trained for another.
    """
    key = spec_key(spec)
    if _built_key(SHIPPED_TINY_DIR) == key:
        log.log(logging.DEBUG if quiet else logging.INFO, "tiny base %s: using the shipped base in %s", key,
                SHIPPED_TINY_DIR)
        return SHIPPED_TINY_DIR
    target = cache_root(cache_dir) / "tiny" / key
    if _built_key(target) == key:
        log.log(logging.DEBUG if quiet else logging.INFO, "tiny base %s: using the cached base in %s", key, target)
        return target
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    log.warning("tiny base %s: not shipped or cached; building it now on %s (%d + %d pretraining steps) into %s",
                key, device, spec.stage0.steps, spec.stage1.steps, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temporary sibling and rename, so an interrupted build never looks finished.
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        work = target.parent / f".{key}-work"  # checkpoints: a killed build resumes from them
        # stage 0 checkpoints by its own key, kept: every spec sharing it (a decoder-only variant and vanilla of
        # one seed, or a recipe that changes stage 1 only) resumes it at its end instead of training it again
        shared = target.parent / ".stage0" / f"{stage0_key(spec)}.pt"
        shared.parent.mkdir(parents=True, exist_ok=True)
        build_base(spec, staging, device, work_dir=work, progress=False, stage0_path=shared)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def base_location(cfg: ModelConfig, quiet: bool = False) -> str:
    """Directory or Hub id that ``from_pretrained`` loads for this model config."""
    if cfg.source == "zoo" and not cfg.name_or_path:
        return str(resolve_tiny_base(cfg.tiny, cfg.cache_dir, quiet=quiet))
    return cfg.name_or_path


def base_record(cfg: ModelConfig) -> Optional[dict[str, Any]]:
    """What a run records of a tiny base it starts from (``base.json``): its build key, attention, lambda per
    layer at the start and end of pretraining, and build time; None for a base with no ``build_info.json``."""
    location = Path(base_location(cfg, quiet=True)) if cfg.source != "random" else None  # found once already
    if location is None or not (location / BUILD_INFO).is_file():
        return None
    info = read_json(location / BUILD_INFO, base_remedy(location))
    return {"directory": str(location), "key": info.get("key"),
            "attn": info.get("attn") or {"variant": "vanilla"}, "lambda": info.get("lambda") or {},
            "build_seconds": sum(info.get(stage, {}).get("train_seconds", 0.0) for stage in ("stage0", "stage1")),
            "device": info.get("device"), "spec": info.get("spec")}


def load_base(cfg: ModelConfig) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """The pretrained model and its processor; the same code serves the tiny zoo and the Hub.

    ``source=random`` builds the configured architecture with random weights instead (no download).
    """
    if cfg.source == "random":
        return load_random(cfg, DTYPES[cfg.dtype])
    location = base_location(cfg)
    if (Path(location) / BASE_ATTENTION_FILE).is_file():  # pretrained with a variant: rebuilt with it, loaded strictly
        if cfg.quantization is not None:
            raise ValueError(f"model.quantization={cfg.quantization}: {location} was pretrained with a "
                             "differential attention, whose tensors load whole; 4-bit loading is for stock bases")
        model, _ = load_variant_base(location, DTYPES[cfg.dtype], base_remedy(Path(location)))  # checks its files
        return model, PaliGemmaProcessor.from_pretrained(location)
    if Path(location).is_dir():  # a damaged file is named here, not deep inside from_pretrained
        check_files(Path(location), base_remedy(Path(location)), required=("config.json",))
    kwargs: dict[str, Any] = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    processor = PaliGemmaProcessor.from_pretrained(location, **kwargs)
    if cfg.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[cfg.dtype])
    model = PaliGemmaForConditionalGeneration.from_pretrained(location, dtype=DTYPES[cfg.dtype], **kwargs)
    if cfg.quantization == "nf4":  # freezes the base, keeps norms and embeddings in float32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for module in model.modules():
            # bitsandbytes (0.50) repacks a 4-bit weight in place for CPU inference at its first eval-mode forward
            # and never back; training after validation then fails ("a view of a leaf Variable ... in-place").
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model, processor


def apply_variants(model: PaliGemmaForConditionalGeneration, attn: AttnSettings, ffn: FfnConfig) -> list[str]:
    """Swap in the configured attention and feed-forward variants.

    Returns the module names of new trainable parts that LoRA must save whole
    (peft ``modules_to_save``). ``vanilla`` and ``mlp`` leave the model untouched.
    """
    return apply_attention(model, attn) + apply_ffn(model, ffn)


#: diff_dup (separate) turns q_proj/k_proj into a pair of projections (branches.BranchedProjection);
#: LoRA adapts each branch, wherever the pair's name is a target.
BRANCHES = r"(\.branch[12])?"


def lora_target_regex(cfg: LoraConfig) -> str:
    """One regex over full module names: the chosen projections, in the chosen towers only."""
    parts = []
    for tower in cfg.towers:
        names = cfg.text_targets if tower == "text" else cfg.vision_targets
        parts.append(rf"{TOWER_TABLE[tower].pattern}.*\.({'|'.join(map(re.escape, names))}){BRANCHES}")
    if cfg.train_projector:
        parts.append(r"model\.multi_modal_projector\.linear")
    return "^(" + "|".join(parts) + ")$"


def lora_targets(model: torch.nn.Module, cfg: LoraConfig) -> list[str]:
    """The linear layers ``lora_target_regex`` names in ``model``, as full module names.

    A list rather than the regex itself: a branched pair is named like the projection it replaced,
    and only its two linear branches can carry LoRA.
    """
    pattern = re.compile(lora_target_regex(cfg))
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and pattern.match(name)]


def wrap_lora(model: PaliGemmaForConditionalGeneration, cfg: LoraConfig,
              modules_to_save: list[str] | None = None) -> PeftModel:
    """Freeze the base and add LoRA adapters (peft); new variant modules train and save whole."""
    peft_config = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg),
        modules_to_save=modules_to_save or None,
        bias="none",
    )
    return get_peft_model(model, peft_config)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint every decoder and SigLIP layer with torch's non-reentrant checkpoint.

    Non-reentrant: frozen base weights and LoRA adapters need no ``requires_grad`` input to get
    gradients, keyword arguments pass through, and the RNG state is replayed, so LoRA dropout masks
    and every variant's output (DIFF V2's per-token lambda included) are recomputed identically.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.24 (the old one warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_model(
    model_cfg: ModelConfig, attn: AttnSettings, ffn: FfnConfig, lora: LoraConfig
) -> tuple[PeftModel, PaliGemmaProcessor]:
    """Base model -> variants (-> activation checkpointing) -> LoRA. The entry point of train.py and evaluate.py."""
    model, processor = load_base(model_cfg)
    new_modules = apply_variants(model, attn, ffn)
    if model_cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return wrap_lora(model, lora, new_modules), processor


#: train.py writes an adapter whole at the end of a run, so a damaged one was damaged afterwards.
ADAPTER_REMEDY = ("Copy the adapter folder again from where it was trained, or retrain it with python train.py "
                  "(a run that was cut short resumes with ckpt_path=last)")
_FROZEN_COPY = re.compile("|".join(p for v in VARIANTS.values() for p in v.frozen))


#: The trainable parts a differential variant adds: a second branch's LoRA, lambda, the head norm.
_NEW_ATTENTION = re.compile(r"\.branch2\.lora_|\.diff_lambda\.|\.diff_norm\.")


def new_attention_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters of the variant's new attention parts (what attention transfer trains)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and _NEW_ATTENTION.search(n)]


def frozen_variant_names(model: torch.nn.Module) -> list[str]:
    """Names of the frozen parameters that variants created (not in the base checkpoint, not in LoRA)."""
    return [n for n, p in model.named_parameters() if not p.requires_grad and _FROZEN_COPY.search(n)]


def save_adapter(model: PeftModel, adapter_dir: str | Path, variants: dict[str, Any],
                 state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write the adapter, the variants' frozen copies (both safetensors) and the settings to rebuild the model.

    ``state_dict``: whole tensors by the model's own names, for a model whose parameters are shards (FSDP);
    null: the model's parameters as they are."""
    adapter_dir = Path(adapter_dir)
    model.save_pretrained(str(adapter_dir), safe_serialization=True, state_dict=state_dict)
    params = dict(model.named_parameters()) if state_dict is None else state_dict
    frozen = {n: params[n].detach().contiguous() for n in frozen_variant_names(model)}
    if frozen:
        save_file(frozen, str(adapter_dir / VARIANT_WEIGHTS_FILE))
    (adapter_dir / VARIANTS_FILE).write_text(json.dumps(variants, indent=2))


def load_adapter(base: PaliGemmaForConditionalGeneration, adapter_dir: str | Path) -> PeftModel:
    """Reload a saved adapter onto a freshly loaded base, after re-applying the run's variants.

    The variant modules (differential attention, SwiGLU) are code, not weights: they are rebuilt
    from ``diffpali.json``; their trained tensors come from the adapter's safetensors and their
    frozen copies from ``variant_weights.safetensors``.
    Only safetensors are read (no pickle): an adapter saved as ``adapter_model.bin`` is refused.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_WEIGHTS_FILE}; diffpali loads adapters from safetensors "
                                "only (a pickled adapter_model.bin could run code when loaded)")
    check_files(adapter_dir, ADAPTER_REMEDY, required=(ADAPTER_CONFIG_FILE,))
    variants_file = adapter_dir / VARIANTS_FILE
    if variants_file.is_file():
        saved = json.loads(variants_file.read_text())
        # settings_from_record: an adapter saved before per-variant settings (every attn field flat) loads too
        apply_variants(base, settings_from_record(saved["attn"]), FfnConfig(**saved["ffn"]))
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    if (adapter_dir / VARIANT_WEIGHTS_FILE).is_file():
        frozen = load_file(str(adapter_dir / VARIANT_WEIGHTS_FILE))
        unexpected = model.load_state_dict(frozen, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{adapter_dir / VARIANT_WEIGHTS_FILE} holds tensors this model lacks, "
                             f"e.g. {unexpected[:3]}")
    return model

"""``model.source=random``: a real PaliGemma architecture with random weights and a processor of its shape.

The processor has the checkpoint's image size, image-token count, vocabulary size and special-token
ids, so every tensor a rehearsal builds has the size it has with the real weights. Its tokenizer is
made locally (no download): Gemma's special and byte pieces, printable characters, and filler pieces
up to Gemma's 256,000, then PaliGemma's 1,024 ``<loc>`` and 128 ``<seg>`` at the ids the Hub's
tokenizer gives them (256,000-257,151); ``PaliGemmaProcessor`` adds ``<image>`` next, at 257,152,
the checkpoints' ``image_token_index``. It tokenizes text character by character (no merges):
sequence lengths are a little longer than with Gemma's own pieces, the vocabulary is exact.
It is built once and cached under the cache root.

An architecture whose vocabulary is tiny (``tiny_paligemma2``) uses the processor shipped with the
tiny zoo base instead, and its embedding is sized from that processor.
"""

from __future__ import annotations

import logging
import shutil
import string
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import GemmaTokenizer, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from ..config import ModelConfig
from ..config.architectures import ARCHITECTURES, PALIGEMMA_TOKENIZER_SIZE, Architecture
from ..paths import SHIPPED_TINY_DIR, cache_root
from .architecture import build_random
from .tiny import BYTE_TOKENS, SPECIAL_TOKENS

log = logging.getLogger(__name__)

#: Gemma's vocabulary before PaliGemma's additions.
GEMMA_VOCAB = 256_000
LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]
#: Bump when the synthetic tokenizer changes: the cache key of a built processor.
PROCESSOR_RECIPE = 1


def synthetic_vocabulary() -> dict[str, int]:
    """Piece -> id: Gemma's specials and bytes, printable characters, fillers to 256,000, <loc>, <seg>."""
    pieces = list(SPECIAL_TOKENS) + BYTE_TOKENS + ["▁"]
    pieces += [c for c in string.ascii_letters + string.digits + string.punctuation if c not in pieces]
    pieces += [f"▁filler{i}" for i in range(GEMMA_VOCAB - len(pieces))]
    pieces += LOC_TOKENS + SEG_TOKENS
    assert len(pieces) == PALIGEMMA_TOKENIZER_SIZE, len(pieces)
    return {piece: index for index, piece in enumerate(pieces)}


def build_processor(image_size: int, patch_size: int) -> PaliGemmaProcessor:
    """The synthetic full-size processor for one image size (SigLIP's normalisation, as on the Hub)."""
    tokenizer = GemmaTokenizer(vocab=synthetic_vocabulary(), merges=[])
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def processor_dir(arch: Architecture, cache_dir: str | None = None) -> Path:
    """Where the synthetic processor for ``arch``'s image size is cached (built on first use)."""
    v = arch.vision
    target = cache_root(cache_dir) / "processors" / f"paligemma-{v.image_size}px-p{v.patch_size}-r{PROCESSOR_RECIPE}"
    if (target / "processor_config.json").is_file():
        return target
    log.info("building the synthetic %d-piece processor for %d px into %s", PALIGEMMA_TOKENIZER_SIZE + 1,
             v.image_size, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:  # built beside the target and renamed, so an interrupted build never looks finished
        build_processor(v.image_size, v.patch_size).save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def random_processor(arch: Architecture, cache_dir: str | None = None) -> PaliGemmaProcessor:
    """The processor of ``arch``: the shipped tiny one for a tiny vocabulary, else the synthetic full one."""
    if arch.text.vocab_size < PALIGEMMA_TOKENIZER_SIZE:
        return PaliGemmaProcessor.from_pretrained(str(SHIPPED_TINY_DIR))
    return PaliGemmaProcessor.from_pretrained(str(processor_dir(arch, cache_dir)))


def load_random(cfg: ModelConfig, dtype: torch.dtype,
                seed: int = 0) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """``cfg.architecture`` (cut to ``cfg.depth``) with random weights in ``dtype``, and its processor.

    The same ``seed`` gives the same weights, so a saved adapter reloads onto the same base.
    """
    arch = ARCHITECTURES[cfg.architecture].at_depth(cfg.depth)
    processor = random_processor(arch, cfg.cache_dir)
    size = processor.image_processor.size["height"]
    if size != arch.vision.image_size or processor.image_seq_length != arch.vision.image_tokens:
        raise ValueError(f"model.architecture={cfg.architecture}: the processor reads {size} px images "
                         f"({processor.image_seq_length} tokens), the architecture {arch.vision.image_size} px")
    vocab = max(arch.text.vocab_size, len(processor.tokenizer))  # the Hub's rows, or the tiny tokenizer's
    arch = replace(arch, text=replace(arch.text, vocab_size=vocab))
    model = build_random(arch, dtype, seed=seed, image_token_index=processor.image_token_id,
                         vocab_size=vocab)
    return model, processor

"""The offline tiny PaliGemma: tokenizer, processor and config built with real transformers classes.

Nothing here is downloaded. The tokenizer is a byte-fallback BPE trained locally with
``tokenizers`` and wrapped in transformers' ``GemmaTokenizer``; the image processor is SigLIP's
(PIL backend) with ``image_seq_length`` set; ``PaliGemmaProcessor`` then adds ``<image>``, 1024
``<loc>`` and 128 ``<seg>`` tokens, so the model's vocabulary is sized from ``len(tokenizer)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GemmaConfig, GemmaTokenizer, PaliGemmaConfig, PaliGemmaProcessor, SiglipVisionConfig
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from ..attention import variant_for
from ..config import AttnSettings, TinySpec

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
#: Bump when the build recipe changes in a way the spec does not capture.
RECIPE_VERSION = 8


#: Attention knobs added after differential bases were first built, with the value that leaves a build as
#: it was: at that value a knob is left out of the key, so the keys (and caches) of those bases hold.
ADDED_KNOBS = {"lambda_warmup_steps": 0}


def _hashed(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def spec_key(spec: TinySpec) -> str:
    """Short stable hash of the spec and recipe version: the cache key of a built base.

    A vanilla spec hashes without its ``attn`` record, so the keys of bases built before the field
    existed still hold; a differential one hashes its whole typed record, every default filled in
    (but those of ``ADDED_KNOBS``).
    """
    settings = spec.attention()
    fields = {k: v for k, v in asdict(spec).items() if k != "attn"}
    if variant_for(settings).differential:
        fields["attn"] = keyed_attention(settings)
    return _hashed({"spec": fields, "recipe": RECIPE_VERSION})


def stage0_key(spec: TinySpec) -> str:
    """Hash of what stage 0 depends on (the tower, its recipe, the seed, its attention if converted): a
    stage-0 checkpoint serves every spec that differs from it only after stage 0, a decoder-only variant
    included."""
    payload = {"vision": asdict(spec.vision), "stage0": asdict(spec.stage0), "seed": spec.seed,
               "recipe": RECIPE_VERSION}
    settings = spec.attention()
    if variant_for(settings).differential and "vision" in settings.towers:
        payload["attn"] = keyed_attention(settings)
    return _hashed(payload)


def keyed_attention(settings: AttnSettings) -> dict:
    """A differential base's attention settings as its keys hash them (see ``ADDED_KNOBS``)."""
    return {k: v for k, v in asdict(settings).items() if ADDED_KNOBS.get(k, object()) != v}


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> GemmaTokenizer:
    """Train a Gemma-style BPE (spaces as '▁', byte fallback) on ``corpus``, counted with its repeats.

    Training splits words at '▁' and isolates punctuation, so no merge crosses a word boundary or
    glues a mark to a word: "circle", "circle." and "circle?" are one token "▁circle" and a mark, as
    in Gemma's own vocabulary, not three unrelated tokens. GemmaTokenizer then applies the merges to
    whole strings and gets the same pieces. Repeats count, so the words the model reads and answers
    most (colours, shapes, yes, no) become single tokens.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern="▁", behavior="merged_with_next"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + BYTE_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(sorted(corpus), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return GemmaTokenizer(vocab=model["vocab"], merges=merges)


def build_processor(tokenizer: GemmaTokenizer, spec: TinySpec) -> PaliGemmaProcessor:
    v = spec.vision
    image_processor = SiglipImageProcessorPil(
        size={"height": v.image_size, "width": v.image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = (v.image_size // v.patch_size) ** 2
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_config(spec: TinySpec, processor: PaliGemmaProcessor) -> PaliGemmaConfig:
    v, t = spec.vision, spec.text
    tokenizer = processor.tokenizer
    vision = SiglipVisionConfig(
        hidden_size=v.hidden_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        intermediate_size=v.intermediate_size,
        image_size=v.image_size,
        patch_size=v.patch_size,
        projection_dim=t.hidden_size,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        head_dim=t.head_dim,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=processor.image_token_id,
        projection_dim=t.hidden_size,
        hidden_size=t.hidden_size,
    )
    config.text_config.vocab_size = len(tokenizer)
    config.vision_config.projection_dim = t.hidden_size
    return config

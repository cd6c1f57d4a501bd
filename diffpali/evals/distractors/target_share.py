"""The target cell's share of image attention, per distractor point (eval=attention's measurement)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ...config import EvaluateConfig
from ...data.collate import PaliGemmaCollator, model_inputs, to_device
from ...data.grids import needle_answer
from ..attention.layout import cell_patches, sample_layout
from ..attention.recorder import record_attention
from ..attention.shares import ShareAccumulator
from ..attention.task import measure, patch_geometry
from ..base import batch_size
from ..mmneedle.task import needle_example
from .sets import DistractorPoint

PREFIX = "attention/text"


@torch.no_grad()
def needle_share(cfg: EvaluateConfig, model: Any, processor: Any, stacks: Any, positives: list, point: DistractorPoint,
                 device: str) -> tuple[Optional[float], Optional[float], int]:
    """needle / (needle + other cells) of the answer rows in the LAST text layer, its standard error over
    samples, and the sample count. Each question is teacher-forced with its true answer, as eval=attention does."""
    if not positives:
        return None, None, 0
    image_size, patch = patch_geometry(model)
    cells = cell_patches(image_size, patch, point.grid)
    collate = PaliGemmaCollator(processor, train=True, dataset_name="distractors")
    accumulator = ShareAccumulator()
    was_training = model.training
    model.eval()
    try:
        with record_attention(model) as recorder:
            for start in range(0, len(positives), batch_size(cfg)):
                chunk = positives[start : start + batch_size(cfg)]
                examples = [{**needle_example(stacks.images(h), prompt), "suffix": needle_answer(*h.target)}
                            for h, prompt in chunk]
                batch = to_device(collate(examples), device)
                model(**model_inputs(batch, with_labels=False), use_cache=False)
                layers = recorder.take()
                for b, (haystack, _) in enumerate(chunk):
                    layout = sample_layout(batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b],
                                           image_token_id=processor.image_token_id,
                                           tokens_per_image=int(processor.image_seq_length), cells=cells,
                                           target=haystack.target, grid=point.grid,
                                           eos_token_id=processor.tokenizer.eos_token_id)
                    measure(layers, b, layout, haystack.sample_id, accumulator, {}, overlay=False)
    finally:
        model.train(was_training)
    metrics = accumulator.metrics(PREFIX)
    last = max(int(k.split("/")[2][5:]) for k in metrics if k.startswith(f"{PREFIX}/layer") and k.count("/") == 3)
    share = metrics.get(f"{PREFIX}/layer{last}/needle_of_image")
    return share, metrics.get(f"{PREFIX}/layer{last}/needle_of_image_sem"), len(positives)

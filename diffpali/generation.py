"""Batched greedy answer generation, shared by validation, evaluate.py and the base builder."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .data.collate import PaliGemmaCollator, model_inputs, to_device


def clean_answer(text: str) -> str:
    """Keep what comes before the first newline: PaliGemma ends an answer there or at <eos>."""
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def generate_answers(model: Any, processor: Any, batch: dict[str, Any], max_new_tokens: int,
                     synced: bool = False) -> list[str]:
    """Greedy decoding with the KV cache over a left-padded batch; decodes only the new tokens.

    ``token_type_ids`` are passed through: without them generation loses the prefix-LM mask. ``synced``
    (a sharded model): every rank keeps stepping until all are done, since each step gathers from all.
    """
    inputs = model_inputs(batch, with_labels=False)
    prompt_length = inputs["input_ids"].shape[1]
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        synced_gpus=synced,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
    )
    new_tokens = output[:, prompt_length:]
    texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [clean_answer(t) for t in texts]


@torch.no_grad()
def generate_for_examples(
    model: Any,
    processor: Any,
    examples: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    max_new_tokens: int,
    device: torch.device | str = "cpu",
    source: str = "examples",
) -> list[str]:
    """Answers for ``examples`` (each with ``image`` or ``images``, and ``prefix``), in order.

    The one path every generative evaluation (MMNeedle, POPE) takes, so no task is decoded differently.
    """
    collate = PaliGemmaCollator(processor, train=False, dataset_name=source)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start : start + batch_size]))
            answers += generate_answers(model, processor, to_device(batch, device), max_new_tokens)
    finally:
        model.train(was_training)
    return answers


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned: ``output.cache`` from transformers 5.24 on, ``past_key_values``
    before it (reading the old name on 5.24 logs a deprecation)."""
    return output["cache"] if "cache" in output else output.past_key_values

"""Held-out read-outs of a build in progress, never on test images, and lambda at the start and end of a build."""

from __future__ import annotations

import random
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..config import TinySpec
from ..data import easy_vqa
from ..data.collate import PaliGemmaCollator, model_inputs
from ..data.grids import LEFT_RIGHT_PROMPT, TOP_BOTTOM_PROMPT
from ..generation import generate_for_examples
from ..scenes import draw_scene, sample_objects
from ..surgery import lambda_values
from .mixture import QUESTION_PROMPT, Stage1Mixture
from .stages import TokenCache, collate_stage1

#: Seed of the batch lambda is read on: no training stream uses it (theirs are the spec's integer seed).
LAMBDA_PROBE_SEED = "lambda-probe"


def validation_singles(limit: int) -> tuple[list, list[tuple[str, str]]]:
    """The first ``limit`` easy-vqa VALIDATION images (held out of every stage) with their (colour, shape)."""
    labels = easy_vqa.image_labels("train")
    ids = [i for i in easy_vqa.split_image_ids("validation") if i in labels][:limit]
    images = []
    for image_id in ids:
        with Image.open(easy_vqa.image_path("validation", image_id)) as opened:
            images.append(opened.convert("RGB"))
    return images, [labels[i] for i in ids]


@torch.no_grad()
def first_token_replies(model: Any, processor: Any, examples: list[dict], device: str,
                        batch_size: int = 64) -> list[str]:
    """The greedy first answer token of each example (one prefix-only forward pass, as generate's prefill)."""
    collate = PaliGemmaCollator(processor, train=False, dataset_name="probe")
    was_training = model.training
    model.eval()
    replies = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        inputs = {k: v.to(device) for k, v in model_inputs(batch, with_labels=False).items()}
        ids = model(**inputs).logits[:, -1].argmax(-1)
        replies += [processor.tokenizer.decode([int(i)]).strip() for i in ids]
    model.train(was_training)
    return replies


def stage1_probe(model: Any, processor: Any, spec: TinySpec, device: str, samples: int = 96) -> dict[str, float]:
    """Quick held-out read-outs during stage 1, never on test images.

    easy-vqa VALIDATION answers by kind (greedy generation), and the paper's two location questions on
    drawn 2x2 grids of 1, 2 and 4 objects (first answer token), drawn from a seed no training stream uses.
    """
    ds = easy_vqa.load_easy_vqa("validation", limit=4 * samples)
    picked = list(range(0, len(ds), 4))[:samples]
    vqa = [{"image": ds[i]["image"], "prefix": QUESTION_PROMPT.format(question=ds[i]["question"])} for i in picked]
    replies = generate_for_examples(model, processor, vqa, batch_size=64, max_new_tokens=4, device=device)
    by_kind: dict[str, list[bool]] = {}
    for i, reply in zip(picked, replies):
        by_kind.setdefault(ds[i]["category"], []).append(reply == ds[i]["answers"][0])
    scores = {f"val_vqa/{kind}": round(sum(v) / len(v), 3) for kind, v in sorted(by_kind.items())}
    for count in (1, 2, 4):
        rng = random.Random(f"probe/where/{count}")
        grids = []
        for k in range(samples // 2):
            scene = draw_scene(rng, 2, sample_objects(rng, 2, count), spec.vision.image_size)
            grids.append((scene, scene.objects[k % count]))
        right = []
        questions = ((TOP_BOTTOM_PROMPT, ("top", "bottom")), (LEFT_RIGHT_PROMPT, ("left", "right")))
        for axis, (prompt, names) in enumerate(questions):
            examples = [{"image": s.image, "prefix": QUESTION_PROMPT.format(question=prompt.format(caption=t.caption))}
                        for s, t in grids]
            replies = first_token_replies(model, processor, examples, device)
            right.append([r == names[t.cell[axis]] for r, (_, t) in zip(replies, grids)])
        scores[f"drawn_where_exact/{count}obj"] = round(sum(a and b for a, b in zip(*right)) / len(grids), 3)
    return scores


def lambda_probe_batch(spec: TinySpec, processor: Any, size: int = 8) -> dict[str, torch.Tensor]:
    """A fixed small batch of stage-1 examples (the main mixture) from a seed no training stream uses."""
    per_side = spec.vision.image_size // spec.vision.patch_size
    mixture = Stage1Mixture(spec.stage1.weights, f"{LAMBDA_PROBE_SEED}/{spec.seed}", spec.stage1.steps,
                            spec.vision.image_size, per_side)
    return collate_stage1(mixture.batch(spec.stage1.steps, size), TokenCache(processor), per_side * per_side)


@torch.no_grad()
def lambda_after_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every converted layer's lambda after one forward pass on ``batch`` (eval mode), so that a lambda that
    varies by token (DIFF V2) has tokens to average over; the model's mode is restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    device = next(model.parameters()).device
    model(**{k: batch[k].to(device) for k in ("input_ids", "pixel_values", "attention_mask", "token_type_ids")})
    for module, training in modes:
        module.training = training
    return lambda_values(model)

"""Build the tiny PaliGemma base: train a tokenizer, then pretrain the whole model.

    python -m diffpali.zoo.build --out diffpali/zoo/tiny_paligemma [--device cuda]
    python -m diffpali.zoo.build --out base_with_stage2 --stage1-from diffpali/zoo/tiny_paligemma --mixture-steps 20000

Stage 1 learns easy-vqa questions from scratch (the shipped base: 5,000 steps, about 18 minutes on
two CPU cores). Stage 2, off by default (``TinySpec.mixture_steps=0``), continues on the multitask
mixture (questions, captions, locating a caption in a 2x2 grid; ``zoo/mixture.py``); 1,500 steps
of it on a CPU left the model answering the location questions with a constant (exact 0.25, row
0.50, column 0.50 on validation haystacks), so it needs a GPU's budget. Deterministic for a given
spec, device type and library versions (seeded init, seeded mixture, seeded loader order).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

from ..config import TinySpec
from ..data import easy_vqa
from ..data.collate import PaliGemmaCollator, to_device, model_inputs
from ..evaluation import score_vqa
from .mixture import GRID_N, QUESTION_PROMPT, STAGE1_WEIGHTS, STAGE2_WEIGHTS, PretrainMixture
from .tiny import build_config, build_processor, spec_key, train_tokenizer

log = logging.getLogger(__name__)
BUILD_INFO = "build_info.json"


def question_only_baseline(split: str = "test") -> dict[str, float]:
    """Accuracy of answering from the question alone: each train question's most frequent answer.

    This is the bar a model that ignores the image clears on easy-vqa; the majority answer is lower.
    """
    from collections import Counter, defaultdict

    train = easy_vqa._raw("train")
    by_question: dict[str, Counter] = defaultdict(Counter)
    for q, a in zip(train.questions, train.answers):
        by_question[q][a] += 1
    fallback = Counter(train.answers).most_common(1)[0][0]
    raw = easy_vqa._raw(split)
    hits: dict[str, list[int]] = defaultdict(list)
    for q, a in zip(raw.questions, raw.answers):
        guess = by_question[q].most_common(1)[0][0] if q in by_question else fallback
        hits["overall"].append(int(guess == a))
        hits[easy_vqa.question_category(a)].append(int(guess == a))
    return {k: sum(v) / len(v) for k, v in hits.items()}


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _pretrain(
    model: torch.nn.Module,
    processor,
    mixture: PretrainMixture,
    *,
    steps: int,
    lr: float,
    seed: int,
    device: str,
    workers: int,
    stage: str,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 0,
) -> list[float]:
    """Full (non-LoRA) training of ``model`` on ``mixture``: AdamW, 1% warm-up, cosine; returns the losses."""
    start = time.time()
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        mixture,
        batch_size=mixture.batch_size,
        shuffle=False,  # the mixture is already a seeded random stream
        num_workers=workers,
        collate_fn=PaliGemmaCollator(processor, train=True, dataset_name="mixture"),
        generator=generator,
        persistent_workers=workers > 0,
    )
    # fused: the per-tensor Adam loop took a fifth of each CPU step on this many small tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    warmup = max(1, steps // 100)
    use_bf16 = device.startswith("cuda")
    model.train()
    losses: list[float] = []
    for step, batch in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = lr * _schedule(step, steps, warmup)
        batch = to_device(batch, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**model_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.4f (%.0fs)", stage, step, steps, sum(losses[-50:]) / len(losses[-50:]), time.time() - start)
        if progress is not None and progress_every and step and step % progress_every == 0:
            progress(step)
    return losses


def _needle_probe(model, processor, spec: TinySpec, device: str, batch_size: int, samples: int = 200) -> dict:
    """The paper-mode MMNeedle score (row AND column) on haystacks of VALIDATION images."""
    from ..data.grids import LEFT_RIGHT_PROMPT, TOP_BOTTOM_PROMPT
    from ..generation import generate_for_examples
    from ..needle.answers import parse_side
    from ..needle.haystack import build_haystacks, render
    from ..needle.scoring import score_paper
    from ..needle.sources import easy_vqa_items

    items = easy_vqa_items("validation")
    paths = {i.ref: i.path for i in items}
    cell = spec.vision.image_size // GRID_N
    haystacks = build_haystacks(items, images=1, grid=GRID_N, samples=samples, negative_fraction=0.0, seed=spec.pretrain_seed)
    images = [render(h, paths, GRID_N, cell)[0] for h in haystacks]
    replies = {}
    for name, prompt in (("rows", TOP_BOTTOM_PROMPT), ("cols", LEFT_RIGHT_PROMPT)):
        examples = [{"image": im, "prefix": QUESTION_PROMPT.format(question=prompt.format(caption=h.caption))}
                    for im, h in zip(images, haystacks)]
        replies[name] = generate_for_examples(model, processor, examples, batch_size=batch_size, max_new_tokens=2, device=device)
    scores = score_paper(haystacks, [parse_side(r, ("top", "bottom")) for r in replies["rows"]],
                         [parse_side(c, ("left", "right")) for c in replies["cols"]])
    return {"exact": scores.exact, "row": scores.row, "column": scores.column, "samples": samples, "convention": "row AND column"}


def build_base(
    spec: TinySpec,
    out_dir: Path,
    device: str = "cpu",
    workers: int = 0,
    eval_batch_size: int = 256,
    progress_every: int = 500,
    eval_limit: int | None = None,
    stage1_from: Path | None = None,
) -> dict:
    """Train the tiny base described by ``spec`` and save it (model, processor, build_info.json).

    Stage 1 trains from scratch on easy-vqa questions; stage 2 continues on the multitask mixture.
    ``stage1_from``: a directory built from this very spec with ``mixture_steps=0`` (its stage 1),
    which is then reused instead of retrained. Every ``progress_every`` steps a fixed slice of
    validation (never test) is scored, to watch it learn.
    """
    progress_set = easy_vqa.load_easy_vqa("validation", limit=512)
    start = time.time()
    cell_size = spec.vision.image_size // GRID_N  # a 2x2 grid fills the model's input size
    stage1_spec = replace(spec, mixture_steps=0)

    def probe(stage: str) -> Callable[[int], None]:
        def run(step: int) -> None:
            result = score_vqa(model, processor, progress_set, dataset_name="easy_vqa", split="validation",
                               prompt="answer en {question}", batch_size=eval_batch_size, max_new_tokens=4, device=device)
            log.info("%s step %d: validation[:512] VQA accuracy (official) %.3f %s", stage, step, result.overall, result.by_category)
            if stage == "stage 2":
                log.info("%s step %d: MMNeedle paper mode, 40 validation haystacks: %s", stage, step,
                         _needle_probe(model, processor, spec, device, eval_batch_size, samples=40))
        return run

    info: dict = {"key": spec_key(spec), "spec": asdict(spec), "device": device, "torch": torch.__version__}
    if stage1_from is not None:
        previous = json.loads((stage1_from / BUILD_INFO).read_text())
        if previous.get("spec", {}) != {k: v for k, v in asdict(stage1_spec).items() if k in previous.get("spec", {})} or \
                previous.get("spec", {}).get("mixture_steps", 0) != 0:
            raise ValueError(f"{stage1_from}: built from {previous.get('spec')}, which is not stage 1 of {asdict(spec)}")
        processor = PaliGemmaProcessor.from_pretrained(stage1_from)
        model = PaliGemmaForConditionalGeneration.from_pretrained(stage1_from).to(device)
        info["stage1"] = {"reused_from_key": previous.get("key"), "train_seconds": previous.get("train_seconds"),
                          "device": previous.get("device"), "final_loss": previous.get("final_loss"),
                          "scores": previous.get("scores")}
        log.info("tiny base %s: stage 1 reused from %s (key %s)", spec_key(spec), stage1_from, previous.get("key"))
    else:
        torch.manual_seed(spec.pretrain_seed)
        stage1 = PretrainMixture(spec.pretrain_steps * spec.pretrain_batch_size, seed=spec.pretrain_seed,
                                 batch_size=spec.pretrain_batch_size, cell_size=cell_size, weights=STAGE1_WEIGHTS)
        tokenizer = train_tokenizer(stage1.corpus(), spec.text.vocab_size)
        processor = build_processor(tokenizer, spec)
        model = PaliGemmaForConditionalGeneration(build_config(spec, processor)).to(device)
        log.info("tiny base %s: %.2fM parameters, %d + %d steps on %s", spec_key(spec), model.num_parameters() / 1e6,
                 spec.pretrain_steps, spec.mixture_steps, device)
        stage_start = time.time()
        losses = _pretrain(model, processor, stage1, steps=spec.pretrain_steps, lr=spec.pretrain_lr, seed=spec.pretrain_seed,
                           device=device, workers=workers, stage="stage 1", progress=probe("stage 1"), progress_every=progress_every)
        info["stage1"] = {"train_seconds": round(time.time() - stage_start, 1), "final_loss": sum(losses[-50:]) / len(losses[-50:])}

    if spec.mixture_steps:
        stage_start = time.time()
        stage2 = PretrainMixture(spec.mixture_steps * spec.pretrain_batch_size, seed=spec.pretrain_seed + 1,
                                 batch_size=spec.pretrain_batch_size, cell_size=cell_size, weights=STAGE2_WEIGHTS)
        losses = _pretrain(model, processor, stage2, steps=spec.mixture_steps, lr=spec.mixture_lr, seed=spec.pretrain_seed + 1,
                           device=device, workers=workers, stage="stage 2", progress=probe("stage 2"), progress_every=progress_every)
        info["stage2"] = {"train_seconds": round(time.time() - stage_start, 1), "final_loss": sum(losses[-50:]) / len(losses[-50:]),
                          "weights": STAGE2_WEIGHTS}
    info["train_seconds"] = round(time.time() - start, 1)
    info["final_loss"] = info.get("stage2", info["stage1"])["final_loss"]

    scores = {}
    for split in ("validation", "test"):
        result = score_vqa(
            model,
            processor,
            easy_vqa.load_easy_vqa(split, limit=eval_limit),
            dataset_name="easy_vqa",
            split=split,
            prompt="answer en {question}",
            batch_size=eval_batch_size,
            max_new_tokens=4,
            device=device,
        )
        scores[split] = {"overall": result.overall, **result.by_category, "count": result.count}
        log.info("tiny base on easy_vqa %s (official VQA accuracy): %s", split, scores[split])
    info["scores_convention"] = "official"
    info["scores"] = scores
    info["question_only_baseline_test"] = question_only_baseline("test")
    if spec.mixture_steps:
        samples = 200 if eval_limit is None else max(4, min(200, eval_limit // 4 * 4))
        info["mmneedle_paper_validation"] = _needle_probe(model, processor, spec, device, eval_batch_size, samples)
        log.info("tiny base MMNeedle (paper mode, validation images): %s", info["mmneedle_paper_validation"])

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override TinySpec.pretrain_steps")
    parser.add_argument("--mixture-steps", type=int, default=None, help="override TinySpec.mixture_steps (stage 2)")
    parser.add_argument("--mixture-lr", type=float, default=None, help="override TinySpec.mixture_lr (stage 2)")
    parser.add_argument("--stage1-from", type=Path, default=None,
                        help="reuse stage 1 from a base built from the same spec with mixture_steps=0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = TinySpec()
    if args.steps is not None:
        spec.pretrain_steps = args.steps
    if args.mixture_steps is not None:
        spec.mixture_steps = args.mixture_steps
    if args.mixture_lr is not None:
        spec.mixture_lr = args.mixture_lr
    info = build_base(spec, args.out, args.device, args.workers, stage1_from=args.stage1_from)
    print(json.dumps(info["scores"], indent=2))


if __name__ == "__main__":
    main()

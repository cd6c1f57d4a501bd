"""Build the tiny PaliGemma base: train a tokenizer, then pretrain the whole model on the mixture.

    python -m diffpali.zoo.build --out diffpali/zoo/tiny_paligemma [--device cuda]

Deterministic for a given spec, device type and library versions (seeded init, seeded mixture,
seeded loader order). The shipped base was built with this command on one GPU; on a CPU the same
recipe takes hours, so a changed spec on a CPU is the slow fallback, logged as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import PaliGemmaForConditionalGeneration

from ..config import TinySpec
from ..data import easy_vqa
from ..data.collate import PaliGemmaCollator, to_device, model_inputs
from ..evaluation import score_vqa
from .mixture import GRID_N, PretrainMixture
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


def build_base(
    spec: TinySpec,
    out_dir: Path,
    device: str = "cpu",
    workers: int = 0,
    eval_batch_size: int = 256,
    progress_every: int = 500,
    eval_limit: int | None = None,
) -> dict:
    """Train the tiny base described by ``spec`` and save it (model, processor, build_info.json).

    Every ``progress_every`` steps a fixed slice of validation (never test) is scored, to watch it learn.
    """
    progress_set = easy_vqa.load_easy_vqa("validation", limit=512)
    start = time.time()
    torch.manual_seed(spec.pretrain_seed)
    mixture = PretrainMixture(
        spec.pretrain_steps * spec.pretrain_batch_size,
        seed=spec.pretrain_seed,
        batch_size=spec.pretrain_batch_size,
        cell_size=spec.vision.image_size // GRID_N,  # a 2x2 grid fills the model's input size
    )
    tokenizer = train_tokenizer(mixture.corpus(), spec.text.vocab_size)
    processor = build_processor(tokenizer, spec)
    model = PaliGemmaForConditionalGeneration(build_config(spec, processor)).to(device)
    log.info("tiny base %s: %.2fM parameters, %d steps on %s", spec_key(spec), model.num_parameters() / 1e6, spec.pretrain_steps, device)

    generator = torch.Generator().manual_seed(spec.pretrain_seed)
    loader = torch.utils.data.DataLoader(
        mixture,
        batch_size=spec.pretrain_batch_size,
        shuffle=False,  # the mixture is already a seeded random stream
        num_workers=workers,
        collate_fn=PaliGemmaCollator(processor, train=True, dataset_name="mixture"),
        generator=generator,
        persistent_workers=workers > 0,
    )
    # fused: the per-tensor Adam loop took a fifth of each CPU step on this many small tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01, fused=True)
    warmup = max(1, spec.pretrain_steps // 100)
    use_bf16 = device.startswith("cuda")
    model.train()
    losses: list[float] = []
    for step, batch in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = spec.pretrain_lr * _schedule(step, spec.pretrain_steps, warmup)
        batch = to_device(batch, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**model_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == spec.pretrain_steps - 1:
            log.info("step %d/%d loss %.4f (%.0fs)", step, spec.pretrain_steps, sum(losses[-50:]) / len(losses[-50:]), time.time() - start)
        if progress_every and step and step % progress_every == 0:
            probe = score_vqa(model, processor, progress_set, dataset_name="easy_vqa", split="validation",
                              prompt="answer en {question}", batch_size=eval_batch_size, max_new_tokens=4, device=device)
            log.info("step %d: validation[:512] VQA accuracy (official) %.3f %s", step, probe.overall, probe.by_category)
    train_seconds = time.time() - start

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

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    info = {
        "key": spec_key(spec),
        "spec": asdict(spec),
        "device": device,
        "torch": torch.__version__,
        "train_seconds": round(train_seconds, 1),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "scores_convention": "official",
        "scores": scores,
        "question_only_baseline_test": question_only_baseline("test"),
    }
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override TinySpec.pretrain_steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = TinySpec()
    if args.steps is not None:
        spec.pretrain_steps = args.steps
    info = build_base(spec, args.out, args.device, args.workers)
    print(json.dumps(info["scores"], indent=2))


if __name__ == "__main__":
    main()

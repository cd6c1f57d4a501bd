"""``python evaluate.py ckpt=... eval=distractors``: location and existence against the number of distractors.

Each point (N, k, kind, M) is scored as MMNeedle's official mode scores a haystack: the model is
given MMNeedle's instruction for M images of N x N cells, a positive counts only when image, row
and column are all right (``exact``, over positives), and ``existence`` is right when the reply is
"-1" exactly when the target is absent (over all samples). With ``eval.attention_samples`` > 0 the
attention recorder also measures, on that many positives per point, the share of image attention
the answer rows put on the target's cell (``needle_of_image``, chance 1 / cells).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import EvaluateConfig
from ...data.grids import NEEDLE_PROMPT
from ...generation import generate_for_examples
from ..base import EvalOutcome, EvalTable, batch_size, max_new_tokens, samples_dir
from ..mmneedle.answers import parse_needle_reply
from ..mmneedle.scoring import score_official
from ..mmneedle.task import needle_example
from .plots import distractor_curves
from .sets import DistractorPoint, DistractorSetSpec, load_or_build, points
from .target_share import needle_share

CURVES_FILE = "distractor_curves.png"
PREFIX = "distractors"


def setting_points(cfg: EvaluateConfig) -> list[DistractorPoint]:
    e = cfg.eval
    return points(e.distractor_grids, e.distractor_counts, e.distractor_kinds, e.distractor_images)


def run_distractors(cfg: EvaluateConfig, model: Any, processor: Any, device: str, out: Path) -> EvalOutcome:
    e = cfg.eval
    image_size = int(processor.image_processor.size["height"])
    metrics: dict[str, Any] = {}
    items: dict[str, list[tuple[Any, float]]] = {}
    table = EvalTable(["point", "sample_id", "image", "caption", "answer", "reply", "exact"])
    for point in setting_points(cfg):
        stacks = load_or_build(DistractorSetSpec(point, e.samples, e.negative_fraction, e.haystack_seed, image_size),
                               samples_dir(cfg, "distractors"))
        haystacks = stacks.haystacks[: e.limit] if e.limit else stacks.haystacks
        images = [stacks.images(h) for h in haystacks]
        questions = [NEEDLE_PROMPT.format(M=point.images, N=point.grid, caption=h.caption) for h in haystacks]
        prompts = [cfg.data.prompt.format(question=question) for question in questions]
        replies = generate_for_examples(model, processor, [needle_example(i, p) for i, p in zip(images, prompts)],
                                        batch_size=batch_size(cfg), max_new_tokens=max_new_tokens(cfg, 8),
                                        device=device, source="distractors")
        parsed = [parse_needle_reply(r) for r in replies]
        scores = score_official(haystacks, parsed, point.grid)
        key = f"{PREFIX}/{point.name}"
        items[f"{key}/exact"] = [(h.sample_id, float(p.kind == "cell" and p.cell == h.target))
                                 for h, p in zip(haystacks, parsed) if h.target is not None]
        items[f"{key}/existence"] = [(h.sample_id, float((p.kind == "absent") == (h.target is None)))
                                     for h, p in zip(haystacks, parsed)]
        metrics.update({f"{key}/exact": scores.exact, f"{key}/existence": scores.existence,
                        f"{key}/positives": scores.positives, f"{key}/negatives": scores.negatives,
                        f"{key}/invalid": scores.invalid})
        if e.attention_samples:
            positives = [(h, p) for h, p in zip(haystacks, prompts) if h.target is not None][: e.attention_samples]
            share, sem, n = needle_share(cfg, model, processor, stacks, positives, point, device)
            metrics.update({f"{key}/needle_of_image": share, f"{key}/needle_of_image_sem": sem,
                            f"{key}/attention_samples": n})
        for haystack, pictures, reply in list(zip(haystacks, images, replies))[:2]:
            target = "-1" if haystack.target is None else ", ".join(map(str, haystack.target))
            table.rows.append([point.name, haystack.sample_id, pictures[0], haystack.caption, target, reply,
                               parse_needle_reply(reply).cell == haystack.target if haystack.target else None])
    metrics[f"{PREFIX}/setting"] = {"samples_per_point": e.samples, "negative_fraction": e.negative_fraction,
                                    "seed": e.haystack_seed, "grids": e.distractor_grids, "counts": e.distractor_counts,
                                    "kinds": e.distractor_kinds, "images": e.distractor_images,
                                    "prompt": cfg.data.prompt, "scoring": "official MMNeedle: index, row AND column"}
    curves = distractor_curves({"model": metrics}, out / CURVES_FILE, f"ckpt={Path(cfg.ckpt).name or cfg.ckpt}")
    return EvalOutcome(metrics, summary(metrics, setting_points(cfg), out), {f"{PREFIX}/samples": table},
                       {f"{PREFIX}/curves": curves}, items)


def summary(metrics: dict[str, Any], all_points: list[DistractorPoint], out: Path) -> str:
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["Distractor scaling (drawn scenes, MMNeedle's official prompt; exact: image, row AND column right,"
             " over positives; existence: -1 exactly when absent):",
             f"  {'point':<22}{'exact':>8}{'chance':>8}{'existence':>11}{'needle/image':>14}"]
    for point in all_points:
        key = f"{PREFIX}/{point.name}"
        chance = 1 / (point.images * point.grid * point.grid)
        lines.append(f"  {point.name:<22}{fmt(metrics[f'{key}/exact']):>8}{chance:>8.3f}"
                     f"{fmt(metrics[f'{key}/existence']):>11}{fmt(metrics.get(f'{key}/needle_of_image')):>14}")
    lines.append(f"run directory: {out}  (metrics.json, {CURVES_FILE})")
    return "\n".join(lines)

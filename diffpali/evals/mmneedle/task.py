"""``python evaluate.py ckpt=... eval=mmneedle``: build (or reuse) the haystacks, ask, parse, score."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from PIL import Image

from ...config import EvaluateConfig
from ...data.grids import LEFT_RIGHT_PROMPT, NEEDLE_PROMPT, TOP_BOTTOM_PROMPT, needle_answer
from ...generation import generate_for_examples
from ..base import EvalOutcome, EvalTable, batch_size, max_new_tokens, samples_dir, write_replies
from .answers import parse_needle_reply, parse_side
from .haystack import Haystack, HaystackSet, HaystackSpec, load_or_build
from .plots import cell_heatmap
from .scoring import NeedleScores, score_official, score_paper
from .sources import coco_items, easy_vqa_items

HEATMAP_FILE = "mmneedle_heatmap.png"
REPLIES_FILE = "mmneedle_replies.jsonl"


def model_input_size(processor: Any) -> int:
    size = processor.image_processor.size
    return int(size["height"]) if isinstance(size, dict) else int(size.height)


def haystack_set(cfg: EvaluateConfig, processor: Any) -> HaystackSet:
    """The haystacks this config asks for, from the cache when they were built before.

    Shared with ``eval=attention``, so attention is measured on the samples MMNeedle scores.
    """
    eval_cfg = cfg.eval
    if eval_cfg.source == "coco":
        items = coco_items(eval_cfg.coco_captions, eval_cfg.coco_images)
        source = f"coco:{Path(eval_cfg.coco_captions).expanduser().resolve()}"
    else:
        items, source = easy_vqa_items(eval_cfg.split, cfg.data.val_fraction), f"easy_vqa/{eval_cfg.split}"
    spec = HaystackSpec(
        source=source,
        images=eval_cfg.images,
        grid=eval_cfg.grid,
        cell_size=eval_cfg.cell_size or model_input_size(processor) // eval_cfg.grid,
        samples=eval_cfg.samples,
        negative_fraction=0.0 if eval_cfg.mode == "paper" else eval_cfg.negative_fraction,
        seed=eval_cfg.haystack_seed,
    )
    return load_or_build(spec, items, samples_dir(cfg, "haystacks"))


def haystacks_record(cfg: EvaluateConfig, stacks: HaystackSet) -> dict[str, Any]:
    """What metrics.json records of the haystacks asked about: where they came from and how they were built."""
    return {"source": stacks.spec.source, "seed": stacks.spec.seed, "images": cfg.eval.images, "grid": cfg.eval.grid,
            "cell_size": stacks.spec.cell_size, "directory": str(stacks.directory), "prompt": cfg.data.prompt}


def needle_questions(cfg: EvaluateConfig, haystack: Haystack) -> list[tuple[str, str, str]]:
    """(kind, prompt, true answer) of each question MMNeedle asks about ``haystack``, through the VQA
    prompt as the model was fine-tuned: one ``needle`` question in official mode, ``row`` then
    ``column`` in paper mode. The attention analysis asks exactly these."""
    ask = cfg.data.prompt.format
    if cfg.eval.mode == "official":
        question = NEEDLE_PROMPT.format(M=cfg.eval.images, N=cfg.eval.grid, caption=haystack.caption)
        return [("needle", ask(question=question), expected_answer(haystack, "official"))]
    row, _, col = expected_answer(haystack, "paper").partition(" / ")
    return [("row", ask(question=TOP_BOTTOM_PROMPT.format(caption=haystack.caption)), row),
            ("column", ask(question=LEFT_RIGHT_PROMPT.format(caption=haystack.caption)), col)]


def needle_example(images: list, prefix: str) -> dict[str, Any]:
    return {"image": images[0], "prefix": prefix} if len(images) == 1 else {"images": images, "prefix": prefix}


def run_mmneedle(cfg: EvaluateConfig, model: Any, processor: Any, device: str, out: Path) -> EvalOutcome:
    eval_cfg = cfg.eval
    stacks = haystack_set(cfg, processor)
    haystacks = stacks.haystacks[: eval_cfg.limit] if eval_cfg.limit else stacks.haystacks
    images = [stacks.images(h) for h in haystacks]
    asked = [needle_questions(cfg, h) for h in haystacks]

    def generate(k: int, at_least: int) -> list[str]:
        """The replies to every haystack's k-th question."""
        examples = [needle_example(ims, questions[k][1]) for ims, questions in zip(images, asked)]
        return generate_for_examples(model, processor, examples, batch_size=batch_size(cfg),
                                     max_new_tokens=max_new_tokens(cfg, at_least), device=device, source="mmneedle")

    if eval_cfg.mode == "official":
        replies = generate(0, 8)
        scores = score_official(haystacks, [parse_needle_reply(r) for r in replies], eval_cfg.grid)
        shown = replies
    else:
        rows, cols = generate(0, 2), generate(1, 2)
        scores = score_paper(haystacks, [parse_side(r, ("top", "bottom")) for r in rows],
                             [parse_side(c, ("left", "right")) for c in cols])
        shown = [f"{r} / {c}" for r, c in zip(rows, cols)]

    write_replies(out / REPLIES_FILE, ({"sample_id": haystack.sample_id, "caption": haystack.caption,
                                        "target": haystack.target, "reply": reply}
                                       for haystack, reply in zip(haystacks, shown)))
    title = (f"MMNeedle {eval_cfg.mode}, M={eval_cfg.images}, N={eval_cfg.grid}, {len(haystacks)} samples\n"
             f"exact accuracy per needle cell (row AND column right)\nckpt={Path(cfg.ckpt).name or cfg.ckpt}")
    heatmap = cell_heatmap(scores.cells, eval_cfg.grid, title, out / HEATMAP_FILE)
    metrics: dict[str, Any] = dict(scores.as_metrics())
    metrics["mmneedle/samples"] = len(haystacks)
    metrics["haystacks"] = haystacks_record(cfg, stacks)
    table = EvalTable(["sample_id", "haystack", "caption", "answer", "reply", "exact"])
    for haystack, ims, reply in list(zip(haystacks, images, shown))[: cfg.logger.log_predictions]:
        table.rows.append([haystack.sample_id, _side_by_side(ims), haystack.caption,
                           expected_answer(haystack, eval_cfg.mode), reply, _exact(haystack, reply, eval_cfg.mode)])
    items = {"mmneedle/exact": [(h.sample_id, float(_exact(h, reply, eval_cfg.mode)))
                                for h, reply in zip(haystacks, shown) if h.target is not None]}
    if eval_cfg.mode == "official":
        said_absent = [parse_needle_reply(reply).kind == "absent" for reply in shown]
        items["mmneedle/existence"] = [(h.sample_id, float(absent == (h.target is None)))
                                       for h, absent in zip(haystacks, said_absent)]
    else:
        items["mmneedle/column"] = [(h.sample_id, float(_column_right(h, reply))) for h, reply in zip(haystacks, shown)]
    if eval_cfg.mode == "paper" and eval_cfg.paper_scoring == "column_only":
        metrics["mmneedle/paper_scorer_column_only"] = scores.column
    return EvalOutcome(metrics, summary(scores, stacks, len(haystacks), out, eval_cfg.paper_scoring),
                       {"mmneedle/samples": table}, {"mmneedle/heatmap": heatmap}, items)


def expected_answer(haystack: Haystack, mode: str) -> str:
    if haystack.target is None:
        return "-1"
    index, row, col = haystack.target
    if mode == "paper":
        return f"{('top', 'bottom')[row - 1]} / {('left', 'right')[col - 1]}"
    return needle_answer(index, row, col)


def _column_right(haystack: Haystack, reply: str) -> bool:
    """Paper mode: the Left/Right reply alone (what the paper's released scorer graded)."""
    _, _, column = reply.partition(" / ")
    return parse_side(column, ("left", "right")) == ("left", "right")[haystack.target[2] - 1]


def _exact(haystack: Haystack, reply: str, mode: str) -> bool:
    if mode == "paper":
        row, _, col = reply.partition(" / ")
        return (parse_side(row, ("top", "bottom")), parse_side(col, ("left", "right"))) == tuple(
            expected_answer(haystack, mode).split(" / "))
    parsed = parse_needle_reply(reply)
    return parsed.kind == "absent" if haystack.target is None else parsed.cell == haystack.target


def _side_by_side(images: list) -> Image.Image:
    if len(images) == 1:
        return images[0]
    width = sum(im.width for im in images) + 4 * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + 4
    return canvas


def summary(scores: NeedleScores, stacks: HaystackSet, count: int, out: Path,
            paper_scoring: str = "row_and_column") -> str:
    spec = stacks.spec
    chance = 1 / (spec.images * spec.grid * spec.grid)
    head = (f"MMNeedle ({scores.mode} mode, M={spec.images}, N={spec.grid}, {count} samples from {spec.source}, "
            f"seed {spec.seed}; a needle counts only if index, row AND column are right, chance {chance:.0%}):")
    def pct(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    parts = [f"exact {pct(scores.exact)}"]
    if scores.mode == "paper":
        parts.append(f"row {pct(scores.row)}, column {pct(scores.column)}")
    else:
        parts.append(f"index {pct(scores.index)}, existence {pct(scores.existence)} "
                     f"({scores.positives} positives, {scores.negatives} negatives)")
    if scores.mode == "paper" and paper_scoring == "column_only":
        parts.append(f"column only {pct(scores.column)} (the paper's released scorer, which graded its diff model "
                     "on the column alone: chance 50%; not comparable with exact)")
    cells = ", ".join(f"r{r}c{c} {pct(v)}" for (r, c), v in sorted(scores.cells.items()))
    return "\n".join([head, "  " + "; ".join(parts), f"  per needle cell: {cells}",
                      f"  unparseable replies: {scores.invalid}",
                      f"run directory: {out}  (metrics.json, {HEATMAP_FILE}, {REPLIES_FILE})",
                      f"haystacks: {stacks.directory}"])

"""``python evaluate.py ckpt=... eval=attention``: where the answer tokens look on MMNeedle haystacks.

The samples are MMNeedle's (same cached haystacks, same prompts wrapped in the VQA prompt, the same
``eval.limit`` cut), positives only: a needle cell must exist for its share to mean anything. Each
question is teacher-forced with its *true* answer ("top"/"bottom", "left"/"right" in paper mode,
"index, row, column" in official mode), so every checkpoint is measured on the same tokens and rows.
The rows measured are those whose next-token prediction is an answer token; in paper mode the answer
is one token, so the only row is the last prompt token and the forced answer does not influence it.
Whether the model would have answered right is recorded per question (its argmax at each row).

Written to the run directory: ``metrics.json`` (see :class:`~diffpali.evals.attention.shares.ShareAccumulator`),
``attention_samples.jsonl`` (per question: per layer [needle, distractor, text] shares, heads averaged,
for the answer rows ``layers`` and the prompt rows ``prompt_layers``), ``attention_layers.png``,
``attention_overlays.png`` / ``attention_overlays_prompt.png`` and their data ``attention_overlays.json``,
and ``lambda_trajectories.png`` when the scored run recorded a lambda history.

Only the text decoder is recorded (the answer tokens live there); the vision tower keeps its kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ...config import EvaluateConfig
from ...data.collate import PaliGemmaCollator, model_inputs, to_device
from ...lambda_history import read_history
from ...paths import LAMBDA_HISTORY_FILE, find_in_run
from ..base import EvalOutcome, EvalTable, batch_size, write_replies
from ..mmneedle.haystack import Haystack
from ..mmneedle.task import haystack_set, haystacks_record, needle_example, needle_questions
from .layout import SampleLayout, cell_patches, sample_layout, straddling_patches
from .plots import (
    CURVES_FILE,
    LAMBDA_FILE,
    OVERLAY_DATA_FILE,
    OVERLAY_FILE,
    PREFIX,
    PROMPT_OVERLAY_FILE,
    OverlayItem,
    lambda_trajectories,
    layer_curves,
    overlay_figure,
    write_overlays,
)
from .recorder import LayerMaps, record_attention, text_implementation
from .shares import ShareAccumulator, image_map, row_shares

SAMPLES_FILE = "attention_samples.jsonl"


@dataclass
class Question:
    """One teacher-forced question about a haystack."""

    haystack: Haystack
    kind: str  #: row | column (paper mode) or needle (official)
    prefix: str
    answer: str


def questions(cfg: EvaluateConfig, haystacks: list[Haystack]) -> list[Question]:
    """MMNeedle's questions (``needle_questions``) for the positives among ``haystacks``, with their true answers."""
    return [Question(h, kind, prefix, answer) for h in haystacks if h.target is not None
            for kind, prefix, answer in needle_questions(cfg, h)]


def variant_name(model: Any) -> str:
    """The text tower's variant key (``diff_dup_separate``, ``diff_v2``, ...; vanilla for stock attention)."""
    name = text_implementation(model)
    return name.removeprefix("diffpali_") if name.startswith("diffpali_") else "vanilla"


def patch_geometry(model: Any) -> tuple[int, int]:
    vision = model.config.vision_config if hasattr(model, "config") else model.get_base_model().config.vision_config
    return int(vision.image_size), int(vision.patch_size)


def run_attention(cfg: EvaluateConfig, model: Any, processor: Any, device: str, out: Path) -> EvalOutcome:
    eval_cfg = cfg.eval
    stacks = haystack_set(cfg, processor)
    haystacks = stacks.haystacks[: eval_cfg.limit] if eval_cfg.limit else stacks.haystacks
    asked = questions(cfg, haystacks)
    if not asked:
        raise ValueError(f"eval=attention: no positive haystack among the {len(haystacks)} samples "
                         "(official mode: lower eval.negative_fraction or raise eval.limit)")
    image_size, patch = patch_geometry(model)
    cells = cell_patches(image_size, patch, eval_cfg.grid)
    tokens_per_image = int(processor.image_seq_length)
    collate = PaliGemmaCollator(processor, train=True, dataset_name="attention")
    accumulator = ShareAccumulator()
    # sample_id -> per question, per layer (answer rows' map, prompt rows' map) on the image tokens
    overlays: dict[int, list[list[tuple[torch.Tensor, torch.Tensor]]]] = {}
    overlay_ids = list(dict.fromkeys(q.haystack.sample_id for q in asked))[: eval_cfg.overlays]
    records: list[dict[str, Any]] = []
    correct = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_attention(model) as recorder:
            for start in range(0, len(asked), batch_size(cfg)):
                chunk = asked[start : start + batch_size(cfg)]
                images = [stacks.images(q.haystack) for q in chunk]
                examples = [{**needle_example(ims, q.prefix), "suffix": q.answer} for ims, q in zip(images, chunk)]
                batch = to_device(collate(examples), device)
                logits = model(**model_inputs(batch, with_labels=False), use_cache=False).logits
                layers = recorder.take()
                for row, question in enumerate(chunk):
                    layout = sample_layout(batch["input_ids"][row], batch["attention_mask"][row], batch["labels"][row],
                                           image_token_id=processor.image_token_id, tokens_per_image=tokens_per_image,
                                           cells=cells, target=question.haystack.target, grid=eval_cfg.grid,
                                           eos_token_id=processor.tokenizer.eos_token_id)
                    predicted = logits[row, layout.rows].argmax(-1)
                    right = bool((predicted == batch["input_ids"][row, layout.rows + 1]).all())
                    correct += right
                    record: dict[str, Any] = {"sample_id": question.haystack.sample_id, "question": question.kind,
                                              "answer": question.answer, "argmax_right": right}
                    maps_on_image = measure(layers, row, layout, question.haystack.sample_id, accumulator, record,
                                            overlay=question.haystack.sample_id in overlay_ids)
                    if maps_on_image:
                        overlays.setdefault(question.haystack.sample_id, []).append(maps_on_image)
                    records.append(record)
    finally:
        model.train(was_training)

    metrics: dict[str, Any] = {
        "attention/variant": variant_name(model),
        "attention/samples": len({q.haystack.sample_id for q in asked}),
        "attention/questions": len(asked),
        "attention/argmax_accuracy": correct / len(asked),
        # the needle's token count over all image tokens (exactly 1 / (M N^2) when no patch straddles a border)
        "attention/chance_needle_of_image": len(cells[0]) / (tokens_per_image * eval_cfg.images),
        "attention/straddling_patches": straddling_patches(image_size, patch, eval_cfg.grid),
        **accumulator.metrics(PREFIX),
        "haystacks": {**haystacks_record(cfg, stacks), "mode": eval_cfg.mode, "limit": eval_cfg.limit},
    }
    write_replies(out / SAMPLES_FILE, records)

    label = f"{metrics['attention/variant']} ({Path(cfg.ckpt).name or cfg.ckpt})"
    title = f"MMNeedle {eval_cfg.mode}, {len(asked)} questions on {metrics['attention/samples']} haystacks"
    pictures = {"attention/layers": layer_curves({label: metrics}, out / CURVES_FILE, title)}
    if overlay_ids:
        by_id = {q.haystack.sample_id: q.haystack for q in asked}
        items = [_overlay_item(stacks, by_id[i], overlays[i], eval_cfg.images) for i in overlay_ids]
        pictures["attention/overlays"] = overlay_figure(items, eval_cfg.grid, out / OVERLAY_FILE, label)
        pictures["attention/overlays_prompt"] = overlay_figure(items, eval_cfg.grid, out / PROMPT_OVERLAY_FILE, label,
                                                               "prompt")
        write_overlays(out / OVERLAY_DATA_FILE, items, eval_cfg.grid)
    history = _lambda_history(cfg.ckpt)
    if history:
        pictures["attention/lambda"] = lambda_trajectories({label: history}, out / LAMBDA_FILE)
    table = EvalTable(["sample_id", "question", "answer", "argmax_right", *(f"layer{d}_needle" for d in sorted(
        {d for r in records for d in r["layers"]}))])
    for record in records[: cfg.logger.log_predictions]:
        table.rows.append([record["sample_id"], record["question"], record["answer"], record["argmax_right"],
                           *(v[0] for _, v in sorted(record["layers"].items()))])
    return EvalOutcome(metrics, summary(metrics, out, stacks.directory), {"attention/samples": table}, pictures)


def measure(layers: dict[int, LayerMaps], row: int, layout: SampleLayout, sample: int, accumulator: ShareAccumulator,
            record: dict[str, Any], overlay: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One question (row ``row`` of the batch): every layer's shares into ``accumulator`` and ``record``;
    with ``overlay``, returns per layer the (answer rows', prompt rows') weights on the image tokens."""
    record["layers"], record["prompt_layers"] = {}, {}
    on_image: list[tuple[torch.Tensor, torch.Tensor]] = []
    for depth, maps in layers.items():
        answer = row_shares(maps.effective[row], layout)
        prompt = row_shares(maps.effective[row], layout, layout.prompt_rows)
        accumulator.add(depth, "", answer, sample)
        accumulator.add(depth, "prompt_rows", prompt, sample)
        if maps.branches is not None:
            for i, branch in enumerate(maps.branches, 1):
                accumulator.add(depth, f"branch{i}", row_shares(branch[row], layout), sample)
            lam = float(maps.lam[row][:, layout.rows].mean())  # per head and query token: this question's answer rows
            accumulator.lambdas.setdefault(depth, []).append(lam)
            record.setdefault("lambda", {})[depth] = round(lam, 6)
        record["layers"][depth] = [round(float(v), 6) for v in answer.mean(0)]
        record["prompt_layers"][depth] = [round(float(v), 6) for v in prompt.mean(0)]
        if overlay:
            on_image.append((image_map(maps.effective[row], layout),
                             image_map(maps.effective[row], layout, layout.prompt_rows)))
    return on_image


def _overlay_item(stacks: Any, haystack: Haystack, per_question: list[list[tuple[torch.Tensor, torch.Tensor]]],
                  images: int) -> OverlayItem:
    """The stitched image holding the needle, with each layer's attention on that image's tokens
    (averaged over the sample's questions: both of paper mode's)."""
    index = haystack.target[0] - 1
    def mean(which: int) -> list[torch.Tensor]:
        return [torch.stack([pair[which] for pair in layer]).mean(0).reshape(images, -1)[index]
                for layer in zip(*per_question)]

    return OverlayItem(stacks.images(haystack)[index], haystack.caption, haystack.target, mean(0),
                       image_path=str(stacks.image_paths(haystack)[index]), sample_id=haystack.sample_id,
                       prompt_maps=mean(1))


def _lambda_history(ckpt: str) -> Optional[dict[str, list[tuple[int, float]]]]:
    """The trained run's lambda history, when ``ckpt`` is a run (or its adapter) that recorded one."""
    history = find_in_run(ckpt, LAMBDA_HISTORY_FILE)
    return read_history(history.parent) if history else None


def summary(metrics: dict[str, Any], out: Path, haystacks: Path) -> str:
    layers = sorted(int(k.split("/")[2][5:]) for k in metrics
                    if k.startswith(f"{PREFIX}/layer") and k.endswith("/needle") and k.count("/") == 3)
    lines = [f"Attention of the answer rows, text decoder, {metrics['attention/variant']} "
             f"({metrics['attention/questions']} questions on {metrics['attention/samples']} MMNeedle haystacks; "
             f"argmax right on {metrics['attention/argmax_accuracy']:.3f} of them).",
             "  share of the row's net attention on: needle cell (± s.e. over haystacks) | other cells | text;  "
             f"needle / image "
             f"(chance {metrics['attention/chance_needle_of_image']:.3f}; n/a: the rows barely look at the image)"]
    def fmt(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for layer in layers:
        def share(group: str, layer: int = layer) -> Any:
            return metrics[f"{PREFIX}/layer{layer}/{group}"]

        lam = metrics.get(f"{PREFIX}/layer{layer}/lambda")
        lines.append(f"  layer {layer}: {share('needle'):.3f} ± {share('needle_sem'):.3f} | "
                     f"{share('distractor'):.3f} | "
                     f"{share('text'):.3f};  {fmt(share('needle_of_image'))}"
                     + (f"   lambda {lam:.3f}" if lam is not None else "")
                     + f"   (prompt rows: {share('prompt_rows/needle'):.3f} | {share('prompt_rows/distractor'):.3f} | "
                     f"{share('prompt_rows/text'):.3f};  {fmt(share('prompt_rows/needle_of_image'))})")
    lines.append(f"run directory: {out}  (metrics.json, {CURVES_FILE}, {OVERLAY_FILE}, {SAMPLES_FILE})")
    lines.append(f"haystacks: {haystacks}")
    return "\n".join(lines)

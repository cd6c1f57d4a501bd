"""``python evaluate.py ckpt=... eval=pope``: build (or reuse) the probes, ask, parse, score."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from ...config import EvaluateConfig
from ...generation import generate_for_examples
from ..base import EvalOutcome, EvalTable, batch_size, max_new_tokens, samples_dir, write_replies
from .probes import SETTINGS, Probe, ProbeSet, load_or_build
from .scoring import METRICS, PopeScores, parse_yes_no, score_pope
from .sources import coco_source, easy_vqa_source

REPLIES_FILE = "pope_replies.jsonl"
THUMBNAIL = 160  #: longest side, in px, of an image in the W&B table of wrong answers


def probe_set(cfg: EvaluateConfig) -> ProbeSet:
    """The probes this config asks for, from the cache when they were built before."""
    eval_cfg = cfg.eval
    if eval_cfg.source == "coco":
        source = coco_source(eval_cfg.coco_instances, eval_cfg.coco_images, eval_cfg.probe_objects)
    else:
        source = easy_vqa_source(eval_cfg.split, cfg.data.val_fraction)
    return load_or_build(source, eval_cfg.probe_images, eval_cfg.haystack_seed, samples_dir(cfg, "pope"))


def ask(model: Any, processor: Any, cfg: EvaluateConfig, probes: list[Probe],
        device: str) -> dict[tuple[str, str], str]:
    """The reply to every distinct (image, question), asked once with the VQA prompt.

    The present half is the same in every setting, so it is generated once and shared: the settings
    then differ only in their absent half, never in how the same question was decoded.
    """
    unique = list(dict.fromkeys((p.path, p.question) for p in probes))
    refs = {(p.path, p.question): p.image for p in probes}
    examples = [{"image": path, "prefix": cfg.data.prompt.format(question=question), "ref": refs[(path, question)]}
                for path, question in unique]
    replies = generate_for_examples(model, processor, examples, batch_size=batch_size(cfg),
                                    max_new_tokens=max_new_tokens(cfg), device=device, source="pope")
    return dict(zip(unique, replies))


def run_pope(cfg: EvaluateConfig, model: Any, processor: Any, device: str, out: Path) -> EvalOutcome:
    eval_cfg = cfg.eval
    probe_sets = probe_set(cfg)
    settings = SETTINGS if eval_cfg.setting == "all" else (eval_cfg.setting,)
    asked = {s: probe_sets.probes[s][: eval_cfg.limit] if eval_cfg.limit else probe_sets.probes[s] for s in settings}
    replies = ask(model, processor, cfg, [p for s in settings for p in asked[s]], device)

    metrics: dict[str, Any] = {}
    scores: dict[str, PopeScores] = {}
    by_kind: dict[str, dict[str, PopeScores]] = {}
    for setting in settings:
        said = [replies[(p.path, p.question)] for p in asked[setting]]
        scores[setting] = score_pope([p.truth for p in asked[setting]], said)
        metrics.update(scores[setting].as_metrics(f"pope/{setting}/"))
        kinds = sorted({p.kind for p in asked[setting]})
        if len(kinds) > 1:  # easy-vqa: colour and shape questions apart
            by_kind[setting] = {}
            for kind in kinds:
                mine = [(p.truth, r) for p, r in zip(asked[setting], said) if p.kind == kind]
                part = by_kind[setting][kind] = score_pope([t for t, _ in mine], [r for _, r in mine])
                for name in (*METRICS, "probes", "other"):
                    metrics[f"pope/{setting}/by_kind/{kind}/{name}"] = getattr(part, name)
    images = len({p.image for s in settings for p in asked[s]})
    metrics["pope/images"] = images
    metrics["pope"] = {
        "source": probe_sets.spec.source, "split": eval_cfg.split if eval_cfg.source == "easy_vqa" else "val2014",
        "seed": probe_sets.spec.seed, "probe_images": probe_sets.spec.images, "images": images,
        "settings": list(settings), "limit": eval_cfg.limit, "prompt": cfg.data.prompt,
        "questions": probe_sets.questions,
        "positive_class": "yes", "parsing": "VQA normalisation, then exactly yes or no; else other",
        "generated": len(replies), "probes_file": str(probe_sets.path),
    }
    write_replies(out / REPLIES_FILE, reply_records(asked, replies))
    tables = {"pope/wrong_answers": wrong_answers(asked, replies)}
    items = {f"pope/{setting}/accuracy": [(index, float(parse_yes_no(replies[(p.path, p.question)]) == p.truth))
                                          for index, p in enumerate(asked[setting])] for setting in settings}
    return EvalOutcome(metrics, summary(scores, by_kind, probe_sets, images, out), tables, items=items)


def wrong_answers(asked: dict[str, list[Probe]], replies: dict[tuple[str, str], str]) -> EvalTable:
    """Every probe answered wrongly ("other" included), with a thumbnail of its image."""
    table = EvalTable(["setting", "image", "question", "answer", "parsed", "truth", "object", "image_ref"])
    thumbnails: dict[str, Any] = {}
    for setting, probes in asked.items():
        for probe in probes:
            reply = replies[(probe.path, probe.question)]
            parsed = parse_yes_no(reply)
            if parsed == probe.truth:
                continue
            if probe.path not in thumbnails:
                with Image.open(probe.path) as im:
                    thumb = im.convert("RGB")
                thumb.thumbnail((THUMBNAIL, THUMBNAIL))
                thumbnails[probe.path] = thumb
            table.rows.append([setting, thumbnails[probe.path], probe.question, reply, parsed, probe.truth,
                               probe.object, probe.image])
    return table


def reply_records(asked: dict[str, list[Probe]], replies: dict[tuple[str, str], str]) -> Iterator[dict[str, Any]]:
    """Every probe beside its reply, in the order asked."""
    for setting, probes in asked.items():
        for probe in probes:
            reply = replies[(probe.path, probe.question)]
            yield {"setting": setting, "image": probe.image, "object": probe.object, "kind": probe.kind,
                   "question": probe.question, "truth": probe.truth, "reply": reply, "parsed": parse_yes_no(reply)}


def summary(scores: dict[str, PopeScores], by_kind: dict[str, dict[str, PopeScores]], probe_sets: ProbeSet,
            images: int, out: Path) -> str:
    spec = probe_sets.spec
    lines = [f"POPE ({spec.source}, {images} images, seed {spec.seed}; half the probes ask about a present object; "
             "'yes' is the positive class):",
             f"  {'setting':<12} {'probes':>6} {'accuracy':>8} {'precision':>9} {'recall':>6} {'f1':>6} "
             f"{'yes-ratio':>9} {'other':>5}"]
    for setting, s in scores.items():
        lines.append(f"  {setting:<12} {s.probes:>6} {s.accuracy:>8.3f} {s.precision:>9.3f} {s.recall:>6.3f} "
                     f"{s.f1:>6.3f} {s.yes_ratio:>9.3f} {s.other:>5}")
    for setting, kinds in by_kind.items():
        parts = [f"{kind} accuracy {k.accuracy:.3f}, yes-ratio {k.yes_ratio:.3f}" for kind, k in kinds.items()]
        lines.append(f"  {setting:<12} by kind: " + "; ".join(parts))
    lines += [f"run directory: {out}  (metrics.json, {REPLIES_FILE})", f"probes: {probe_sets.path}"]
    return "\n".join(lines)

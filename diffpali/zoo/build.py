"""Build the tiny PaliGemma base: a tokenizer, stage 0 (vision) and stage 1 (the mixture); resumable.

    python -m diffpali.zoo.build --out diffpali/zoo/tiny_paligemma [--device cuda] [--set stage1.steps=4000]

Deterministic for a given spec, device type, torch thread count and library versions: seeded initialisation, and data
streams that are functions of (seed, step, index). Checkpoints go to a work directory every few
hundred steps; running the same command again continues from the last one.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import PaliGemmaForConditionalGeneration

from ..config import TinySpec
from ..data import easy_vqa
from ..data.collate import PaliGemmaCollator, model_inputs
from ..data.grids import LEFT_RIGHT_PROMPT, TOP_BOTTOM_PROMPT
from ..generation import generate_for_examples
from ..jsonio import write_json_atomic
from ..scenes import draw_scene, sample_objects
from ..surgery import lambda_values
from .mixture import FORMATS, QUESTION_PROMPT, Stage1Mixture
from .scratch_attention import convert_for_pretraining
from .stages import (
    Stage0Stream,
    StageRunner,
    TokenCache,
    TokenLabelHeads,
    build_stage1_batches,
    collate_stage1,
    stage0_loss,
    stage0_probe,
    stage1_loss,
)
from .tiny import build_config, build_processor, spec_key, stage0_key, train_tokenizer
from .variant_base import save_variant_base

log = logging.getLogger(__name__)
BUILD_INFO = "build_info.json"
LAMBDA_PROBE_SEED = 7_000_003  #: offset of the lambda probe's stream seed: far from any build's own seed


def _validation_singles(limit: int) -> tuple[list, list[tuple[str, str]]]:
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


def probe_batch(spec: TinySpec, processor: Any, image_tokens: int, device: str, size: int = 32) -> dict:
    """A fixed batch of stage-1 examples from a stream no training step draws (seed offset), for lambda read-outs."""
    mixture = Stage1Mixture(spec.stage1.weights, LAMBDA_PROBE_SEED + spec.seed, spec.stage1.steps,
                            spec.vision.image_size, spec.vision.image_size // spec.vision.patch_size)
    batch = collate_stage1(mixture.batch(spec.stage1.steps, size), TokenCache(processor), image_tokens)
    return {k: v.to(device) for k, v in model_inputs(batch, with_labels=False).items()}


@torch.no_grad()
def lambda_after(model: Any, batch: dict) -> dict[str, float]:
    """Every converted layer's lambda after one forward of ``batch`` (DIFF V2's is a mean over its tokens)."""
    was_training = model.training
    model.eval()
    model(**batch)
    model.train(was_training)
    return lambda_values(model)


def build_base(spec: TinySpec, out_dir: Path, device: str = "cpu", work_dir: Path | None = None,
               progress: bool = True, probe_every: int = 500, checkpoint_every: int = 250) -> dict:
    """Train the tiny base described by ``spec`` and save it (model, processor, build_info.json).

    Checkpoints go to ``work_dir`` every ``checkpoint_every`` steps; calling this again with the same
    spec and ``work_dir`` continues from the last one. ``probe_every``: held-out read-outs (0: at the end only).
    """
    key = spec_key(spec)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / f".build-{key}"
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    per_side = spec.vision.image_size // spec.vision.patch_size
    image_tokens = per_side * per_side
    mixture = Stage1Mixture(spec.stage1.weights, spec.seed, spec.stage1.steps, spec.vision.image_size, per_side,
                            opening=spec.stage1.opening, opening_steps=spec.stage1.opening_steps)

    torch.manual_seed(spec.seed)
    processor = build_processor(train_tokenizer(mixture.corpus(), spec.text.vocab_size), spec)
    model = PaliGemmaForConditionalGeneration(build_config(spec, processor)).to(device)
    attention = spec.attention()
    differential = attention.variant != "vanilla"
    if differential:  # in place from the random initialisation; a vanilla build draws exactly as before
        convert_for_pretraining(model, attention, spec.seed)
    log.info("tiny base %s: %.2fM parameters; stage 0 %d steps, stage 1 %d steps on %s (work dir %s)", key,
             model.num_parameters() / 1e6, spec.stage0.steps, spec.stage1.steps, device, work_dir)
    info: dict[str, Any] = {"key": key, "spec": asdict(spec), "device": device, "torch": torch.__version__,
                            "formats_taught": FORMATS}
    if differential:
        info["attn"] = asdict(attention)
        lambda_probe = probe_batch(spec, processor, image_tokens, device)
        info["lambda"] = {"start": lambda_after(model, lambda_probe)}

    # ---- stage 0: the vision tower alone -------------------------------------------------
    tower = model.model.vision_tower
    heads = TokenLabelHeads(spec.vision.hidden_size, per_side).to(device)
    stage0_params = list(tower.parameters()) + list(heads.parameters())
    runner0 = StageRunner("stage 0", stage0_key(spec), work_dir / "stage0.pt", {"tower": tower, "heads": heads},
                          torch.optim.AdamW(stage0_params, lr=spec.stage0.lr, weight_decay=0.01),
                          spec.stage0.lr, spec.stage0.steps, warmup=50, every=checkpoint_every)
    stage1_state = work_dir / "stage1.pt"
    runner0.resume()  # stage 1's checkpoint holds the tower too; this is for stage 0's own record
    if not stage1_state.is_file():
        stream = Stage0Stream(spec.seed, spec.vision.image_size, per_side)
        images, labels = _validation_singles(400)  # validation images, never test

        def stage0_step(step: int):
            batch = stream.batch(step, spec.stage0.batch_size, processor.image_processor)
            batch = {k: v.to(device) for k, v in batch.items()}
            return stage0_loss(tower, heads, batch)

        tower.train()
        runner0.run(stage0_step, stage0_params, progress=progress, probe_every=probe_every,
                    probe=lambda step: stage0_probe(tower, heads, images, labels, processor.image_processor))

    # ---- stage 1: the mixture (tower frozen, or at a fraction of the learning rate) -------------
    tune_tower = spec.stage1.vision_lr_scale > 0
    tower.requires_grad_(tune_tower)
    match_head = torch.nn.Linear(spec.text.hidden_size, 1).to(device)
    tower_params = set(tower.parameters())
    rest = [p for p in model.parameters() if p.requires_grad and p not in tower_params] + list(match_head.parameters())
    groups = [{"params": rest, "lr_scale": 1.0}]
    if tune_tower:
        groups.append({"params": list(tower.parameters()), "lr_scale": spec.stage1.vision_lr_scale})
    trained = [p for g in groups for p in g["params"]]
    runner1 = StageRunner("stage 1", key, stage1_state, {"model": model, "match": match_head},
                          torch.optim.AdamW(groups, lr=spec.stage1.lr, weight_decay=0.01),
                          spec.stage1.lr, spec.stage1.steps, warmup=spec.stage1.warmup_steps, every=checkpoint_every)
    runner1.resume()
    # the tower is stage 0's, frozen, whichever checkpoint it came from
    info["stage0"] = {"steps": runner0.step, "train_seconds": round(runner0.seconds, 1),
                      "probe_validation_singles": stage0_probe(tower, heads, *_validation_singles(400),
                                                               processor.image_processor)}
    batches = build_stage1_batches(mixture, processor, spec.stage1.batch_size, image_tokens, device)

    def stage1_step(step: int):
        return stage1_loss(model, match_head, batches(step), match_layer=spec.stage1.match_layer,
                           image_tokens=image_tokens, match_weight=spec.stage1.match_weight)

    model.train()
    tower.train(tune_tower)
    runner1.run(stage1_step, trained, progress=progress, probe_every=probe_every,
                probe=lambda step: stage1_probe(model, processor, spec, device))
    info["stage1"] = {"steps": runner1.step, "train_seconds": round(runner1.seconds, 1),
                      "probes": [r["probe"] for r in runner1.history if "probe" in r],
                      "final_loss": sum(r["loss"] for r in runner1.history[-50:]) / max(1, len(runner1.history[-50:]))}
    info["build_seconds_this_run"] = round(time.time() - started, 1)
    info["torch_threads"] = torch.get_num_threads()

    if differential:
        info["lambda"]["end"] = lambda_after(model, lambda_probe)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").eval()
    if differential:
        save_variant_base(model, attention, out_dir)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    write_json_atomic(out_dir / BUILD_INFO, info)
    return info


def apply_overrides(spec: TinySpec, overrides: list[str]) -> TinySpec:
    """``stage1.steps=4000``-style overrides, type-checked against the spec's schema.

    ``attn=<option>`` picks the attention the base is pretrained with (that option's defaults) and
    ``attn.<knob>=<value>`` sets one of its knobs, refused unless that option has it, as train.py does.
    """
    attention = [o for o in overrides if o.split("=", 1)[0] == "attn" or o.startswith("attn.")]
    rest = [o for o in overrides if o not in attention]
    merged = OmegaConf.merge(OmegaConf.structured(spec), OmegaConf.from_dotlist(rest))
    spec = OmegaConf.to_object(merged)
    if attention:
        options = [o.split("=", 1)[1] for o in attention if o.startswith("attn=")]
        knobs = OmegaConf.to_container(OmegaConf.from_dotlist([o[len("attn."):] for o in attention
                                                               if o.startswith("attn.")]))
        option = options[-1] if options else knobs.pop("variant", spec.attn.get("variant", "vanilla"))
        kept = dict(spec.attn) if option == spec.attn.get("variant") else {}  # another option: its own defaults
        spec.attn = {**kept, **knobs, "variant": option}
        spec.attention()  # an unknown option or knob fails here, in one line
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, default=None, help="checkpoint directory (default: beside --out)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TinySpec fields")
    parser.add_argument("--probe-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 beside other work)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = apply_overrides(TinySpec(), args.set)
    info = build_base(spec, args.out, args.device, args.work, probe_every=args.probe_every)
    print(json.dumps({k: info[k] for k in ("key", "stage1")}, indent=2, default=str))


if __name__ == "__main__":
    main()

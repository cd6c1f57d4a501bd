"""Build the tiny PaliGemma base: a tokenizer, stage 0 (vision) and stage 1 (the mixture); resumable.

    python -m diffpali.zoo.build --out diffpali/zoo/tiny_paligemma [--device cuda] [--set stage1.steps=4000]
    python -m diffpali.zoo.build --out DIR --set attn=diff_v2 attn.v2_lambda_init=plain seed=1 [--workers 4]

Deterministic for a given spec, device type, torch thread count and library versions: seeded initialisation, and data
streams that are functions of (seed, step, index). Checkpoints go to a work directory every few
hundred steps; running the same command again continues from the last one. Scenes are drawn in
DataLoader workers (``--workers``; by default none on a CPU, up to 8 on a GPU), with the same weights
as when they are drawn in the training process. ``attn=<option>``: the base is pretrained with that
attention in place from its random initialisation (:mod:`.scratch`) and saved as a variant base
(:mod:`.variant_base`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import PaliGemmaForConditionalGeneration

from ..attention import variant_for
from ..config import ATTN_SETTINGS, AttnSettings, ConfigError, TinySpec, attn_settings
from ..config.rules import choice
from ..jsonio import write_json_atomic
from .mixture import FORMATS, stage1_mixture
from .pipeline import Stage, default_workers, run_stages
from .probes import lambda_after_forward, lambda_probe_batch, stage1_probe, validation_singles
from .scratch import convert_from_scratch
from .stages import (
    Stage0Batches,
    Stage0Stream,
    Stage1Batches,
    TokenLabelHeads,
    stage0_loss,
    stage0_probe,
    stage1_loss,
)
from .tiny import build_config, build_processor, spec_key, stage0_key, train_tokenizer
from .variant_base import save_variant_base

log = logging.getLogger(__name__)
BUILD_INFO = "build_info.json"


def init_modules(spec: TinySpec, processor: Any, device: str = "cpu"
                 ) -> tuple[PaliGemmaForConditionalGeneration, TokenLabelHeads, torch.nn.Linear, AttnSettings]:
    """The model, stage 0's token heads and stage 1's match head at step 0, and the attention settings.

    One seed, one order: the model, the heads, the variant (its lambda draws from the global RNG, its
    second branches from generators of their own), the match head. A vanilla build draws exactly as
    before variants existed, and a decoder-only variant's tower and heads are vanilla's.
    """
    settings = spec.attention()
    per_side = spec.vision.image_size // spec.vision.patch_size
    torch.manual_seed(spec.seed)
    model = PaliGemmaForConditionalGeneration(build_config(spec, processor)).to(device)
    heads = TokenLabelHeads(spec.vision.hidden_size, per_side).to(device)
    if variant_for(settings).differential:
        convert_from_scratch(model, settings, spec.seed)
    match_head = torch.nn.Linear(spec.text.hidden_size, 1).to(device)
    return model, heads, match_head, settings


def build_stages(spec: TinySpec, processor: Any, model: PaliGemmaForConditionalGeneration, heads: TokenLabelHeads,
                 match_head: torch.nn.Module, work_dir: Path, device: str,
                 stage0_path: Path | None = None) -> list[Stage]:
    """Stage 0 (the vision tower alone, with its token heads) and stage 1 (the rest on the mixture; the
    tower frozen, or at ``vision_lr_scale`` of the learning rate). ``stage0_path``: stage 0's checkpoint,
    if not in ``work_dir`` (a file every spec with the same stage-0 key can resume from)."""
    per_side = spec.vision.image_size // spec.vision.patch_size
    image_tokens = per_side * per_side
    tower = model.model.vision_tower
    singles: list = []  # validation images, never test; read once, when the first read-out needs them

    def probe0(step: int = 0) -> dict[str, float]:
        singles[:] = singles or validation_singles(400)
        return stage0_probe(tower, heads, *singles, processor.image_processor)

    stage0 = Stage("stage 0", stage0_key(spec), stage0_path or work_dir / "stage0.pt",
                   {"tower": tower, "heads": heads},
                   [{"params": list(tower.parameters()) + list(heads.parameters()), "lr_scale": 1.0}],
                   spec.stage0.lr, spec.stage0.steps, warmup=50,
                   batches=Stage0Batches(Stage0Stream(spec.seed, spec.vision.image_size, per_side),
                                         spec.stage0.batch_size, processor.image_processor),
                   loss=lambda batch: stage0_loss(tower, heads, batch), probe=probe0, summary=probe0,
                   trains=[tower, heads])

    tune_tower = spec.stage1.vision_lr_scale > 0
    tower_params = set(tower.parameters())
    groups = [{"params": [p for p in model.parameters() if p not in tower_params] + list(match_head.parameters()),
               "lr_scale": 1.0}]
    if tune_tower:
        groups.append({"params": list(tower.parameters()), "lr_scale": spec.stage1.vision_lr_scale})
    mixture = stage1_mixture(spec)

    def loss1(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return stage1_loss(model, match_head, batch, match_layer=spec.stage1.match_layer, image_tokens=image_tokens,
                           match_weight=spec.stage1.match_weight)

    stage1 = Stage("stage 1", spec_key(spec), work_dir / "stage1.pt", {"model": model, "match": match_head}, groups,
                   spec.stage1.lr, spec.stage1.steps, warmup=spec.stage1.warmup_steps,
                   batches=Stage1Batches(mixture, processor, spec.stage1.batch_size, image_tokens), loss=loss1,
                   probe=lambda step: stage1_probe(model, processor, spec, device),
                   trains=[model, match_head], frozen=[] if tune_tower else [tower])
    return [stage0, stage1]


def build_base(spec: TinySpec, out_dir: Path, device: str = "cpu", work_dir: Path | None = None,
               progress: bool = True, probe_every: int = 500, checkpoint_every: int = 250,
               workers: int | None = None, stage0_path: Path | None = None) -> dict:
    """Train the tiny base described by ``spec`` and save it (model, processor, build_info.json).

    Checkpoints go to ``work_dir`` every ``checkpoint_every`` steps; calling this again with the same
    spec and ``work_dir`` continues from the last one. ``probe_every``: held-out read-outs (0: none).
    ``workers``: DataLoader processes drawing the batches (None: :func:`default_workers` of the device).
    ``stage0_path``: where stage 0 checkpoints (default: ``work_dir``), e.g. a cache shared by every spec with
    the same :func:`stage0_key`: vanilla and a decoder-only variant of the same seed train stage 0 once.
    """
    key = spec_key(spec)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / f".build-{key}"
    work_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers(device) if workers is None else workers
    started = time.time()
    corpus = stage1_mixture(spec).corpus()
    processor = build_processor(train_tokenizer(corpus, spec.text.vocab_size), spec)
    model, heads, match_head, settings = init_modules(spec, processor, device)
    differential = variant_for(settings).differential
    log.info("tiny base %s (attn=%s): %.2fM parameters; stage 0 %d steps, stage 1 %d steps on %s, %d data workers "
             "(work dir %s)", key, settings.name(), model.num_parameters() / 1e6, spec.stage0.steps,
             spec.stage1.steps, device, workers, work_dir)
    info: dict[str, Any] = {"key": key, "spec": asdict(spec), "device": device, "torch": torch.__version__,
                            "formats_taught": FORMATS}
    if differential:
        info["attn"] = asdict(settings)
        probe_batch = lambda_probe_batch(spec, processor)
        lambda_start = lambda_after_forward(model, probe_batch)  # the initial weights: the same on every resume

    stages = build_stages(spec, processor, model, heads, match_head, work_dir, device, stage0_path)
    stage0, stage1 = run_stages(stages, device, workers, progress=progress, probe_every=probe_every,
                                checkpoint_every=checkpoint_every)
    info["stage0"] = {"steps": stage0["steps"], "train_seconds": stage0["train_seconds"],
                      "probe_validation_singles": stage0["summary"]}
    recent = stage1["history"][-50:]
    info["stage1"] = {"steps": stage1["steps"], "train_seconds": stage1["train_seconds"],
                      "probes": [r["probe"] for r in stage1["history"] if "probe" in r],
                      "final_loss": sum(r["loss"] for r in recent) / max(1, len(recent))}
    if differential:
        info["lambda"] = {"start": lambda_start, "end": lambda_after_forward(model, probe_batch)}
    info["build_seconds_this_run"] = round(time.time() - started, 1)
    info["torch_threads"] = torch.get_num_threads()
    info["data_workers"] = workers

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").eval()
    if differential:
        save_variant_base(model, settings, out_dir)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    write_json_atomic(out_dir / BUILD_INFO, info)
    return info


def attn_record(current: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The ``attn`` record after ``attn=<option>`` (its defaults) and ``attn.<knob>=<value>`` overrides, every
    default filled in; an unknown option or knob, or a bad value, fails in one line."""
    values, knobs = dict(current), {}
    for item in overrides:
        name, _, text = item.partition("=")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
        if name in ("attn", "attn.variant"):
            choice("attn", value, tuple(sorted(ATTN_SETTINGS)))
            values = asdict(ATTN_SETTINGS[value]())
        else:
            knobs[name.removeprefix("attn.")] = value
    settings = attn_settings({**values, **knobs})
    settings.validate()
    return asdict(settings)


def apply_overrides(spec: TinySpec, overrides: list[str]) -> TinySpec:
    """``stage1.steps=4000``-style overrides, type-checked against the spec's schema; ``attn=diff_v2`` and
    ``attn.<knob>=...`` build the ``attn`` record (:func:`attn_record`)."""
    attn = [o for o in overrides if o.partition("=")[0] == "attn" or o.startswith("attn.")]
    rest = [o for o in overrides if o not in attn]
    merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(spec), OmegaConf.from_dotlist(rest)))
    if attn:
        merged.attn = attn_record(merged.attn, attn)
    return merged


def spec_from_command_line(overrides: list[str]) -> TinySpec:
    """The spec ``--set`` describes, or exit with the one-line reason it is refused."""
    try:
        spec = apply_overrides(TinySpec(), overrides)
        spec.attention()
        return spec
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, default=None, help="checkpoint directory (default: beside --out)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override TinySpec fields (attn=<option> attn.<knob>=...: the attention)")
    parser.add_argument("--probe-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 beside other work)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader processes drawing the batches (default: 0 on a CPU, up to 8 on a GPU)")
    args = parser.parse_args()
    spec = spec_from_command_line(args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = build_base(spec, args.out, args.device, args.work, probe_every=args.probe_every, workers=args.workers)
    print(json.dumps({k: info[k] for k in ("key", "stage1")}, indent=2, default=str))


if __name__ == "__main__":
    main()

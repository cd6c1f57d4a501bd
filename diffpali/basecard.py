"""Build the tiny base and score it with evaluate.py's own tasks: one command, figures in build_info.json.

    python -m diffpali.basecard --out diffpali/zoo/tiny_paligemma            # build (resumable), then score
    python -m diffpali.basecard --out diffpali/zoo/tiny_paligemma --score-only
    python -m diffpali.basecard --out DIR --set attn=diff_split seed=1    # pretrained with DIFF V1 from step 0

The scores are those every fine-tuned model gets from ``evaluate.py`` (same haystacks, probes and
parsers), each beside its chance level; easy-vqa's also beside the question-only baseline. Every
benchmark uses easy-vqa TEST images, which no stage of the build has seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import EvalTaskConfig, EvaluateConfig, LoggerConfig, ModelConfig
from .data.easy_vqa import question_only_baseline
from .jsonio import write_json_atomic
from .runner import evaluate
from .zoo.build import build_base, spec_from_command_line

log = logging.getLogger(__name__)
BUILD_INFO = "build_info.json"

#: name -> (eval settings, metric keys kept, chance levels)
BENCHMARKS: dict[str, tuple[dict[str, Any], tuple[str, ...], dict[str, float]]] = {
    "vqa_test": ({"task": "vqa"}, ("test/vqa_accuracy_official", "test/vqa_accuracy_official/yes/no",
                                   "test/vqa_accuracy_official/color", "test/vqa_accuracy_official/shape"), {}),
    "mmneedle_paper_2x2": ({"task": "mmneedle", "mode": "paper"},
                           ("mmneedle/exact", "mmneedle/row", "mmneedle/column", "mmneedle/invalid"),
                           {"mmneedle/exact": 0.25, "mmneedle/row": 0.5, "mmneedle/column": 0.5}),
    "mmneedle_official_m1_n2": ({"task": "mmneedle", "mode": "official", "grid": 2},
                                ("mmneedle/exact", "mmneedle/existence", "mmneedle/index", "mmneedle/invalid"),
                                {"mmneedle/exact": 0.25, "mmneedle/existence": 0.5}),
    "mmneedle_official_m1_n4": ({"task": "mmneedle", "mode": "official", "grid": 4},
                                ("mmneedle/exact", "mmneedle/existence", "mmneedle/index", "mmneedle/invalid"),
                                {"mmneedle/exact": 1 / 16, "mmneedle/existence": 0.5}),
    "pope": ({"task": "pope"}, tuple(f"pope/{s}/{m}" for s in ("random", "popular", "adversarial")
                                     for m in ("f1", "accuracy", "yes_ratio")), {}),
    "attention_paper_2x2": ({"task": "attention", "mode": "paper"}, (), {"needle_of_image": 0.25}),
}


def _attention_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per decoder layer: the needle's share of image attention, its standard error over haystacks, and its
    distance from chance (0.25) in standard errors."""
    prefix = "attention/text"
    layers = sorted({int(k.split("/")[2][5:]) for k in metrics
                     if k.startswith(f"{prefix}/layer") and k.count("/") == 3})
    out: dict[str, Any] = {}
    for layer in layers:
        share = metrics.get(f"{prefix}/layer{layer}/needle_of_image")
        sem = metrics.get(f"{prefix}/layer{layer}/needle_of_image_sem")
        out[f"layer{layer}"] = {"needle_of_image": share, "sem": sem,
                                "z_vs_chance": None if share is None or not sem else (share - 0.25) / sem}
    return out


def score_base(base_dir: Path, cache_dir: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Every benchmark of :data:`BENCHMARKS` on the base in ``base_dir`` (no adapter), with chance levels."""
    scores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (settings, keys, chance) in BENCHMARKS.items():
            cfg = EvaluateConfig(ckpt="base", model=ModelConfig(source="pretrained", name_or_path=str(base_dir)),
                                 eval=EvalTaskConfig(**settings, limit=limit, cache_dir=cache_dir),
                                 logger=LoggerConfig(kind="none"), output_dir=str(Path(tmp) / name))
            cfg.validate()
            metrics = evaluate(cfg, run_name=f"basecard-{name}")
            entry: dict[str, Any] = {k: metrics.get(k) for k in keys}
            if name.startswith("attention"):
                entry = _attention_summary(metrics)
            scores[name] = {"scores": entry, "chance": chance, "settings": settings}
            log.info("%s: %s", name, entry)
    scores["vqa_test"]["question_only_baseline"] = question_only_baseline("test")
    scores["vqa_test"]["convention"] = "official VQAv2"
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the base directory (built there unless --score-only)")
    parser.add_argument("--score-only", action="store_true", help="score an existing build")
    parser.add_argument("--device", default=None)
    parser.add_argument("--work", type=Path, default=None, help="build checkpoints (default: beside --out)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override TinySpec fields (attn=<option> attn.<knob>=...: the attention)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples of each benchmark")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 beside other work)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader processes drawing the build's batches (default: 0 on a CPU, up to 8 on a GPU)")
    args = parser.parse_args()
    spec = None if args.score_only else spec_from_command_line(args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.score_only:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        build_base(spec, args.out, device, args.work, workers=args.workers)
    info_path = args.out / BUILD_INFO
    info = json.loads(info_path.read_text())
    info["benchmarks"] = score_base(args.out, limit=args.limit)
    write_json_atomic(info_path, info)
    print(json.dumps(info["benchmarks"], indent=1, default=str))


if __name__ == "__main__":
    main()

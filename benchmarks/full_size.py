"""The full-size rehearsal: ``train.py`` itself on a real PaliGemma architecture with random weights.

    python benchmarks/full_size.py model=paligemma2_3b_224 attn=diff_v2 [train.py overrides ...]
    python benchmarks/full_size.py model=paligemma2_10b_224 model.depth=2 --record docs/fullsize_rehearsal.json

No download: the architecture is built from the numbers in diffpali/config/architectures.py in bf16
(``model.source=random``), the processor is the synthetic one of the real shape (diffpali/zoo/random_base.py),
and the data a synthetic VQAv2 directory in the Hub's parquet layout at the model's image size
(diffpali/data/synthetic_vqav2.py). Three things run, each in a process of its own so that each peak is
that process's own resident set (``os.wait4``'s ``ru_maxrss``):

1. ``train.py``: two LoRA optimiser steps (batch 1, no validation), then the test split's batched
   generation on two records (a few new tokens), then the adapter save; step time = fit time / steps.
2. the reload: a fresh base (the same seed gives the same weights), ``load_adapter`` from the saved
   run, logits on one batch; then the run's last checkpoint (every trained tensor and the variants'
   frozen copies) loaded over it and the logits again: the max abs difference says whether the saved
   adapter alone reproduces the trained model (beside it, how far LoRA moves the logits at all).

One line per run is printed; ``--record FILE`` also keeps it in a JSON file keyed by model, depth and variant.
Weights stay bf16 under ``trainer.precision=32-true``: Lightning's 32-true plugin casts nothing (checked
in the reload's line: the dtype of the loaded weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from diffpali.config.architectures import ARCHITECTURES  # noqa: E402
from diffpali.paths import ADAPTER_DIR, CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE  # noqa: E402

#: The rehearsal's settings, before the user's overrides (which win).
DEFAULTS = [
    "model.source=random", "data=vqav2", "data.batch_size=1", "data.eval_batch_size=2", "data.train_limit=8",
    "data.test_limit=2", "data.max_new_tokens=4", "trainer.max_steps=2", "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "optim.warmup_steps=0",
    "ckpt_every_n_steps=2", "logger=none",
]
GIB = 2**30


def option(overrides: list[str], key: str, default: str | None = None) -> str | None:
    """The last value given to ``key`` in Hydra-style ``overrides``."""
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else default


def architecture_of(overrides: list[str]) -> str:
    model = option(overrides, "model", "paligemma_3b_224")
    arch = option(overrides, "model.architecture") or OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml").get(
        "architecture")
    if arch not in ARCHITECTURES:
        raise SystemExit(f"model={model}: no model.architecture (one of {', '.join(ARCHITECTURES)})")
    return arch


def run_measured(command: list[str], log_file: Path) -> tuple[int, float, float, list[tuple[float, float]]]:
    """Run ``command`` with its output in ``log_file``: (exit status, peak RSS in GiB, seconds, RSS samples).

    The peak is the kernel's (``ru_maxrss``); the samples, (time, GiB) every 0.2 s from /proc, place it in a phase.
    """
    started = time.time()
    samples: list[tuple[float, float]] = []
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=_sample_rss, args=(process, samples), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        sampler.join(timeout=1)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss * 1024 / GIB, time.time() - started, samples  # ru_maxrss: KiB


def _sample_rss(process: subprocess.Popen, samples: list[tuple[float, float]]) -> None:
    status = Path(f"/proc/{process.pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:  # the child has exited
            return
        if "VmRSS:" not in text:  # a zombie: exited, not yet reaped
            return
        kib = int(text.split("VmRSS:")[1].split()[0])
        samples.append((time.time(), kib * 1024 / GIB))
        time.sleep(0.2)


def phase_peaks(samples: list[tuple[float, float]], train_log: Path) -> dict[str, float]:
    """Peak sampled RSS (GiB) of each phase of train.py, cut at its log lines: building the model, the fit
    (until the adapter is saved), the test generation and the rest."""
    marks = {}
    for line in train_log.read_text().splitlines():
        for phase, text in (("fit", "] - model "), ("test", "adapter saved to")):
            if text in line and phase not in marks:
                stamp = time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")) + int(line[21:24]) / 1000
                marks[phase] = stamp
    edges = [("build", 0.0), ("fit", marks.get("fit", float("inf"))), ("test", marks.get("test", float("inf")))]
    peaks: dict[str, float] = {}
    for t, gib in samples:
        phase = [name for name, start in edges if t >= start][-1]
        peaks[phase] = round(max(peaks.get(phase, 0.0), gib), 2)
    return peaks


def reload_check(run_dir: Path, data_dir: Path) -> None:
    """In its own process: fresh base + saved adapter vs the same with the last checkpoint loaded over it."""
    import torch
    from datasets import load_dataset

    from diffpali.config import ModelConfig
    from diffpali.data.synthetic_vqav2 import split_file
    from diffpali.model import load_adapter, load_base

    saved = json.loads((run_dir / ADAPTER_DIR / "diffpali.json").read_text())
    model_cfg = ModelConfig(**{k: v for k, v in saved["model"].items() if k != "tiny"})
    base, processor = load_base(model_cfg)
    model = load_adapter(base, run_dir / ADAPTER_DIR).eval()
    records = load_dataset("parquet", data_files=str(split_file(data_dir, "validation")), split="train").select([0, 1])
    batch = processor(text=[f"<image>answer en {r['question']}" for r in records],
                      images=[r["image"].convert("RGB") for r in records],
                      suffix=[r["multiple_choice_answer"] for r in records], return_tensors="pt", padding="longest")
    batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
    with torch.no_grad():
        reloaded = model(**batch).logits.float()
        state = torch.load(run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu", weights_only=True)
        tensors = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
        result = model.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise SystemExit(f"checkpoint tensors the reloaded model lacks: {result.unexpected_keys[:3]}")
        trained = model(**batch).logits.float()
        with model.disable_adapter():  # how far LoRA moved the logits: the diff above could have seen a lost tensor
            without_lora = model(**batch).logits.float()
    print(json.dumps({"logits_max_abs_diff": (reloaded - trained).abs().max().item(),
                      "lora_effect_max_abs": (trained - without_lora).abs().max().item(),
                      "checkpoint_tensors": len(tensors), "weights_dtype": str(next(base.parameters()).dtype),
                      # as trained: LoRA's float32 (peft upcasts adapters), the variants' frozen copies the base's
                      "checkpoint_dtypes": dict(Counter(str(t.dtype) for t in tensors.values()))}))


def rehearse(overrides: list[str], out_root: Path, records: int) -> dict:
    from diffpali.data.synthetic_vqav2 import write_synthetic_vqav2

    arch_name = architecture_of(overrides)
    arch = ARCHITECTURES[arch_name]
    size = arch.vision.image_size
    data_dir = out_root / f"vqav2-{size}px-{records}"
    if not (data_dir / "data").is_dir():
        write_synthetic_vqav2(data_dir, size, records)
    variant = option(overrides, "attn", "vanilla")
    dup_mode = option(overrides, "attn.dup_mode")
    label = variant + (f"-{dup_mode}" if dup_mode else "")
    depth = option(overrides, "model.depth")
    name = f"{option(overrides, 'model', 'paligemma_3b_224')}{f'-depth{depth}' if depth else ''}-{label}"
    run_dir = out_root / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    all_overrides = [*DEFAULTS, f"data.path={data_dir}", *overrides]
    train_cmd = [sys.executable, "train.py", *all_overrides,
                 f"hydra.run.dir={run_dir}"]
    code, train_peak, train_seconds, samples = run_measured(train_cmd, run_dir / "rehearsal-train.log")
    if code:
        raise SystemExit(f"train.py failed ({code}): see {run_dir / 'rehearsal-train.log'}")
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    reload_cmd = [sys.executable, __file__, "--reload", str(run_dir), "--data", str(data_dir)]
    code, reload_peak, reload_seconds, _ = run_measured(reload_cmd, run_dir / "rehearsal-reload.log")
    lines = (run_dir / "rehearsal-reload.log").read_text().splitlines()
    if code or not lines:
        raise SystemExit(f"reload failed ({code}): see {run_dir / 'rehearsal-reload.log'}")
    reload = json.loads(lines[-1])
    return {
        "model": option(overrides, "model", "paligemma_3b_224"), "architecture": arch_name,
        "depth": int(depth) if depth else None, "variant": label, "overrides": overrides,
        "train_peak_rss_gib": round(train_peak, 2),
        "train_phase_peak_rss_gib": phase_peaks(samples, run_dir / "train.log"),
        "reload_peak_rss_gib": round(reload_peak, 2),
        "step_seconds": round(metrics["fit_seconds"] / max(1, metrics["train_steps"]), 1),
        "train_batch_size": int(option(all_overrides, "data.batch_size")),
        "train_sequence_tokens_max": sequence_tokens(data_dir, arch.vision.image_tokens, all_overrides),
        "train_steps": metrics["train_steps"], "generation_seconds": metrics.get("test_seconds"),
        "train_process_seconds": round(train_seconds, 1), "reload_process_seconds": round(reload_seconds, 1),
        **reload, "threads": os.environ.get("OMP_NUM_THREADS"), "run_dir": str(run_dir.relative_to(ROOT))
        if run_dir.is_relative_to(ROOT) else str(run_dir),
    }


def sequence_tokens(data_dir: Path, image_tokens: int, overrides: list[str]) -> int:
    """The longest training sequence of the run: image tokens, then <bos>, prompt, newline, answer, <eos>.

    The synthetic tokenizer has no merges: one token per character (a space is one '▁')."""
    import pyarrow.parquet as pq

    from diffpali.data.synthetic_vqav2 import split_file

    limit = int(option(overrides, "data.train_limit") or 0) or None
    table = pq.read_table(split_file(data_dir, "train"), columns=["question", "multiple_choice_answer"])
    rows = table.to_pylist()[:limit]
    prompt = option(overrides, "data.prompt", "answer en {question}")
    return image_tokens + max(len(prompt.format(question=r["question"])) + len(r["multiple_choice_answer"]) + 3
                              for r in rows)


def record(path: Path, result: dict) -> None:
    """Keep ``result`` in the JSON file ``path`` (a list), replacing an earlier one of the same run."""
    rows = json.loads(path.read_text()) if path.is_file() else []
    key = (result["model"], result["depth"], result["variant"])
    rows = [r for r in rows if (r["model"], r["depth"], r["variant"]) != key] + [result]
    path.write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "fullsize"), help="data and run directories")
    parser.add_argument("--records", type=int, default=16, help="synthetic questions per split")
    parser.add_argument("--record", help="JSON file that keeps each run's line")
    parser.add_argument("--reload", help=argparse.SUPPRESS)  # the reload check's own process
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.reload:
        reload_check(Path(args.reload), Path(args.data))
        return
    result = rehearse(overrides, Path(args.out), args.records)
    if args.record:
        record(Path(args.record), result)
    depth = f" depth {result['depth']}" if result["depth"] else ""
    phases = ", ".join(f"{k} {v:.2f}" for k, v in result["train_phase_peak_rss_gib"].items())
    print(f"{result['model']}{depth} {result['variant']}: "
          f"train peak RSS {result['train_peak_rss_gib']:.2f} GiB "
          f"({phases}), step {result['step_seconds']:.1f} s, "
          f"generation {result['generation_seconds']} s, reload peak RSS {result['reload_peak_rss_gib']:.2f} GiB, "
          f"logits max abs diff on reload {result['logits_max_abs_diff']:.3g} "
          f"(LoRA moves them by up to {result.get('lora_effect_max_abs', float('nan')):.3g}) "
          f"({result['weights_dtype']}, {result['threads']} threads)")


if __name__ == "__main__":
    main()

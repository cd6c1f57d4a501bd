"""Cost of differential attention: a LoRA training step at real PaliGemma widths, vanilla vs diff; KV-cache size.

    python benchmarks/attention_overhead.py [--layers 1] [--repeats 5] [--device cpu|cuda]

The model has PaliGemma 3B's widths (SigLIP So400m: 1152 wide, 16 heads, 4304 MLP, 224 px, patch
14 -> 256 image tokens; Gemma 2B: 2048 wide, 8 heads of 256, one KV head, 16384 MLP) at reduced
depth and with a small vocabulary (the LM head is the same for every variant). Step times: all
variants live in one process and take their steps in turn, round after round, so a slow moment of
the machine hits every variant alike; each time is the median over ``--repeats`` rounds after one
warm-up. Peak memory: each variant once more in a subprocess of its own, over one training step after a
warm-up one (GPU: max allocated; CPU on Linux: the peak resident set, reset before the step, so the
transient buffers of building the model do not count). Ratios are against vanilla
from the same invocation; absolute times only mean something on a GPU. KV-cache bytes per token:
the cache a prefill leaves, divided by the sequence length (every variant of VARIANTS, measured).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffpali.attention import VARIANTS as REGISTRY  # noqa: E402
from diffpali.config import settings_for  # noqa: E402

VARIANTS = {settings_for(name).info().display: name for name in REGISTRY}


def build_step(attn: str, layers: int, device: str):
    """A closure running one LoRA training step of the variant; returns (step, sequence length, cache bytes per
    token)."""
    import torch
    from PIL import Image
    from transformers import PaliGemmaForConditionalGeneration

    from diffpali.config import FfnConfig, LoraConfig, TinySpec
    from diffpali.data.collate import PaliGemmaCollator, model_inputs, to_device
    from diffpali.generation import returned_cache
    from diffpali.model import apply_variants, wrap_lora
    from diffpali.zoo.tiny import build_config, build_processor, train_tokenizer

    spec = TinySpec()
    v, t = spec.vision, spec.text
    v.hidden_size, v.num_attention_heads, v.intermediate_size = 1152, 16, 4304
    v.image_size, v.patch_size, v.num_hidden_layers = 224, 14, layers
    t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim = 2048, 8, 1, 256
    t.intermediate_size, t.num_hidden_layers, t.vocab_size = 16384, layers, 400
    corpus = ["answer en what color is the shape in the middle of the picture?", "a red circle", "yes", "no"]
    processor = build_processor(train_tokenizer(corpus, t.vocab_size), spec)
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(build_config(spec, processor))
    saved = apply_variants(model, settings_for(attn), FfnConfig())
    model = wrap_lora(model, LoraConfig(rank=16, alpha=32), saved).to(device).train()
    examples = [{"image": Image.new("RGB", (224, 224), (200, 30, 30)), "prefix": corpus[0], "suffix": corpus[1]}] * 2
    batch = to_device(PaliGemmaCollator(processor, train=True)(examples), device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**model_inputs(batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    with torch.no_grad():
        prefill = model(**model_inputs(batch, with_labels=False), use_cache=True)
    layers_cached = returned_cache(prefill).layers
    cache_bytes = sum(t.numel() * t.element_size() for layer in layers_cached for t in (layer.keys, layer.values))
    length = int(batch["input_ids"].shape[1])
    return step, length, cache_bytes / (length * batch["input_ids"].shape[0])


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux: VmHWM), so that a peak read afterwards is the step's
    and not that of building the model (copying and perturbing weights allocates transient buffers)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_memory(attn: dict, layers: int, device: str) -> tuple[int, str]:
    """Peak bytes of one variant's training step, alone in its process, and what was measured (GPU: max
    allocated; CPU: the step's peak resident set, or the process's whole-life max RSS where it cannot be reset)."""
    import torch

    step, _, _ = build_step(attn, layers, device)
    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated(), "max allocated"
    if reset_peak_rss():
        step()
        return peak_rss(), "step's peak RSS"
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak, measured = peak_memory(json.loads(args.child), args.layers, args.device)
        print(json.dumps({"peak_bytes": peak, "measured": measured}))
        return
    results = {}
    for name, attn in VARIANTS.items():
        out = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(attn), "--layers", str(args.layers),
             "--device", args.device],
            check=True, capture_output=True, text=True,
        )
        # before the parent holds any model: Linux keeps a process's max RSS across fork and exec
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    steps = {name: build_step(attn, args.layers, args.device) for name, attn in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.repeats + 1):
        for name, (step, _, _) in steps.items():
            seconds = step()
            if round_:  # round 0 warms up
                times[name].append(seconds)
    sequence = next(iter(steps.values()))[1]
    for name in VARIANTS:
        results[name]["seconds"] = statistics.median(times[name])
        results[name]["cache_bytes_per_token"] = steps[name][2]
    del steps
    base = results["vanilla"]
    memory = base["measured"]
    print(f"LoRA training step, PaliGemma 3B widths, {args.layers} layer(s) per tower, batch 2, "
          f"sequence {sequence}, {args.device}, median of {args.repeats} interleaved rounds")
    print(f"{'variant':<22}{'step s':>9}{'x vanilla':>11}{'peak MiB (' + memory + ')':>30}{'x vanilla':>11}"
          f"{'KV cache B/token':>18}{'x vanilla':>11}")
    for name, r in results.items():
        print(f"{name:<22}{r['seconds']:>9.3f}{r['seconds'] / base['seconds']:>11.3f}"
              f"{r['peak_bytes'] / 2**20:>30.0f}{r['peak_bytes'] / base['peak_bytes']:>11.3f}"
              f"{r['cache_bytes_per_token']:>18.0f}{r['cache_bytes_per_token'] / base['cache_bytes_per_token']:>11.3f}")


if __name__ == "__main__":
    main()

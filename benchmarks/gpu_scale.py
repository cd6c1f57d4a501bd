"""Full-size PaliGemma on one GPU: LoRA step time, tokens/s, MFU, peak memory and KV-cache decoding, per variant.

    python benchmarks/gpu_scale.py --out gpu_scale.json                       # the whole run (one H100/H200)
    python benchmarks/gpu_scale.py --device cpu --depth 1 --steps 1 --batch 1 --vocab 4096   # a check on a CPU

Models (bf16, random weights built directly on the device, no download): PaliGemma 3B
(``paligemma_3b_224``) and PaliGemma 2 3B (``paligemma2_3b_224``) with every attention variant (vanilla,
diff_split, diff_dup separate, diff_dup shared, diff_v2), then PaliGemma 2 10B (``paligemma2_10b_224``) with
activation checkpointing (non-reentrant) for vanilla and diff_v2. Each configuration is composed by Hydra
from ``conf/train.yaml`` (``model=<name> model.source=random attn=<variant>``) and built as ``train.py``
builds it: the variants by ``diffpali.model.apply_variants``, LoRA by ``diffpali.model.wrap_lora`` (the
configured rank and targets; peft keeps the adapters in float32). Each configuration is built afresh, so
its peak memory is its own; a configuration that fails prints its error and the others still run.

Step: forward, backward, gradient clipping at 1.0 and AdamW over the trainable parameters (as train.py),
on a fixed batch of ``--batch`` x (image tokens + ``--text`` text tokens: BOS, a prompt and an answer
that is the only labelled part, with PaliGemma's prefix-LM token types). The time is the median of
``--steps`` steps after ``--warmup`` steps, each synchronised. tokens/s = batch x sequence / step time.

MFU: model FLOPs per step / step time / the device's peak dense bf16 FLOP/s (H100/H200 SXM: 989 TFLOP/s;
``--peak-tflops`` for others). Model FLOPs follow PaLM's convention, 6 N T + 12 L H D T^2 (forward plus a
backward of twice the forward, as if every weight were trained; N the weights a token passes through:
both towers' linear layers, the projector and the LM head, which computes logits at every position; the
attention's two products over the full T x T map; ``diffpali.plan.counts.train_flops``). A LoRA step on
a frozen base computes less: its backward forms input gradients (2 N T) but no weight gradients for the
frozen weights, so ``hfu`` (4 N T + 12 L H D T^2, the FLOPs actually executed) is printed beside it.
Every variant is charged vanilla's model FLOPs (the same task), so its MFU ratio is its inverse step-time
ratio. Activation checkpointing's recomputed forward is not counted (as MFU defines it).

Peak memory: ``torch.cuda.max_memory_allocated`` over the training steps (weights, adapters, gradients,
optimiser state, activations), reset after the build; beside it the memory plan's estimate of the same
run (``train.py plan=true`` at this batch and text length, without its runtime allowance).
Decoding: greedy, batched, with the KV cache,
``--new-tokens`` tokens from the prefix (image + BOS + prompt). Prefill tokens/s = batch x prefix
length / the time of a one-token generation; decode tokens/s = batch x (new tokens - 1) / (the time of
the whole generation - that of the one-token one).

Targets (an H100/H200-class GPU): vanilla at >= 35% MFU; every differential variant at <= 1.15x vanilla's
step time and <= 1.10x its peak memory; diff_v2 decoding at >= 0.95x vanilla's tokens/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffpali.config.architectures import ARCHITECTURES  # noqa: E402
from diffpali.plan.counts import train_flops  # noqa: E402
from diffpali.plan.report import plan as memory_plan  # noqa: E402

#: attn overrides of each variant, as on train.py's command line.
VARIANTS: dict[str, list[str]] = {
    "vanilla": ["attn=vanilla"],
    "diff_split": ["attn=diff_split"],
    "diff_dup_separate": ["attn=diff_dup", "attn.dup_mode=separate"],
    "diff_dup_shared": ["attn=diff_dup", "attn.dup_mode=shared"],
    "diff_v2": ["attn=diff_v2"],
}
#: (model config, variants, activation checkpointing), in the order they run.
PLAN: list[tuple[str, tuple[str, ...], bool]] = [
    ("paligemma_3b_224", tuple(VARIANTS), False),
    ("paligemma2_3b_224", tuple(VARIANTS), False),
    ("paligemma2_10b_224", ("vanilla", "diff_v2"), True),
]
#: Peak dense bf16 FLOP/s by a word of the device name (first match wins; PCIe H100 before SXM).
PEAK_BF16 = [("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)]
TARGETS = {"vanilla_mfu": 0.35, "step_ratio": 1.15, "memory_ratio": 1.10, "v2_decode_ratio": 0.95}
GiB = 2 ** 30


def compose(model: str, variant: str, depth: int | None):
    """The validated TrainConfig that ``train.py model=<model> model.source=random attn=...`` would run."""
    # deferred, as every heavy import here: --help and argument errors answer at once
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from diffpali.config import TrainConfig, register_configs, to_typed

    overrides = [f"model={model}", "model.source=random", *VARIANTS[variant], "output_dir=.", "logger=none"]
    if depth is not None:
        overrides.append(f"model.depth={depth}")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_typed(hydra_compose(config_name="train", overrides=overrides), TrainConfig)


def build(cfg, device: str, vocab: int | None, checkpointing: bool):
    """Random base on ``device`` in bf16 -> the variants -> LoRA, as train.py builds it."""
    import torch

    from diffpali.model import apply_variants, wrap_lora
    from diffpali.zoo.architecture import build_random

    arch = ARCHITECTURES[cfg.model.architecture].at_depth(cfg.model.depth)
    extra = {"vocab_size": vocab, "image_token_index": vocab - 1} if vocab else {}
    model = build_random(arch, dtype=torch.bfloat16, device=device, seed=0, **extra)
    saved = apply_variants(model, cfg.attn, cfg.ffn)
    model = wrap_lora(model, cfg.lora, saved)
    if checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, arch


def inputs(arch, batch: int, text: int, device: str, vocab: int | None):
    """A fixed training batch and the matching generation prefix (prefix-LM token types, labelled answer)."""
    import torch

    from diffpali.zoo.architecture import BOS_ID

    rows = vocab or arch.text.vocab_size
    image_token = rows - 1 if vocab else 257_152
    image = arch.vision.image_tokens
    answer = text // 2
    prefix = image + text - answer
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(image_token, 256_000), (batch, image + text), generator=g)
    ids[:, :image] = image_token
    ids[:, image] = BOS_ID
    types = torch.zeros_like(ids)
    types[:, prefix:] = 1
    labels = ids.masked_fill(types == 0, -100)
    pixels = torch.randn(batch, 3, arch.vision.image_size, arch.vision.image_size, generator=g)
    train = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types,
             "pixel_values": pixels.to(torch.bfloat16), "labels": labels}
    gen = {"input_ids": ids[:, :prefix], "attention_mask": torch.ones_like(ids[:, :prefix]),
           "token_type_ids": types[:, :prefix], "pixel_values": pixels.to(torch.bfloat16)}
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return move(train), move(gen), prefix


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(cfg, args, checkpointing: bool) -> dict[str, Any]:
    """Build one configuration, time its LoRA steps and its decoding; returns the figures."""
    import torch

    device = args.device
    started = time.perf_counter()
    model, arch = build(cfg, device, args.vocab, checkpointing)
    sync(device)
    built_s = time.perf_counter() - started
    train, gen, prefix = inputs(arch, args.batch, args.text, device, args.vocab)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    weights_bytes = torch.cuda.memory_allocated() if cuda else None
    model.train()
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        loss = model(**train).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    final_loss = float(loss)
    if final_loss != final_loss or abs(final_loss) == float("inf"):
        raise FloatingPointError(f"non-finite loss {final_loss}")
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del optimizer, loss
    model.eval()
    decode: dict[str, float] = {}
    with torch.no_grad():
        def generate(n: int) -> float:
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(**gen, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                                 use_cache=True, pad_token_id=0, eos_token_id=1)
            sync(device)
            assert out.shape[1] == prefix + n, out.shape
            return time.perf_counter() - t0

        generate(2)  # warm-up
        one = statistics.median(generate(1) for _ in range(3))
        whole = generate(args.new_tokens)
        decode = {"prefill_tokens_per_s": args.batch * prefix / one,
                  # None where the whole generation was no slower than one token (too few tokens to time)
                  "decode_tokens_per_s": args.batch * (args.new_tokens - 1) / (whole - one) if whole > one else None}
    step_s = statistics.median(times)
    seq = arch.vision.image_tokens + args.text
    return {"built_s": round(built_s, 1), "params": total, "trainable": sum(p.numel() for p in trainable),
            "step_s": step_s, "tokens_per_s": args.batch * seq / step_s, "weights_gib": _gib(weights_bytes),
            "peak_gib": _gib(peak), "loss": final_loss, **decode}


def _gib(value: int | None) -> float | None:
    return None if value is None else value / GiB


def peak_flops(device: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return given * 1e12, "given"
    if not device.startswith("cuda"):
        return None, device
    import torch

    name = torch.cuda.get_device_name()
    return next((peak for word, peak in PEAK_BF16 if word in name), None), name


def ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's step, peak memory and decode tokens/s over its model's vanilla row, and the targets met."""
    vanilla = {r["model"]: r for r in rows if r["variant"] == "vanilla" and "step_s" in r}
    for r in rows:
        base = vanilla.get(r["model"])
        if base is None or "step_s" not in r:
            continue
        r["step_ratio"] = r["step_s"] / base["step_s"]
        if r.get("peak_gib") and base.get("peak_gib"):
            r["memory_ratio"] = r["peak_gib"] / base["peak_gib"]
        if r.get("decode_tokens_per_s") and base.get("decode_tokens_per_s"):
            r["decode_ratio"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        checks = []
        if r["variant"] == "vanilla" and r.get("mfu") is not None:
            checks.append(r["mfu"] >= TARGETS["vanilla_mfu"])
        if r["variant"] != "vanilla":
            checks.append(r["step_ratio"] <= TARGETS["step_ratio"])
            if "memory_ratio" in r:
                checks.append(r["memory_ratio"] <= TARGETS["memory_ratio"])
        if r["variant"] == "diff_v2" and "decode_ratio" in r:
            checks.append(r["decode_ratio"] >= TARGETS["v2_decode_ratio"])
        r["targets_met"] = all(checks) if checks else None


def line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['model']:<20} {r['variant']:<18} FAILED: {r['error']}"
    f = lambda key, fmt: format(r[key], fmt) if r.get(key) is not None else "-"  # noqa: E731
    return (f"{r['model']:<20} {r['variant']:<18} step {f('step_s', '.3f')} s ({f('step_ratio', '.3f')}x)  "
            f"{f('tokens_per_s', ',.0f')} tok/s  MFU {f('mfu', '.1%')} (HFU {f('hfu', '.1%')})  "
            f"peak {f('peak_gib', '.2f')} GiB ({f('memory_ratio', '.3f')}x; plan {f('plan_gib', '.2f')})  "
            f"prefill {f('prefill_tokens_per_s', ',.0f')} tok/s  "
            f"decode {f('decode_tokens_per_s', ',.0f')} tok/s ({f('decode_ratio', '.3f')}x)  "
            f"targets {'met' if r.get('targets_met') else 'MISSED' if r.get('targets_met') is False else '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, help="cut each tower to this many layers (checks on a CPU)")
    parser.add_argument("--vocab", type=int, help="embedding rows instead of the real 257,216 (checks on a CPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text", type=int, default=32, help="text tokens per example (half prompt, half answer)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded greedily per example (>= 2)")
    parser.add_argument("--models", nargs="*", help="only these model configs")
    parser.add_argument("--variants", nargs="*", choices=tuple(VARIANTS), help="only these variants")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak dense bf16 TFLOP/s (default: by name)")
    parser.add_argument("--budget-s", type=float, default=330, help="skip what would start after this many seconds")
    args = parser.parse_args()

    import torch

    started = time.perf_counter()
    peak, device_name = peak_flops(args.device, args.peak_tflops)
    print(f"device {device_name}, peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s, torch "
          f"{torch.__version__}, batch {args.batch} x (image + {args.text}) tokens, {args.steps} steps after "
          f"{args.warmup}, decode {args.new_tokens} tokens", flush=True)
    rows: list[dict[str, Any]] = []
    for model_name, variants, checkpointing in PLAN:
        if args.models and model_name not in args.models:
            continue
        for variant in variants:
            if args.variants and variant not in args.variants:
                continue
            row: dict[str, Any] = {"model": model_name, "variant": variant, "checkpointing": checkpointing}
            if time.perf_counter() - started > args.budget_s:
                row["error"] = f"skipped: past --budget-s {args.budget_s:.0f}"
            else:
                try:
                    cfg = compose(model_name, variant, args.depth)
                    row.update(measure(cfg, args, checkpointing))
                    arch = ARCHITECTURES[cfg.model.architecture].at_depth(cfg.model.depth)
                    if args.vocab:
                        from dataclasses import replace
                        arch = replace(arch, text=replace(arch.text, vocab_size=args.vocab))
                    if not args.vocab:  # the memory plan of this very run, beside its measured peak
                        cfg.data.batch_size, cfg.plan_text_tokens = args.batch, args.text
                        planned = memory_plan(cfg)["rows"]["single"]
                        row["plan_gib"] = (planned.total(checkpointing) - planned.runtime) / GiB
                    flops = train_flops(arch, args.batch, args.text)
                    row["model_tflop_per_step"] = flops["model"] / 1e12
                    if peak:
                        row["mfu"] = flops["model"] / row["step_s"] / peak
                        row["hfu"] = flops["computed"] / row["step_s"] / peak
                except Exception as err:  # one failing variant must not stop the others
                    traceback.print_exc()
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
                finally:
                    gc.collect()
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
            rows.append(row)
            ratios(rows)
            print(line(row), flush=True)
    print("\nsummary (ratios to the same model's vanilla; targets: vanilla MFU >= 35%, step <= 1.15x, "
          "peak <= 1.10x, diff_v2 decode >= 0.95x)")
    for r in rows:
        print(line(r))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"device": device_name, "peak_bf16_flops": peak, "torch": torch.__version__,
                                        "args": settings, "targets": TARGETS, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Soft-capped attention (Gemma 2, PaliGemma 2's decoder): eager, as diffpali runs it, against torch's flex_attention.

    python benchmarks/softcap_attention.py [--device cpu|cuda] [--seqs 272,1088] [--query-heads 8,16] [--repeats 5]

SDPA cannot soft-cap, so every attention variant on a Gemma 2 decoder attends with transformers' Gemma 2
eager attention (logits, tanh(s / 50) * 50, the additive mask, softmax in float32, times V): it builds the
N x N map. flex_attention fuses the same computation: the soft-cap as a ``score_mod``, and PaliGemma's
mask (causal within the sliding window, bidirectional over the image-and-prompt prefix, as transformers
composes it) as a block mask, so fully masked blocks are skipped and no map is stored.

One layer's attention at PaliGemma 2 3B's head shapes (8 query heads, 4 KV heads, head dim 256, scaling
256 ** -0.5, window 4096), batch 1, a prefix of ``seq - suffix`` tokens. ``--query-heads 16`` is DIFF V2's
single call (doubled query heads over the same KV heads); every other variant makes one or two calls of
the vanilla shape. Per shape: the median time of a forward and of a forward plus backward over
``--repeats`` runs after warm-up, flex's first call (the compilation) apart, the largest difference of
flex's output and query gradient from eager's, and on a GPU the peak memory of each forward plus backward.
torch's flex_attention has no backward on the CPU: there only forwards (prefill, evaluation) are compared.
Ratios are flex / eager from the same run. Defaults: CPU 272 tokens (224 px) and 8 query heads, float32;
GPU 1,088 and 4,352 tokens (448 and 896 px) and 8 and 16 query heads, bfloat16 (well under a minute).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward


def allowed_mask(seq: int, prefix: int, window: int, device: str) -> torch.Tensor:
    """(1, 1, seq, seq) True where stock PaliGemma 2 attends: (causal and within the window) or both in the prefix."""
    q = torch.arange(seq, device=device)[:, None]
    k = torch.arange(seq, device=device)[None, :]
    return (((q >= k) & (q - k < window)) | ((q < prefix) & (k < prefix)))[None, None]


def timed(fn, device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_bytes(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure(args, seq: int, heads: int) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    prefix = seq - args.suffix
    scaling, cap = args.scalar**-0.5, args.softcap
    generator = torch.Generator(device="cpu").manual_seed(0)

    backward = device != "cpu"  # torch's flex_attention has no backward on the CPU

    def tensor(h):  # logits of a trained model's spread: a few tens, where the soft-cap bends them
        x = (torch.randn(1, h, seq, args.head_dim, generator=generator) * 3.0).to(device, dtype)
        return x.requires_grad_(backward)

    q, k, v = tensor(heads), tensor(args.kv_heads), tensor(args.kv_heads)
    allowed = allowed_mask(seq, prefix, args.window, device)
    additive = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)  # stock eager's mask
    module = SimpleNamespace(num_key_value_groups=heads // args.kv_heads, training=False, head_dim=args.head_dim)

    def eager():
        return eager_attention_forward(module, q, k, v, additive, scaling=scaling, softcap=cap)[0].transpose(1, 2)

    def softcap(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / cap) * cap

    def mask_mod(b, h, q_idx, kv_idx):
        return ((q_idx >= kv_idx) & (q_idx - kv_idx < args.window)) | ((q_idx < prefix) & (kv_idx < prefix))

    block_mask = create_block_mask(mask_mod, 1, None, seq, seq, device=device)
    compiled = torch.compile(flex_attention)

    def flex():
        return compiled(q, k, v, score_mod=softcap, block_mask=block_mask, scale=scaling, enable_gqa=True)

    def train(fn):
        def step():
            q.grad = None
            fn().float().square().mean().backward()
        return step

    def forward(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    started = time.perf_counter()
    (train(flex) if backward else forward(flex))()  # compiles the forward (and the backward)
    compile_s = time.perf_counter() - started
    out_eager, out_flex = forward(eager)().float(), forward(flex)().float()
    runs = {"eager_fwd": forward(eager), "flex_fwd": forward(flex)}
    row = {"seq": seq, "heads": heads, "compile_s": compile_s, "out_diff": float((out_flex - out_eager).abs().max()),
           "out_size": float(out_eager.abs().max()), "eager_step": None, "flex_step": None, "grad_diff": None,
           "eager_peak": None, "flex_peak": None}
    if backward:
        train(eager)()
        grad_eager = q.grad.float().clone()
        train(flex)()
        row["grad_diff"] = float((q.grad.float() - grad_eager).abs().max())
        row["grad_size"] = float(grad_eager.abs().max())
        runs.update(eager_step=train(eager), flex_step=train(flex))
    for run in runs.values():  # warm-up
        run()
    row.update({name: timed(run, device, args.repeats) for name, run in runs.items()})
    if device == "cuda":
        row.update(eager_peak=peak_bytes(train(eager), device), flex_peak=peak_bytes(train(flex), device))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default: by device)")
    parser.add_argument("--query-heads", default=None, help="comma-separated query-head counts (default: by device)")
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=256)
    parser.add_argument("--scalar", type=float, default=256.0, help="query_pre_attn_scalar")
    parser.add_argument("--softcap", type=float, default=50.0)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--suffix", type=int, default=16, help="tokens after the bidirectional prefix")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    seqs = [int(s) for s in (args.seqs or ("1088,4352" if gpu else "272")).split(",")]
    heads = [int(h) for h in (args.query_heads or ("8,16" if gpu else "8")).split(",")]
    print(f"device {args.device} ({torch.cuda.get_device_name() if gpu else f'{torch.get_num_threads()} threads'}), "
          f"torch {torch.__version__}, {args.dtype}, kv heads {args.kv_heads}, head dim {args.head_dim}, "
          f"softcap {args.softcap}, window {args.window}, {args.repeats} repeats")
    print("seq   q-heads  eager fwd   flex fwd  ratio  eager f+b   flex f+b  ratio  compile  "
          "max|diff| out (of max)  max|diff| dq (of max)  peak f+b eager/flex")
    for seq in seqs:
        for h in heads:
            r = measure(args, seq, h)
            step = f"{'n/a (no flex backward on CPU)':>30}"
            if r["eager_step"] is not None:
                step = (f"{r['eager_step'] * 1e3:8.2f}ms {r['flex_step'] * 1e3:8.2f}ms "
                        f"{r['flex_step'] / r['eager_step']:5.2f}")
            grad = f"{r['grad_diff']:.1e} ({r['grad_size']:.1e})" if r["grad_diff"] is not None else "-"
            peak = f"{r['eager_peak'] / 2**20:.0f}/{r['flex_peak'] / 2**20:.0f} MiB" if r["eager_peak"] else "-"
            print(f"{seq:<5} {h:<8} {r['eager_fwd'] * 1e3:8.2f}ms {r['flex_fwd'] * 1e3:8.2f}ms "
                  f"{r['flex_fwd'] / r['eager_fwd']:5.2f}  {step}  {r['compile_s']:6.1f}s  "
                  f"{r['out_diff']:.1e} ({r['out_size']:.1e})  {grad:>22}  {peak}", flush=True)

if __name__ == "__main__":
    main()

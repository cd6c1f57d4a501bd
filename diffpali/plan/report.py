"""The memory plan of a ``train.py`` config: what ``plan=true`` prints, and the check that stops a run whose
plan exceeds the device before anything loads (``plan_force=true`` runs it anyway)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from ..config.architectures import ARCHITECTURES, Architecture, TextArch, VisionArch
from ..config.rules import ConfigError
from .counts import VariantSpec, base_params, count_params
from .memory import DTYPE_BYTES, RUNTIME_GIB, GiB, Shape, Strategy, activations, largest_layer_params, per_device

#: The shipped tiny base's config: its vocabulary is what its tokenizer learnt, not the spec's upper bound.
TINY_CONFIG = Path(__file__).resolve().parents[1] / "zoo" / "tiny_paligemma" / "config.json"
#: PaliGemma's tokens beyond the text vocabulary: <image>, 1,024 <loc> and 128 <seg>.
PALIGEMMA_EXTRA_TOKENS = 1 + 1024 + 128


def architecture_of(model: Any) -> Architecture:
    """``model.architecture`` (cut to ``model.depth``), or the tiny zoo model's spec as an Architecture."""
    if model.architecture is not None:
        return ARCHITECTURES[model.architecture].at_depth(model.depth)
    v, t = model.tiny.vision, model.tiny.text
    vocab = t.vocab_size + PALIGEMMA_EXTRA_TOKENS
    if TINY_CONFIG.is_file() and model.source == "zoo":
        vocab = json.loads(TINY_CONFIG.read_text())["text_config"]["vocab_size"]
    return Architecture(
        "tiny",
        VisionArch(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                   num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                   patch_size=v.patch_size, image_size=v.image_size),
        TextArch(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                 num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                 num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, vocab_size=vocab),
    )


def variant_spec(cfg: Any) -> VariantSpec:
    """The attn, ffn and lora groups of ``cfg`` as plain values."""
    a, f, lo = cfg.attn, cfg.ffn, cfg.lora
    return VariantSpec(attn=a.variant, dup_mode=getattr(a, "dup_mode", "separate"),
                       head_norm=getattr(a, "head_norm", True), attn_towers=tuple(a.towers), ffn=f.variant,
                       ffn_towers=tuple(f.towers), lora_rank=lo.rank, lora_towers=tuple(lo.towers),
                       text_targets=tuple(lo.text_targets), vision_targets=tuple(lo.vision_targets),
                       train_projector=lo.train_projector)


@functools.cache  # one nvidia-smi call per process: the plan asks for it several times
def _gpu_memory_gib() -> Optional[list[float]]:
    """Total memory of each visible GPU (nvidia-smi; no torch), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    sizes = [float(x) / 1024 for x in out.split() if x.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        sizes = [sizes[int(i)] for i in visible.split(",") if i.strip().isdigit() and int(i) < len(sizes)]
    return sizes or None


def _available_ram_gib() -> Optional[float]:
    try:
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemAvailable:"):
                return int(row.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def on_gpu(cfg: Any) -> bool:
    accel = cfg.trainer.accelerator
    return accel in ("gpu", "cuda") or (accel == "auto" and _gpu_memory_gib() is not None)


def device_budget(cfg: Any) -> tuple[Optional[float], str]:
    """GiB one device can hold, and where the figure comes from."""
    if cfg.plan_budget_gib is not None:
        return cfg.plan_budget_gib, "plan_budget_gib"
    if on_gpu(cfg):
        sizes = _gpu_memory_gib()
        return (min(sizes), "GPU total memory") if sizes else (None, "no GPU visible to nvidia-smi")
    return _available_ram_gib(), "CPU available RAM, /proc/meminfo"


def _devices(cfg: Any) -> int:
    devices = cfg.trainer.devices
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) or str(devices).isdigit():
        count = int(devices)
    else:  # "auto", -1: every visible GPU
        count = len(_gpu_memory_gib() or [1]) if on_gpu(cfg) else 1
    return max(1, count) * max(1, cfg.trainer.num_nodes)


def configured_strategy(cfg: Any) -> str:
    strategy = str(cfg.trainer.strategy)
    if "fsdp" in strategy or "model_parallel" in strategy:
        return "fsdp"
    return "ddp" if "ddp" in strategy or _devices(cfg) > 1 else "single"


def checkpointing(cfg: Any) -> bool:
    """Whether the run checkpoints activations (``model.activation_checkpointing``)."""
    return bool(cfg.model.activation_checkpointing)


def plan(cfg: Any) -> dict[str, Any]:
    """Every figure of the plan, in bytes and parameters."""
    arch = architecture_of(cfg.model)
    spec = variant_spec(cfg)
    params = count_params(arch, spec)
    precision = str(cfg.trainer.precision)
    weight_bytes = 2 if precision in ("bf16-true", "16-true") else DTYPE_BYTES[cfg.model.dtype]
    trainable_bytes = 2 if precision in ("bf16-true", "16-true") else 4
    act_bytes = 2 if (weight_bytes == 2 or "mixed" in precision) else 4
    shape = Shape(batch=cfg.data.batch_size, text_tokens=cfg.plan_text_tokens, act_bytes=act_bytes,
                  eager_text=arch.text.family == "gemma2")
    acts = activations(arch, spec, shape)
    runtime = RUNTIME_GIB["gpu" if on_gpu(cfg) else "cpu"] * GiB
    n = _devices(cfg)
    rows = {name: per_device(params, weight_bytes, trainable_bytes, acts, Strategy(name, n), runtime,
                             largest_layer_params(arch))
            for name in ("single", "ddp", "fsdp")}
    return {"arch": arch, "spec": spec, "params": params, "shape": shape, "acts": acts, "rows": rows, "devices": n,
            "weight_bytes": weight_bytes, "strategy": configured_strategy(cfg), "checkpointing": checkpointing(cfg)}


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f}M"


def render(cfg: Any) -> str:
    """The plan as ``train.py plan=true`` prints it."""
    p = plan(cfg)
    arch, params, shape, acts = p["arch"], p["params"], p["shape"], p["acts"]
    parts = base_params(arch)
    image = arch.vision.image_tokens
    lines = [
        f"memory plan: model={cfg.model.name} ({arch.hub_id}, depth {cfg.model.depth or 'full'}), "
        f"attn={p['spec'].key}, ffn={cfg.ffn.variant}, LoRA r{cfg.lora.rank} on {'+'.join(cfg.lora.towers)}",
        f"parameters: total {params.total:,}, trainable {params.trainable:,} "
        f"({100 * params.trainable / params.total:.2f}%)",
        f"  base {params.base:,}: vision {_m(parts['vision'])}, projector {_m(parts['projector'])}, "
        f"decoder {_m(parts['decoder'])}, embedding (= LM head) {_m(parts['embedding'])}",
        f"  LoRA {params.lora:,}; trained whole (lambdas, head norms, gates) {params.whole:,}, held twice by peft",
    ]
    lines += [f"  {name} adds {n:,}" for name, n in params.added.items()] or ["  the variants add nothing"]
    lines += [
        f"batch {shape.batch} x ({image} image + {shape.text_tokens} text = {image + shape.text_tokens} tokens; "
        f"plan_text_tokens), weights {p['weight_bytes']} bytes, activations {shape.act_bytes} bytes, decoder "
        f"attention {'eager (T x T maps kept)' if shape.eager_text else 'SDPA (no maps kept)'}",
        f"activations: vision {acts.vision / GiB:.2f}, decoder {acts.text / GiB:.2f}, logits and loss "
        f"{acts.logits / GiB:.2f} GiB; with activation checkpointing {acts.checkpointed / GiB:.2f} GiB",
        "per device, GiB        weights  grads  AdamW  activ.  runtime  total  total with act. ckpt",
    ]
    n = p["devices"]
    labels = {"single": "single (1 device)", "ddp": f"ddp ({n} device{'s' * (n > 1)})",
              "fsdp": f"fsdp ({n} shard{'s' * (n > 1)})"}
    for name, row in p["rows"].items():
        lines.append(f"{labels[name]:<22} {row.weights / GiB:7.2f} {row.gradients / GiB:6.2f} "
                     f"{row.optimizer / GiB:6.2f} {row.activations / GiB:7.2f} {row.runtime / GiB:8.2f} "
                     f"{row.total(False) / GiB:6.2f} {row.total(True) / GiB:8.2f}")
    need = needed_gib(p)
    budget, source = device_budget(cfg)
    verdict = "unknown" if budget is None else ("fits" if need <= budget else "DOES NOT FIT")
    if cfg.model.quantization is not None:
        lines.append(f"model.quantization={cfg.model.quantization}: weights are counted in model.dtype, not packed "
                     "in 4 bits, so this overestimates them; the run is not checked against its device")
    lines.append(f"this run ({p['strategy']}, activation checkpointing {'on' if p['checkpointing'] else 'off'}): "
                 f"{need:.2f} GiB per device; device {'?' if budget is None else f'{budget:.1f}'} GiB "
                 f"({source}): {verdict}")
    return "\n".join(lines)


def needed_gib(p: dict[str, Any]) -> float:
    return p["rows"][p["strategy"]].total(p["checkpointing"]) / GiB


def check_memory(cfg: Any) -> None:
    """Refuse a run whose plan exceeds its device, before anything loads (ConfigError: exit 2, one line).

    Skipped with ``plan_force=true``, with ``plan=true`` (which prints the plan instead), and where the
    device's memory is unknown, and for a 4-bit base, whose packed weights the plan does not model (it would
    overestimate them about fourfold and refuse runs that fit)."""
    if not hasattr(cfg, "plan_force") or cfg.plan_force or cfg.plan or cfg.model.quantization is not None:
        return
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return  # a rank Lightning relaunched: the node's first process checked this config before anything loaded
    p = plan(cfg)
    need = needed_gib(p)
    budget, source = device_budget(cfg)
    if not on_gpu(cfg):  # the ranks of one node share its RAM
        need *= max(1, p["devices"] // max(1, cfg.trainer.num_nodes))
    if budget is not None and need > budget:
        raise ConfigError(
            f"memory plan: {need:.1f} GiB per device ({p['strategy']}, batch {cfg.data.batch_size}, activation "
            f"checkpointing {'on' if p['checkpointing'] else 'off'}) > {budget:.1f} GiB ({source}); "
            "plan=true prints the plan, plan_force=true runs anyway")


"""Bytes per device of a LoRA run, from the architecture's numbers: weights, gradients, optimiser state and
activations, under one device, DDP and FSDP, with and without activation checkpointing.

Activations are the tensors autograd saves for the backward, counted per layer and per token from what
the transformers layers and peft's LoRA save (bytes, bf16 = 2, float32 = 4):

- a Gemma RMSNorm computes in float32: it keeps its float32 input and its bf16 result (6 d); SigLIP's
  LayerNorm its input (2 d, plus its statistics);
- each LoRA target casts its input to float32 for the adapter and keeps it (4 x fan-in), besides the
  bf16 input the frozen projection keeps;
- attention keeps Q, K and V after the rotary and its output (SDPA's memory-efficient kernels keep no map);
  an eager attention (Gemma 2: soft-capping has no SDPA kernel) also keeps its T x T maps per head: the
  soft-capped logits (bf16), the float32 softmax and its bf16 cast (8 bytes per entry); diff_split and
  diff_dup compute two maps per head and diff_v2 doubles the query heads, so two maps; diff_dup shared one;
- the gated FFN keeps gate, activation, up and their product (4 x 2 f) and down's float32 LoRA input (4 f);
- the LM head computes logits at every position: the loss keeps their float32 log-softmax (4 bytes per
  vocabulary entry), and around it the bf16 logits, their float32 copy and the gradients live for a while:
  the peak measured on a CPU is 12.7 bytes per entry (``LOGIT_BYTES``; Gemma 2's final soft-cap keeps its
  tanh, 2 more).

With activation checkpointing (non-reentrant, per decoder and vision layer) only each layer's input is kept
(2 d per token and layer), plus one layer's activations recomputed during the backward.
The layers' figures are derived, then scaled by ``CALIBRATION``: the bytes autograd actually saved per
layer (counted with ``torch.autograd.graph.saved_tensors_hooks`` at PaliGemma 3B's widths) over the
derived ones (docs/scaling.md, "Memory plan").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.architectures import Architecture
from .counts import ParamCounts, Tower, VariantSpec, towers

GiB = 2 ** 30
#: Saved bytes per layer measured / derived: SigLIP 0.857, Gemma 0.845 (docs/scaling.md, "Memory plan").
CALIBRATION = 0.85
#: Peak bytes per logit (batch x sequence x vocabulary) around the loss and its backward, measured on a CPU.
LOGIT_BYTES = 13
#: What a process holds besides the planned tensors. CPU: a train.py process's resident set beyond them
#: (Python, torch, transformers, Lightning, the data and tokenizer, the allocator's retained blocks), measured
#: 1.59 GiB in the full-size rehearsal's fit (docs/scaling.md). GPU: the CUDA context and the allocator's
#: reserve, outside torch.cuda.max_memory_allocated (an allowance, not measured here).
RUNTIME_GIB = {"cpu": 1.5, "gpu": 1.0}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """What the activations depend on besides the architecture."""

    batch: int  #: examples per device and step
    text_tokens: int  #: text tokens per example (BOS, prompt, answer, EOS)
    act_bytes: int = 2  #: bytes of an activation: the weights' dtype (bf16), or 4 in float32
    eager_text: bool = False  #: the decoder materialises its attention maps (Gemma 2)


def _maps_per_head(spec: VariantSpec, tower: str) -> int:
    if tower not in spec.attn_towers or spec.attn == "vanilla":
        return 1
    return 1 if (spec.attn == "diff_dup" and spec.dup_mode == "shared") else 2


def _lora_input(spec: VariantSpec, tower: Tower, names: tuple[str, ...]) -> int:
    targets = spec.text_targets if tower.name == "text" else spec.vision_targets
    if tower.name not in spec.lora_towers:
        return 0
    fan_in = {x.name: x.fan_in for x in tower.attention_linears() + tower.ffn_linears()}
    return sum(4 * fan_in[n] for n in names if n in targets)


def layer_bytes_per_token(tower: Tower, spec: VariantSpec, shape: Shape, seq: int, gemma2: bool) -> float:
    """Bytes one layer of ``tower`` keeps for the backward, per token (``seq`` tokens in its sequence)."""
    a, d, f = shape.act_bytes, tower.width, tower.ffn
    q, kv = tower.heads * tower.head_dim, tower.kv_heads * tower.head_dim
    out = "out_proj" if tower.name == "vision" else "o_proj"
    if tower.name == "text":
        norms = (4 if gemma2 else 2) * (4 * d + a * d)
        ffn = 3 * a * f + a * f + _lora_input(spec, tower, ("gate_proj", "up_proj", "down_proj"))
    else:
        norms = 2 * (a * d + 8)
        ffn = 2 * a * f + _lora_input(spec, tower, ("fc1", "fc2"))
    attn = a * (2 * q + 2 * kv) + a * q + _lora_input(spec, tower, ("q_proj", "k_proj", "v_proj", out))
    diff = tower.name in spec.attn_towers and spec.attn != "vanilla"
    if diff:
        # the second branch's output, and the float32 difference (and head norm) of the two
        attn += a * q + 3 * 4 * q
        if spec.attn == "diff_dup" and spec.dup_mode == "separate":
            attn += a * (q + kv) + _lora_input(spec, tower, ("q_proj", "k_proj"))
        if spec.attn == "diff_v2":
            attn += a * q + 4 * d + _lora_input(spec, tower, ("q_proj",))  # Q2, lambda's float32 input
    if tower.name == "text" and shape.eager_text:
        attn += 8 * tower.heads * seq * _maps_per_head(spec, "text")
    return norms + attn + ffn


@dataclass
class Activations:
    """Activation bytes of one device's batch."""

    vision: float
    text: float
    logits: float
    checkpointed: float  #: the same with activation checkpointing

    @property
    def full(self) -> float:
        return self.vision + self.text + self.logits


def activations(arch: Architecture, spec: VariantSpec, shape: Shape) -> Activations:
    """Bytes saved for the backward at ``shape``: per layer as in the module doc, then the logits."""
    tw = towers(arch)
    image = arch.vision.image_tokens
    seq = image + shape.text_tokens
    gemma2 = arch.text.family == "gemma2"
    per_v = layer_bytes_per_token(tw["vision"], spec, shape, image, gemma2)
    per_t = layer_bytes_per_token(tw["text"], spec, shape, seq, gemma2)
    per_v, per_t = CALIBRATION * per_v, CALIBRATION * per_t
    vision = shape.batch * image * tw["vision"].layers * per_v
    text = shape.batch * seq * tw["text"].layers * per_t
    logits = shape.batch * seq * arch.text.vocab_size * (LOGIT_BYTES + (2 if gemma2 else 0))
    kept = shape.act_bytes * shape.batch * (image * tw["vision"].width * tw["vision"].layers
                                            + seq * tw["text"].width * tw["text"].layers)
    one_layer = max(shape.batch * image * per_v, shape.batch * seq * per_t)
    return Activations(vision, text, logits, kept + one_layer + logits)


@dataclass
class Strategy:
    """How a run spreads over devices."""

    name: str  #: single | ddp | fsdp
    shards: int = 1  #: devices the FSDP shards span (trainer.devices x trainer.num_nodes)


@dataclass
class DeviceBytes:
    """Bytes per device under one strategy."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_checkpointed: float
    runtime: float

    def total(self, checkpointing: bool) -> float:
        act = self.activations_checkpointed if checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + act + self.runtime


def per_device(params: ParamCounts, weight_bytes: int, trainable_bytes: int, acts: Activations, strategy: Strategy,
               runtime: float, largest_layer: int) -> DeviceBytes:
    """Weights (frozen in the weights' dtype; adapters, lambdas and norms in ``trainable_bytes``), gradients of
    the trainable parameters, AdamW's two float32 states, and activations, on one device of ``strategy``.

    DDP adds a second copy of the gradients (its all-reduce buckets). FSDP shards weights, gradients and
    state over ``shards`` devices and holds two gathered layers at a time (the one computing, the next one
    prefetched)."""
    frozen = (params.base + params.frozen_copies + params.whole_original) * weight_bytes
    weights = frozen + params.trainable * trainable_bytes
    grads = params.trainable * trainable_bytes
    optim = params.trainable * 8
    act, act_ckpt = acts.full, acts.checkpointed
    if strategy.name == "ddp":
        grads *= 2
    if strategy.name == "fsdp":
        n = max(1, strategy.shards)
        weights = weights / n + 2 * largest_layer * weight_bytes
        grads, optim = grads / n, optim / n
    return DeviceBytes(weights, grads, optim, act, act_ckpt, runtime)


def largest_layer_params(arch: Architecture) -> int:
    """Parameters of the largest unit FSDP gathers at once: a decoder layer, or the embedding."""
    t = towers(arch)["text"]
    layer = sum(x.params for x in t.attention_linears() + t.ffn_linears())
    return max(layer, arch.text.vocab_size * arch.text.hidden_size)

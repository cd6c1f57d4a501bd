"""Parameter and FLOP counts of a PaliGemma architecture, with its attention and FFN variants and LoRA,
from the numbers alone (no torch): what the memory plan and the GPU benchmark's MFU read.

Counts follow the transformers classes the model is built from (SigLIP without its pooling head, Gemma
or Gemma 2, the PaliGemma projector; the LM head tied to the embedding) and what diffpali attaches:

- ``diff_split``, ``diff_dup``: per attention module a lambda (4 vectors of the branch's query dim) and,
  with ``attn.head_norm``, a head norm (head dim); ``diff_dup`` separate adds frozen copies of q_proj and
  k_proj, each a LoRA target;
- ``diff_v2``: a frozen copy of q_proj (a LoRA target) and a per-token lambda (a width x heads projection
  with bias, and a per-head gate);
- ``ffn=swiglu``: a new SigLIP gate the size of fc1 per vision layer (Gemma reuses its own gate);
- LoRA: rank x (in + out) per targeted linear layer.

Modules trained whole (lambdas, head norms, SwiGLU gates) are held twice by peft (``modules_to_save``: the
original, frozen, and the trained copy), so they count twice in the total and once as trainable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.architectures import Architecture, TextArch, VisionArch

#: Which towers' attention modules a tower name selects.
TOWER_NAMES = ("vision", "text")


@dataclass
class Linear:
    """One linear layer: its shape and whether it has a bias."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)


@dataclass(frozen=True)
class Tower:
    """The per-layer shape one tower's attention and FFN present to variants and LoRA."""

    name: str  #: vision | text
    layers: int
    width: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    bias: bool  #: SigLIP's projections have biases; Gemma's have none

    def attention_linears(self) -> list[Linear]:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        out = "out_proj" if self.name == "vision" else "o_proj"
        return [Linear("q_proj", self.width, q, self.bias), Linear("k_proj", self.width, kv, self.bias),
                Linear("v_proj", self.width, kv, self.bias), Linear(out, q, self.width, self.bias)]

    def ffn_linears(self) -> list[Linear]:
        if self.name == "vision":
            return [Linear("fc1", self.width, self.ffn, True), Linear("fc2", self.ffn, self.width, True)]
        return [Linear("gate_proj", self.width, self.ffn, False), Linear("up_proj", self.width, self.ffn, False),
                Linear("down_proj", self.ffn, self.width, False)]


def vision_tower(v: VisionArch) -> Tower:
    return Tower("vision", v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.num_attention_heads,
                 v.head_dim, v.intermediate_size, True)


def text_tower(t: TextArch) -> Tower:
    return Tower("text", t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads,
                 t.head_dim, t.intermediate_size, False)


def towers(arch: Architecture) -> dict[str, Tower]:
    return {"vision": vision_tower(arch.vision), "text": text_tower(arch.text)}


def base_params(arch: Architecture) -> dict[str, int]:
    """The base model's parameters by part: vision tower, projector, decoder layers, embedding (= LM head)."""
    v, t = arch.vision, arch.text
    vt, tt = vision_tower(v), text_tower(t)
    vision_layer = sum(x.params for x in vt.attention_linears() + vt.ffn_linears()) + 2 * 2 * v.hidden_size
    vision = (3 * v.patch_size ** 2 * v.hidden_size + v.hidden_size  # patch embedding (a conv with bias)
              + v.image_tokens * v.hidden_size  # position embedding
              + v.num_hidden_layers * vision_layer + 2 * v.hidden_size)  # post layer norm
    norms = 4 if t.family == "gemma2" else 2  # Gemma 2 adds a pre- and post-feed-forward norm
    text_layer = sum(x.params for x in tt.attention_linears() + tt.ffn_linears()) + norms * t.hidden_size
    return {
        "vision": vision,
        "projector": v.hidden_size * t.hidden_size + t.hidden_size,
        "decoder": t.num_hidden_layers * text_layer + t.hidden_size,  # layers and the final norm
        "embedding": t.vocab_size * t.hidden_size,  # tied to the LM head: held once
    }


@dataclass
class VariantSpec:
    """What the plan needs of the attn, ffn and lora groups (plain values: no config classes here)."""

    attn: str = "vanilla"  #: vanilla | diff_split | diff_dup | diff_v2
    dup_mode: str = "separate"
    head_norm: bool = True
    attn_towers: tuple[str, ...] = TOWER_NAMES
    ffn: str = "mlp"  #: mlp | swiglu
    ffn_towers: tuple[str, ...] = TOWER_NAMES
    lora_rank: int = 16
    lora_towers: tuple[str, ...] = TOWER_NAMES
    text_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    vision_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    train_projector: bool = False

    @property
    def key(self) -> str:
        return f"diff_dup_{self.dup_mode}" if self.attn == "diff_dup" else self.attn


@dataclass
class ParamCounts:
    """Parameters by kind. ``frozen`` and ``trainable`` sum to ``total``; ``added`` names what the variants add."""

    base: int
    frozen_copies: int  #: second branches copied from the pretrained projections (frozen, in the weights' dtype)
    lora: int
    whole: int  #: modules trained whole: lambdas, head norms, SwiGLU gates (the trained copy)
    whole_original: int  #: peft's frozen original of each of those
    added: dict[str, int] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return self.lora + self.whole

    @property
    def total(self) -> int:
        return self.base + self.frozen_copies + self.lora + self.whole + self.whole_original


def _copies(spec: VariantSpec, tower: Tower) -> list[Linear]:
    """The projections a variant copies in one attention module (frozen second branches)."""
    q, k = tower.attention_linears()[:2]
    if spec.attn == "diff_dup" and spec.dup_mode == "separate":
        return [q, k]
    if spec.attn == "diff_v2":
        return [q]
    return []


def _whole(spec: VariantSpec, tower: Tower) -> int:
    """Parameters one attention module's variant trains whole."""
    if spec.attn == "diff_v2":
        return tower.width * tower.heads + 2 * tower.heads  # lambda projection with bias, and the gate
    if spec.attn in ("diff_split", "diff_dup"):
        branch = tower.head_dim // 2 if spec.attn == "diff_split" else tower.head_dim
        return 4 * branch + (tower.head_dim if spec.head_norm else 0)
    return 0


def count_params(arch: Architecture, spec: VariantSpec) -> ParamCounts:
    """Every parameter of ``arch`` with ``spec``'s variants and LoRA, as peft's model holds them."""
    base = sum(base_params(arch).values())
    copies = lora = whole = 0
    added: dict[str, int] = {}
    for name, tower in towers(arch).items():
        targets = spec.text_targets if name == "text" else spec.vision_targets
        lora_on = name in spec.lora_towers
        linears = tower.attention_linears() + tower.ffn_linears()
        tower_copies = _copies(spec, tower) if name in spec.attn_towers and spec.attn != "vanilla" else []
        tower_whole = _whole(spec, tower) if name in spec.attn_towers else 0
        gate = 0
        if spec.ffn == "swiglu" and name == "vision" and name in spec.ffn_towers:
            gate = tower.width * tower.ffn + tower.ffn  # a new Linear like fc1
        layer_lora = sum(spec.lora_rank * (x.fan_in + x.fan_out) for x in linears + tower_copies
                         if lora_on and x.name in targets)
        layer_copies = sum(x.params for x in tower_copies)
        copies += tower.layers * layer_copies
        lora += tower.layers * layer_lora
        whole += tower.layers * (tower_whole + gate)
        if layer_copies or tower_whole:
            added[f"{spec.key} ({name})"] = tower.layers * (layer_copies + 2 * tower_whole)
        if gate:
            added[f"swiglu gate ({name})"] = tower.layers * 2 * gate
    if spec.train_projector:
        lora += spec.lora_rank * (arch.vision.hidden_size + arch.text.hidden_size)
    return ParamCounts(base=base, frozen_copies=copies, lora=lora, whole=whole, whole_original=whole, added=added)


def linear_params_per_token(arch: Architecture) -> tuple[int, int]:
    """(vision, decoder) weights a token passes through: each tower's linear layers, the projector (on the
    vision side), and for the decoder the LM head (logits are computed at every position in training)."""
    vt, tt = vision_tower(arch.vision), text_tower(arch.text)
    vision = vt.layers * sum(x.fan_in * x.fan_out for x in vt.attention_linears() + vt.ffn_linears())
    v = arch.vision
    vision += 3 * v.patch_size ** 2 * v.hidden_size + v.hidden_size * arch.text.hidden_size  # patches, projector
    text = tt.layers * sum(x.fan_in * x.fan_out for x in tt.attention_linears() + tt.ffn_linears())
    return vision, text + arch.text.hidden_size * arch.text.vocab_size


def forward_flops(arch: Architecture, batch: int, text_tokens: int) -> dict[str, float]:
    """FLOPs of one forward pass of the base model over ``batch`` images and ``text_tokens`` text tokens each.

    2 FLOPs per weight per token for every matrix product (``linear``), and 2 x 2 x T^2 x heads x head dim
    per layer for the two attention products Q K^T and A V over the full T x T map (``attention``; the maps
    of a prefix-LM are not halved: the prefix is bidirectional and the kernels compute the whole square).
    """
    image = arch.vision.image_tokens
    seq = image + text_tokens
    vision_w, text_w = linear_params_per_token(arch)
    vt, tt = vision_tower(arch.vision), text_tower(arch.text)
    linear = 2.0 * batch * (vision_w * image + text_w * seq)
    attention = 4.0 * batch * (vt.layers * image ** 2 * vt.heads * vt.head_dim
                               + tt.layers * seq ** 2 * tt.heads * tt.head_dim)
    return {"linear": linear, "attention": attention}


def train_flops(arch: Architecture, batch: int, text_tokens: int) -> dict[str, float]:
    """FLOPs of one training step, two ways.

    ``model``: the convention of PaLM's MFU, forward plus a backward of twice the forward as if every weight
    were trained: 3 x (linear + attention), i.e. 6 N T + 12 L H D T^2. ``computed``: what a LoRA step on a
    frozen base actually computes: the backward forms input gradients (2 N T) but no weight gradients of the
    frozen base, so 2 x linear, plus the attention's 3 x (its backward forms dQ, dK and dV); LoRA's own
    products (rank 16) are below 1% and not counted.
    """
    fwd = forward_flops(arch, batch, text_tokens)
    return {"model": 3 * (fwd["linear"] + fwd["attention"]), "computed": 2 * fwd["linear"] + 3 * fwd["attention"]}

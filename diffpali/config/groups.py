"""The config groups: one typed, documented dataclass per Hydra group (model, data, ffn, lora, optim,
trainer, logger; attn has one per variant, in :mod:`.attn`), each with a ``validate`` method that names
a refused key, value and rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .architectures import ARCHITECTURES
from .rules import TOWERS, check_towers, choice, fail, positive
from .specs import STAGE1_TASKS, TinySpec


@dataclass
class ModelConfig:
    """Which base PaliGemma to load.

    ``source=zoo`` builds (or reuses) the offline tiny model described by ``tiny``;
    ``source=pretrained`` calls ``from_pretrained(name_or_path)`` on a Hub id or a local directory;
    ``source=random`` builds ``architecture`` with random weights (a rehearsal of the real shapes without
    a download).
    """

    name: str = "tiny"  #: label used in run names and reports
    source: str = "zoo"  #: zoo | pretrained | random
    #: Hub id or directory, for source=pretrained; with source=zoo, a tiny base directory (one built with
    #: ``python -m diffpali.basecard --out DIR``) instead of the shipped or cached base for ``tiny``
    name_or_path: str = ""
    revision: Optional[str] = None
    dtype: str = "float32"  #: weights dtype at load time: float32 | bfloat16 | float16
    trust_remote_code: bool = False  #: never needed for PaliGemma; off unless asked for
    cache_dir: Optional[str] = None  #: where zoo bases are cached; default ~/.cache/diffpali
    tiny: TinySpec = field(default_factory=TinySpec)
    #: a key of diffpali.config.architectures.ARCHITECTURES: the shape of the model (memory plan, FLOPs;
    #: source=random builds it). null: read from the loaded model only
    architecture: Optional[str] = None
    depth: Optional[int] = None  #: source=random: cut each tower to this many layers (shape checks); null: full
    #: recompute each layer's activations in the backward pass instead of keeping them (torch's non-reentrant
    #: checkpoint, through transformers' gradient_checkpointing_enable): activation memory of one layer per
    #: tower instead of all, for about one more forward of compute; takes effect in training mode only
    activation_checkpointing: bool = False
    #: nf4: load the base's linear layers in 4-bit NormalFloat (QLoRA; bitsandbytes: pip install -e '.[qlora]'),
    #: computing in ``dtype``; null: every weight in ``dtype``
    quantization: Optional[str] = None

    def validate(self, key: str = "model") -> None:
        choice(f"{key}.source", self.source, ("zoo", "pretrained", "random"))
        if self.architecture is not None:
            choice(f"{key}.architecture", self.architecture, tuple(ARCHITECTURES))
        if self.source == "random" and self.architecture is None:
            fail(f"{key}.architecture", None, f"source=random needs one of {', '.join(ARCHITECTURES)}")
        if self.depth is not None and self.depth < 1:
            fail(f"{key}.depth", self.depth, "must be >= 1 or null (the full depth)")
        choice(f"{key}.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.quantization is not None:
            choice(f"{key}.quantization", self.quantization, ("nf4",))
            if self.source == "random":  # the weights are built, not loaded: nothing would be quantized
                fail(f"{key}.quantization", self.quantization, "applies when weights load (source=pretrained or "
                     "zoo), not to source=random")
        if self.source == "pretrained" and not self.name_or_path:
            fail(f"{key}.name_or_path", self.name_or_path, "is required when source=pretrained")
        vision, text = self.tiny.vision, self.tiny.text
        if vision.image_size % vision.patch_size:
            fail(f"{key}.tiny.vision.image_size", vision.image_size,
                 f"must be a multiple of patch_size={vision.patch_size}")
        if text.num_attention_heads % text.num_key_value_heads:
            fail(
                f"{key}.tiny.text.num_key_value_heads",
                text.num_key_value_heads,
                f"must divide num_attention_heads={text.num_attention_heads}",
            )
        for stage in ("stage0", "stage1"):
            steps = getattr(self.tiny, stage).steps
            if steps < 0:
                fail(f"{key}.tiny.{stage}.steps", steps, "must be >= 0")
        unknown = sorted((set(self.tiny.stage1.weights) | set(self.tiny.stage1.opening)) - set(STAGE1_TASKS))
        if unknown:
            fail(f"{key}.tiny.stage1.weights", unknown, f"unknown tasks; allowed: {', '.join(STAGE1_TASKS)}")
        if not 1 <= self.tiny.stage1.match_layer <= text.num_hidden_layers:
            fail(f"{key}.tiny.stage1.match_layer", self.tiny.stage1.match_layer,
                 f"must be in [1, text.num_hidden_layers={text.num_hidden_layers}]")
        if vision.hidden_size % vision.num_attention_heads:
            fail(f"{key}.tiny.vision.num_attention_heads", vision.num_attention_heads, "must divide hidden_size")
        self.tiny.attention(f"{key}.tiny.attn")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """A VQA dataset in the VQAv2 schema: image, question, answers (10 strings), answer_type."""

    name: str = "easy_vqa"  #: easy_vqa | vqav2
    path: str = ""  #: vqav2: Hub id or local directory of parquet/arrow files
    train_split: str = "train"
    #: vqav2 only (easy_vqa carves validation out of train). "minival": a fixed slice of TRAIN images
    #: (``minival_fraction``), held out of training, so the split that is reported is never tuned on
    val_split: str = "validation"
    minival_fraction: float = 0.02  #: vqav2 with val_split=minival: share of train images held out
    test_split: str = "test"
    val_fraction: float = 0.1  #: easy_vqa: share of TRAIN images held out for validation
    train_limit: Optional[int] = None  #: first N training records (quick runs)
    val_limit: Optional[int] = 512  #: validation during training is a fixed slice, never the test split
    test_limit: Optional[int] = None  #: None scores the whole test split
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    prompt: str = "answer en {question}"
    max_new_tokens: int = 8
    #: error: a bad record (empty question, no answers, missing or unreadable image) stops the run,
    #: naming it; skip: it is left out, counted in the log, metrics.json and W&B (data/skipped/*)
    on_bad_record: str = "error"
    #: before training, open every distinct image file and check it (PNG checksums, truncation) so a
    #: bad image fails before training rather than hours in. false: only at use
    check_images: bool = True
    #: share of training examples that replay the tiny base's own stage-1 examples (where, needle, detect, count,
    #: caption, exist, vqa_drawn, vqa: the stream its build trained on), the rest the training split; in [0, 1),
    #: 0: off. Keeps the skills easy-vqa never asks about (diffpali/zoo/rehearsal.py); the embedded base only
    rehearsal: float = 0.0

    def validate(self, key: str = "data") -> None:
        choice(f"{key}.name", self.name, ("easy_vqa", "vqav2"))
        choice(f"{key}.on_bad_record", self.on_bad_record, ("error", "skip"))
        if not 0.0 < self.minival_fraction < 1.0:
            fail(f"{key}.minival_fraction", self.minival_fraction, "must be in (0, 1)")
        if self.name == "vqav2" and "minival" in (self.train_split, self.test_split):
            fail(f"{key}.test_split" if self.test_split == "minival" else f"{key}.train_split", "minival",
                 "minival is a tuning slice: use it as val_split only")
        if self.name == "vqav2" and self.val_split != "minival" and self.val_split == self.test_split:
            fail(f"{key}.val_split", self.val_split, "is also test_split: validation would tune on the reported split; "
                 "use val_split=minival (a held-out slice of train)")
        if not 0.0 < self.val_fraction < 1.0:
            fail(f"{key}.val_fraction", self.val_fraction, "must be in (0, 1)")
        if not 0.0 <= self.rehearsal < 1.0:
            fail(f"{key}.rehearsal", self.rehearsal, "must be in [0, 1): the share of training examples replayed from "
                 "the base's stage-1 stream (0: off)")
        for name in ("batch_size", "eval_batch_size", "max_new_tokens"):
            positive(f"{key}.{name}", getattr(self, name))
        for name in ("train_limit", "val_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                fail(f"{key}.{name}", value, "must be > 0 or null (no limit)")
        if self.num_workers < 0:
            fail(f"{key}.num_workers", self.num_workers, "must be >= 0")
        if "{question}" not in self.prompt:
            fail(f"{key}.prompt", self.prompt, "must contain the placeholder {question}")
        if self.name == "vqav2" and not self.path:
            fail(f"{key}.path", self.path, "vqav2 needs a Hub id or a local directory")
        if self.name == "vqav2" and self.path.startswith(("/", ".", "~")):
            if not Path(self.path).expanduser().exists():
                fail(f"{key}.path", self.path, "local path does not exist")


# --------------------------------------------------------------------------------------------
# method: feed-forward, LoRA (attention: .attn)
# --------------------------------------------------------------------------------------------
FFN_VARIANTS = ("mlp", "swiglu")


@dataclass
class FfnConfig:
    """Feed-forward variant applied to the pretrained model (paper eq. 7)."""

    variant: str = "mlp"  #: mlp (the pretrained FFNs, untouched) | swiglu: (silu(x W_G) * x W_1) W_2
    towers: list[str] = field(default_factory=lambda: list(TOWERS))  #: which towers get the variant
    #: How SigLIP's new gate W_G starts (Gemma reuses its pretrained gate, so needs none):
    #: copy_fc1 (W_G = fc1, so silu(h) * h replaces gelu(h)) | random (fresh init; destroys the base)
    gate_init: str = "copy_fc1"

    def validate(self, key: str = "ffn") -> None:
        choice(f"{key}.variant", self.variant, FFN_VARIANTS)
        choice(f"{key}.gate_init", self.gate_init, ("copy_fc1", "random"))
        check_towers(f"{key}.towers", self.towers)


@dataclass
class LoraConfig:
    """peft LoRA adapters; the pretrained weights stay frozen."""

    rank: int = 16
    alpha: float = 32.0  #: the paper keeps alpha = 2 * rank
    dropout: float = 0.0
    towers: list[str] = field(default_factory=lambda: list(TOWERS))
    text_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    vision_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    )
    train_projector: bool = False  #: also LoRA the vision-to-text projector

    def validate(self, key: str = "lora") -> None:
        positive(f"{key}.rank", self.rank)
        positive(f"{key}.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            fail(f"{key}.dropout", self.dropout, "must be in [0, 1)")
        check_towers(f"{key}.towers", self.towers)
        if "text" in self.towers and not self.text_targets:
            fail(f"{key}.text_targets", self.text_targets, "must not be empty when the text tower is adapted")
        if "vision" in self.towers and not self.vision_targets:
            fail(f"{key}.vision_targets", self.vision_targets, "must not be empty when the vision tower is adapted")


# --------------------------------------------------------------------------------------------
# optimisation, trainer, logger
# --------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine or constant)."""

    name: str = "adamw"  #: adam | adamw (adam adds weight decay to the gradient, as torch.optim.Adam)
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 20
    schedule: str = "cosine"  #: cosine | constant

    def validate(self, key: str = "optim") -> None:
        choice(f"{key}.name", self.name, ("adam", "adamw"))
        choice(f"{key}.schedule", self.schedule, ("cosine", "constant"))
        positive(f"{key}.lr", self.lr)
        if self.weight_decay < 0:
            fail(f"{key}.weight_decay", self.weight_decay, "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            fail(f"{key}.betas", self.betas, "must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            fail(f"{key}.warmup_steps", self.warmup_steps, "must be >= 0")


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer`` (a documented subset)."""

    accelerator: str = "cpu"  #: cpu | gpu | auto
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"  #: 32-true on CPU; bf16-mixed on GPU
    max_epochs: int = 1
    max_steps: int = -1  #: -1: run max_epochs
    max_time: Optional[str] = None  #: "DD:HH:MM:SS" wall-clock cap
    val_check_interval: Optional[float] = None  #: None: once per epoch
    limit_val_batches: Optional[float] = None
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    enable_progress_bar: bool = True

    def validate(self, key: str = "trainer") -> None:
        choice(f"{key}.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        choice(
            f"{key}.precision",
            self.precision,
            ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed"),
        )
        if self.max_epochs < 1 and self.max_steps < 1:
            fail(f"{key}.max_epochs", self.max_epochs, "must be >= 1 unless max_steps > 0")
        if self.accumulate_grad_batches < 1:
            fail(f"{key}.accumulate_grad_batches", self.accumulate_grad_batches, "must be >= 1")
        if self.accelerator == "cpu" and self.precision in ("bf16-mixed", "16-mixed", "bf16-true"):
            # bf16 autocast on CPU is slow and changes numerics; the CPU default is fp32 on purpose.
            fail(f"{key}.precision", self.precision, "use 32-true with accelerator=cpu")


@dataclass
class LoggerConfig:
    """Where metrics go. W&B runs offline when no login is present, so a fresh machine works."""

    kind: str = "wandb"  #: wandb | csv | none
    project: str = "diffpali"
    entity: Optional[str] = None
    mode: str = "auto"  #: auto (online if logged in, else offline) | online | offline | disabled
    group: Optional[str] = None  #: default: the experiment name
    tags: list[str] = field(default_factory=list)
    log_predictions: int = 32  #: rows of the sample-prediction table logged after evaluation

    def validate(self, key: str = "logger") -> None:
        choice(f"{key}.kind", self.kind, ("wandb", "csv", "none"))
        choice(f"{key}.mode", self.mode, ("auto", "online", "offline", "disabled"))
        if self.log_predictions < 0:
            fail(f"{key}.log_predictions", self.log_predictions, "must be >= 0")


def check_local_model(model: ModelConfig, key: str = "model") -> None:
    """A path-like ``name_or_path`` must be an existing directory: refused before anything loads."""
    name_or_path = model.name_or_path
    if model.source in ("pretrained", "zoo") and name_or_path.startswith(("/", ".", "~")):
        if not Path(name_or_path).expanduser().is_dir():
            fail(f"{key}.name_or_path", name_or_path, "local directory does not exist (or give a Hub id)")


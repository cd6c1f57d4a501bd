"""Typed configuration schemas.

Every Hydra config group is backed by a dataclass registered in Hydra's ConfigStore, so a misspelt
key or a value of the wrong type fails at composition time. Value rules (ranges, choices, paths)
live in ``validate`` methods and run in :func:`to_typed`, before any model or dataset is loaded,
with messages of the form ``lora.rank=0: must be > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value is not allowed. The message names the key, the value and the rule."""


def _fail(key: str, value: Any, rule: str) -> None:
    raise ConfigError(f"{key}={value!r}: {rule}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(key, value, f"must be one of {', '.join(allowed)}")


def _positive(key: str, value: float | int) -> None:
    if not value > 0:
        _fail(key, value, "must be > 0")


TOWERS = ("vision", "text")


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
@dataclass
class VisionSpec:
    """SigLIP vision tower of the tiny zoo model."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    #: input side in pixels: 128 keeps a 2x2 haystack's cells at easy-vqa's native 64 px and a 4x4's at 32 px
    image_size: int = 128
    patch_size: int = 16  #: 8 x 8 = 64 image tokens; a 4x4 grid cell is 2 x 2 patches


@dataclass
class TextSpec:
    """Gemma text decoder of the tiny zoo model."""

    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 1  #: multi-query, as in Gemma 2B
    head_dim: int = 32
    intermediate_size: int = 512
    vocab_size: int = 768  #: BPE vocabulary trained locally, before PaliGemma's extra tokens


@dataclass
class Stage0Spec:
    """Stage 0: the vision tower alone, per-token label heads on drawn scenes (thrown away after)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3


#: The tasks of stage 1's mixture (zoo/tasks.py).
STAGE1_TASKS = ("vqa", "vqa_drawn", "caption", "exist", "count", "where", "needle", "detect")


def _stage1_opening() -> dict[str, float]:
    return {"caption": 0.6, "vqa_drawn": 0.2, "detect": 0.2}


def _stage1_weights() -> dict[str, float]:
    return {"vqa": 0.15, "vqa_drawn": 0.15, "caption": 0.04, "exist": 0.1, "count": 0.02,
            "where": 0.24, "needle": 0.2, "detect": 0.1}


@dataclass
class Stage1Spec:
    """Stage 1: projector and decoder on the multimodal mixture (``zoo/tasks.py``), the tower frozen."""

    steps: int = 9000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    #: share of examples per task: vqa, vqa_drawn, caption, exist, count, where, needle, detect (needle,
    #: whose prompt is long, gets batches of its own; the others are mixed within batches)
    weights: dict[str, float] = field(default_factory=_stage1_weights)
    #: the mixture of the first ``opening_steps`` steps: captions, which teach the decoder to read the image
    opening: dict[str, float] = field(default_factory=_stage1_opening)
    opening_steps: int = 300
    #: decoder hidden state (0 = embeddings) the training-only match head reads: after the first layer, so
    #: that layer binds words to image tokens and the later ones read the answer off them
    match_layer: int = 1
    match_weight: float = 1.0  #: weight of the match head's loss; 0 turns it off
    vision_lr_scale: float = 0.0  #: the tower's learning rate as a share of ``lr``; 0 keeps stage 0's tower frozen


@dataclass
class TinySpec:
    """Architecture and pretraining recipe of the offline tiny PaliGemma.

    The directory of a built base is keyed by a hash of this whole spec, so changing any field
    builds (and caches) a new base instead of silently reusing one trained for other settings.
    """

    vision: VisionSpec = field(default_factory=VisionSpec)
    text: TextSpec = field(default_factory=TextSpec)
    stage0: Stage0Spec = field(default_factory=Stage0Spec)
    stage1: Stage1Spec = field(default_factory=Stage1Spec)
    seed: int = 0  #: initialisation and every data stream of the build


@dataclass
class ModelConfig:
    """Which base PaliGemma to load.

    ``source=zoo`` builds (or reuses) the offline tiny model described by ``tiny``;
    ``source=pretrained`` calls ``from_pretrained(name_or_path)`` on a Hub id or a local directory.
    """

    name: str = "tiny"  #: label used in run names and reports
    source: str = "zoo"  #: zoo | pretrained
    name_or_path: str = ""  #: Hub id or directory, for source=pretrained
    revision: Optional[str] = None
    dtype: str = "float32"  #: weights dtype at load time: float32 | bfloat16 | float16
    trust_remote_code: bool = False  #: never needed for PaliGemma; off unless asked for
    cache_dir: Optional[str] = None  #: where zoo bases are cached; default ~/.cache/diffpali
    tiny: TinySpec = field(default_factory=TinySpec)

    def validate(self, key: str = "model") -> None:
        _choice(f"{key}.source", self.source, ("zoo", "pretrained"))
        _choice(f"{key}.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.source == "pretrained" and not self.name_or_path:
            _fail(f"{key}.name_or_path", self.name_or_path, "is required when source=pretrained")
        v, t = self.tiny.vision, self.tiny.text
        if v.image_size % v.patch_size:
            _fail(f"{key}.tiny.vision.image_size", v.image_size, f"must be a multiple of patch_size={v.patch_size}")
        if t.num_attention_heads % t.num_key_value_heads:
            _fail(
                f"{key}.tiny.text.num_key_value_heads",
                t.num_key_value_heads,
                f"must divide num_attention_heads={t.num_attention_heads}",
            )
        for stage in ("stage0", "stage1"):
            steps = getattr(self.tiny, stage).steps
            if steps < 0:
                _fail(f"{key}.tiny.{stage}.steps", steps, "must be >= 0")
        unknown = sorted((set(self.tiny.stage1.weights) | set(self.tiny.stage1.opening)) - set(STAGE1_TASKS))
        if unknown:
            _fail(f"{key}.tiny.stage1.weights", unknown, f"unknown tasks; allowed: {', '.join(STAGE1_TASKS)}")
        if not 1 <= self.tiny.stage1.match_layer <= t.num_hidden_layers:
            _fail(f"{key}.tiny.stage1.match_layer", self.tiny.stage1.match_layer,
                  f"must be in [1, text.num_hidden_layers={t.num_hidden_layers}]")
        if v.hidden_size % v.num_attention_heads:
            _fail(f"{key}.tiny.vision.num_attention_heads", v.num_attention_heads, "must divide hidden_size")


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
    #: bad image fails in seconds rather than hours in (easy-vqa train, 3,600 images: +2 s). false: only at use
    check_images: bool = True

    def validate(self, key: str = "data") -> None:
        _choice(f"{key}.name", self.name, ("easy_vqa", "vqav2"))
        _choice(f"{key}.on_bad_record", self.on_bad_record, ("error", "skip"))
        if not 0.0 < self.minival_fraction < 1.0:
            _fail(f"{key}.minival_fraction", self.minival_fraction, "must be in (0, 1)")
        if self.name == "vqav2" and "minival" in (self.train_split, self.test_split):
            _fail(f"{key}.test_split" if self.test_split == "minival" else f"{key}.train_split", "minival",
                  "minival is a tuning slice: use it as val_split only")
        if self.name == "vqav2" and self.val_split != "minival" and self.val_split == self.test_split:
            _fail(f"{key}.val_split", self.val_split, f"is also test_split: validation would tune on the reported split; "
                  "use val_split=minival (a held-out slice of train)")
        if not 0.0 < self.val_fraction < 1.0:
            _fail(f"{key}.val_fraction", self.val_fraction, "must be in (0, 1)")
        for name in ("batch_size", "eval_batch_size", "max_new_tokens"):
            _positive(f"{key}.{name}", getattr(self, name))
        for name in ("train_limit", "val_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                _fail(f"{key}.{name}", value, "must be > 0 or null (no limit)")
        if self.num_workers < 0:
            _fail(f"{key}.num_workers", self.num_workers, "must be >= 0")
        if "{question}" not in self.prompt:
            _fail(f"{key}.prompt", self.prompt, "must contain the placeholder {question}")
        if self.name == "vqav2" and not self.path:
            _fail(f"{key}.path", self.path, "vqav2 needs a Hub id or a local directory")
        if self.name == "vqav2" and self.path.startswith(("/", ".", "~")):
            if not Path(self.path).expanduser().exists():
                _fail(f"{key}.path", self.path, "local path does not exist")


# --------------------------------------------------------------------------------------------
# method: attention, feed-forward, LoRA
# --------------------------------------------------------------------------------------------
FFN_VARIANTS = ("mlp", "swiglu")


@dataclass
class AttnConfig:
    """Attention variant applied to the pretrained model (paper section 3, DESIGN.md section 2).

    With ``variant=diff_dup dup_mode=separate lambda_schedule=constant lambda_init=0
    lambda_pairs=tied branch_noise=0 head_norm=false`` the model computes exactly the pretrained
    attention at init (lambda = 0, no norm) and still trains: lambda and both branches get gradients.
    """

    #: vanilla | diff_split (original split-QK) | diff_dup (duplicated QK, the paper's) | diff_v2 (DIFF V2):
    #: the keys of diffpali.attention.VARIANTS
    variant: str = "vanilla"
    dup_mode: str = "separate"  #: diff_dup only. shared: Q2,K2 are Q1,K1 (the paper, inert); separate: own copies + LoRA
    towers: list[str] = field(default_factory=lambda: list(TOWERS))  #: which towers get the variant
    head_norm: bool = True  #: per-head RMSNorm (fp32) scaled by (1 - lambda_init)
    lambda_schedule: str = "layer"  #: layer: 0.8 - 0.6 exp(-0.3 (l - 1)); constant: lambda_init everywhere
    lambda_init: float = 0.8  #: the constant, for lambda_schedule=constant
    layer_index_base: int = 1  #: index l of a tower's first layer in the schedule: 1 (paper) or 0
    lambda_std: float = 0.1  #: init std of the lambda vectors lq1, lk1, lq2, lk2 (0: lambda = lambda_init, frozen)
    #: independent: four independent draws (the paper); tied: lq2 = lq1 and lk2 = lk1 at init, so
    #: lambda starts at exactly lambda_init yet has a gradient (std 0 would leave it stuck there)
    lambda_pairs: str = "independent"
    branch_noise: float = 1e-3  #: diff_dup separate, diff_v2: relative std of noise on the copied branch, breaking symmetry
    #: diff_v2: exact (lambda's per-head gate starts at 0: the pretrained model at init, with gradients) |
    #: plain (the authors' lambda projection: sigmoid(0) = 0.5 everywhere at init)
    v2_lambda_init: str = "exact"

    def validate(self, key: str = "attn") -> None:
        from .attention import VARIANTS  # the one registry (imports torch, never a model)

        _choice(f"{key}.variant", self.variant, tuple(sorted({v.selects["variant"] for v in VARIANTS.values()})))
        _choice(f"{key}.dup_mode", self.dup_mode, tuple(sorted({v.selects["dup_mode"] for v in VARIANTS.values()
                                                                 if "dup_mode" in v.selects})))
        _choice(f"{key}.v2_lambda_init", self.v2_lambda_init, ("exact", "plain"))
        _choice(f"{key}.lambda_schedule", self.lambda_schedule, ("layer", "constant"))
        _choice(f"{key}.layer_index_base", self.layer_index_base, (0, 1))
        _choice(f"{key}.lambda_pairs", self.lambda_pairs, ("independent", "tied"))
        if not self.towers:
            _fail(f"{key}.towers", self.towers, f"must name at least one of {', '.join(TOWERS)}")
        for tower in self.towers:
            _choice(f"{key}.towers", tower, TOWERS)
        if not 0.0 <= self.lambda_init < 1.0:
            _fail(f"{key}.lambda_init", self.lambda_init, "must be in [0, 1)")
        if self.lambda_std < 0:
            _fail(f"{key}.lambda_std", self.lambda_std, "must be >= 0")
        if self.branch_noise < 0:
            _fail(f"{key}.branch_noise", self.branch_noise, "must be >= 0")


@dataclass
class FfnConfig:
    """Feed-forward variant applied to the pretrained model (paper eq. 7)."""

    variant: str = "mlp"  #: mlp (the pretrained FFNs, untouched) | swiglu: (silu(x W_G) * x W_1) W_2
    towers: list[str] = field(default_factory=lambda: list(TOWERS))  #: which towers get the variant
    #: How SigLIP's new gate W_G starts (Gemma reuses its pretrained gate, so needs none):
    #: copy_fc1 (W_G = fc1, so silu(h) * h replaces gelu(h)) | random (fresh init; destroys the base)
    gate_init: str = "copy_fc1"

    def validate(self, key: str = "ffn") -> None:
        _choice(f"{key}.variant", self.variant, FFN_VARIANTS)
        _choice(f"{key}.gate_init", self.gate_init, ("copy_fc1", "random"))
        if not self.towers:
            _fail(f"{key}.towers", self.towers, f"must name at least one of {', '.join(TOWERS)}")
        for tower in self.towers:
            _choice(f"{key}.towers", tower, TOWERS)


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
        _positive(f"{key}.rank", self.rank)
        _positive(f"{key}.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            _fail(f"{key}.dropout", self.dropout, "must be in [0, 1)")
        if not self.towers:
            _fail(f"{key}.towers", self.towers, f"must name at least one of {', '.join(TOWERS)}")
        for tower in self.towers:
            _choice(f"{key}.towers", tower, TOWERS)
        if "text" in self.towers and not self.text_targets:
            _fail(f"{key}.text_targets", self.text_targets, "must not be empty when the text tower is adapted")
        if "vision" in self.towers and not self.vision_targets:
            _fail(f"{key}.vision_targets", self.vision_targets, "must not be empty when the vision tower is adapted")


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
        _choice(f"{key}.name", self.name, ("adam", "adamw"))
        _choice(f"{key}.schedule", self.schedule, ("cosine", "constant"))
        _positive(f"{key}.lr", self.lr)
        if self.weight_decay < 0:
            _fail(f"{key}.weight_decay", self.weight_decay, "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            _fail(f"{key}.betas", self.betas, "must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            _fail(f"{key}.warmup_steps", self.warmup_steps, "must be >= 0")


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
        _choice(f"{key}.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        _choice(
            f"{key}.precision",
            self.precision,
            ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed"),
        )
        if self.max_epochs < 1 and self.max_steps < 1:
            _fail(f"{key}.max_epochs", self.max_epochs, "must be >= 1 unless max_steps > 0")
        if self.accumulate_grad_batches < 1:
            _fail(f"{key}.accumulate_grad_batches", self.accumulate_grad_batches, "must be >= 1")
        if self.accelerator == "cpu" and self.precision in ("bf16-mixed", "16-mixed", "bf16-true"):
            # bf16 autocast on CPU is slow and changes numerics; the CPU default is fp32 on purpose.
            _fail(f"{key}.precision", self.precision, "use 32-true with accelerator=cpu")


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
        _choice(f"{key}.kind", self.kind, ("wandb", "csv", "none"))
        _choice(f"{key}.mode", self.mode, ("auto", "online", "offline", "disabled"))
        if self.log_predictions < 0:
            _fail(f"{key}.log_predictions", self.log_predictions, "must be >= 0")


# --------------------------------------------------------------------------------------------
# top level
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """``python train.py``: LoRA fine-tuning, then scoring on the test split."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attn: AttnConfig = field(default_factory=AttnConfig)
    ffn: FfnConfig = field(default_factory=FfnConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: str = "default"  #: W&B group and report row label
    #: Row of the paper's Table 1 this run reproduces (set by conf/experiment/table1/row*.yaml);
    #: recorded in the run's job.json, where ``python -m diffpali.report`` reads it. None: not a Table 1 run.
    table_row: Optional[int] = None
    seed: Optional[int] = 0  #: every seed is applied, 0 included; null leaves RNGs unseeded
    output_dir: str = "."  #: set by Hydra to the run directory
    #: resume: a checkpoint file; "last": <output_dir>/checkpoints/last.ckpt, which must exist;
    #: "auto": that file when it exists, else a fresh start (for jobs that are requeued into the same
    #: directory); null: a fresh start. Give the old run's directory with hydra.run.dir=<dir>.
    ckpt_path: Optional[str] = None
    ckpt_every_n_steps: int = 50  #: write checkpoints/last.ckpt every N optimiser steps (0: at each epoch end instead)
    on_nonfinite: str = "stop"  #: a NaN/inf loss or gradient: stop (raise, naming step, batch ids, lambdas) | skip the step
    test_after_fit: bool = True

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if is_dataclass(value) and hasattr(value, "validate"):
                value.validate(f.name)
        if self.seed is not None and self.seed < 0:
            _fail("seed", self.seed, "must be >= 0 or null")
        if self.table_row is not None and self.table_row < 1:
            _fail("table_row", self.table_row, "must be >= 1 or null")
        if self.ckpt_path not in (None, "last", "auto") and not Path(self.ckpt_path).expanduser().is_file():
            _fail("ckpt_path", self.ckpt_path, 'must be an existing checkpoint file, "last", "auto" or null')
        if self.ckpt_path == "last" and not (Path(self.output_dir) / "checkpoints" / "last.ckpt").is_file():
            _fail("ckpt_path", self.ckpt_path, f"no checkpoints/last.ckpt in output_dir={self.output_dir!r}: "
                  "resume into the old run's directory (hydra.run.dir=<run dir>), or use ckpt_path=auto")
        if self.ckpt_every_n_steps < 0:
            _fail("ckpt_every_n_steps", self.ckpt_every_n_steps, "must be >= 0 (0: at each epoch end instead)")
        _choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _check_local_model(self.model)
        if self.trainer.strategy.startswith("fsdp") and self.trainer.accelerator not in ("gpu", "cuda"):
            # Lightning 2.x refuses FSDP without CUDA (its own ValueError, after the data and model have loaded).
            _fail("trainer.strategy", self.trainer.strategy, "FSDP needs GPUs (trainer.accelerator=gpu); on CPU use ddp")


def _check_local_model(model: ModelConfig, key: str = "model") -> None:
    """A path-like ``name_or_path`` must be an existing directory: refused before anything loads."""
    name_or_path = model.name_or_path
    if model.source == "pretrained" and name_or_path.startswith(("/", ".", "~")):
        if not Path(name_or_path).expanduser().is_dir():
            _fail(f"{key}.name_or_path", name_or_path, "local directory does not exist (or give a Hub id)")


EVAL_TASKS = ("vqa", "mmneedle", "pope", "attention", "distractors")


@dataclass
class EvalTaskConfig:
    """What ``evaluate.py`` scores: ``eval=vqa | mmneedle | pope | attention`` (conf/eval/*.yaml).

    One flat group, so every task is steered with the same short keys (``eval.limit=50``); each
    field says which tasks read it. Haystacks and probes are built from ``split``'s images (test by
    default, never train) with a fixed seed and cached on disk, so every model sees the same samples.
    """

    task: str = "vqa"  #: vqa | mmneedle | pope | attention | distractors
    split: str = "test"  #: the split scored (vqa) or whose images build haystacks and probes
    limit: Optional[int] = None  #: score the first N questions / samples only (quick runs); null: all
    batch_size: Optional[int] = None  #: generation batch; null: data.eval_batch_size
    max_new_tokens: Optional[int] = None  #: null: data.max_new_tokens (mmneedle official: at least 8)
    # --- vqa -------------------------------------------------------------------------------
    convention: str = "official"  #: official (VQAv2 vqaEval.py) | simple (the paper's min(n/3, 1))
    # --- mmneedle, attention: haystacks ------------------------------------------------------
    source: str = "easy_vqa"  #: easy_vqa (embedded; captions "a {color} {shape}") | coco (2014 val, local)
    coco_captions: str = ""  #: source=coco: captions_val2014.json
    coco_instances: str = ""  #: source=coco, pope: instances_val2014.json
    coco_images: str = ""  #: source=coco: the val2014 image folder
    mode: str = "paper"  #: paper (M=1, N=2, "Top or Bottom?" then "Left or Right?") | official (MMNeedle prompt)
    images: int = 1  #: M, stitched images per sample (official mode)
    grid: int = 2  #: N, an N x N grid of sub-images per stitched image
    cell_size: Optional[int] = None  #: side of a sub-image in px; null: the model's input size / N
    samples: int = 200  #: haystacks built; paper mode spreads them evenly over the N*N cells
    negative_fraction: float = 0.5  #: official mode: share of samples whose caption is not in the haystack
    haystack_seed: int = 0  #: fixes haystacks and probes; recorded in metrics.json
    cache_dir: Optional[str] = None  #: where built haystacks and probes are kept; null: ~/.cache/diffpali
    # --- pope --------------------------------------------------------------------------------
    setting: str = "all"  #: random | popular | adversarial | all (the three, one after another)
    #: images probed, the same ones in every setting; each gets equal present and absent questions
    #: (easy_vqa: its colour and its shape, each paired with an absent one; coco: probe_objects pairs)
    probe_images: int = 500
    probe_objects: int = 3  #: source=coco: present objects asked per image, each paired with an absent one (POPE: 3)
    # --- attention -------------------------------------------------------------------------
    overlays: int = 4  #: samples drawn with their attention overlay
    # --- distractors: drawn scenes, a target among k distractors ------------------------------
    distractor_grids: list[int] = field(default_factory=lambda: [2, 3, 4])  #: N, cells per side
    distractor_counts: list[int] = field(default_factory=lambda: [0, 1, 3, 7, 15])  #: k (those that fit each N, M)
    #: hard: each distractor shares the target's colour or shape; easy: shares neither
    distractor_kinds: list[str] = field(default_factory=lambda: ["hard", "easy"])
    distractor_images: list[int] = field(default_factory=lambda: [1, 2])  #: M, images per sample
    attention_samples: int = 0  #: distractors: positives per point whose target-cell attention share is measured

    def validate(self, key: str = "eval") -> None:
        _choice(f"{key}.task", self.task, EVAL_TASKS)
        _choice(f"{key}.convention", self.convention, ("official", "simple"))
        _choice(f"{key}.split", self.split, ("train", "validation", "test"))
        _choice(f"{key}.source", self.source, ("easy_vqa", "coco"))
        _choice(f"{key}.mode", self.mode, ("paper", "official"))
        _choice(f"{key}.setting", self.setting, ("random", "popular", "adversarial", "all"))
        for name in ("limit", "batch_size", "max_new_tokens", "cell_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                _fail(f"{key}.{name}", value, "must be > 0 or null (the default)")
        for name in ("images", "grid", "samples", "probe_images", "probe_objects"):
            _positive(f"{key}.{name}", getattr(self, name))
        if self.overlays < 0:
            _fail(f"{key}.overlays", self.overlays, "must be >= 0")
        if self.attention_samples < 0:
            _fail(f"{key}.attention_samples", self.attention_samples, "must be >= 0")
        for name, values, low in (("distractor_grids", self.distractor_grids, 1), ("distractor_counts", self.distractor_counts, 0),
                                  ("distractor_images", self.distractor_images, 1)):
            if not values or any(v < low for v in values):
                _fail(f"{key}.{name}", values, f"must be a non-empty list of integers >= {low}")
        for kind in self.distractor_kinds:
            _choice(f"{key}.distractor_kinds", kind, ("hard", "easy"))
        if not 0.0 <= self.negative_fraction < 1.0:
            _fail(f"{key}.negative_fraction", self.negative_fraction, "must be in [0, 1)")
        if self.task in ("mmneedle", "attention") and self.mode == "paper" and (self.images, self.grid) != (1, 2):
            _fail(f"{key}.mode", self.mode, "paper mode is M=1, N=2 (eval.images=1 eval.grid=2); use mode=official otherwise")
        if self.task in ("mmneedle", "attention") and self.mode == "paper" and self.samples % 4:
            _fail(f"{key}.samples", self.samples, "paper mode balances the 4 cells: must be a multiple of 4")
        if self.source == "coco":
            needed = {"mmneedle": ("coco_captions", "coco_images"), "attention": ("coco_captions", "coco_images"),
                      "pope": ("coco_instances", "coco_images")}.get(self.task, ())
            for name in needed:
                value = getattr(self, name)
                if not value or not Path(value).expanduser().exists():
                    _fail(f"{key}.{name}", value, f"source=coco needs an existing path for eval={self.task}")


@dataclass
class EvaluateConfig:
    """``python evaluate.py ckpt=<run dir | adapter dir | base>``."""

    ckpt: str = "base"  #: a train.py run directory, an adapter directory, or "base" (no adapter)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalTaskConfig = field(default_factory=EvalTaskConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: Optional[int] = 0
    device: str = "auto"  #: auto | cpu | cuda
    output_dir: str = "."

    def validate(self) -> None:
        self.model.validate("model")
        self.data.validate("data")
        self.eval.validate("eval")
        self.logger.validate("logger")
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_local_model(self.model)
        if self.ckpt != "base" and not Path(self.ckpt).expanduser().exists():
            _fail("ckpt", self.ckpt, 'must be a run directory, an adapter directory, or "base"')


def register_configs() -> None:
    """Register the schemas so that Hydra type-checks every group against them."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)


def to_typed(cfg: DictConfig, schema: type = TrainConfig):
    """Convert a composed config to its dataclass and run every value check.

    Raises :class:`ConfigError` (naming key, value and rule) before anything heavy happens.
    """
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(merged)
    obj.validate()
    return obj


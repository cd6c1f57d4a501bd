"""The top-level schemas of the two commands, ``train.py`` (:class:`TrainConfig`) and ``evaluate.py``
(:class:`EvaluateConfig` with its ``eval`` group), their registration with Hydra, and :func:`to_typed`."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ..paths import CHECKPOINT_DIR, LAST_CHECKPOINT
from . import groups
from .attn import ATTN_SETTINGS, SCHEMA_SUFFIX, AttnSettings, attn_settings
from .bases import resolve_base_attention
from .errors import one_line
from .rules import ConfigError, choice, fail, positive
from .specs import STAGE1_VAL_FRACTION


@dataclass
class CurveConfig:
    """Learning curves: some of ``evals`` scored during the fit at a few optimiser steps (budgets), each into
    ``<run>/evals/<name>@<step>/``; the fit is the same with or without them (their draws of randomness are undone)."""

    steps: list[int] = field(default_factory=list)  #: optimiser steps after which to score, ascending; empty: none
    evals: list[str] = field(default_factory=list)  #: names in ``evals``; empty: all of them
    limit: Optional[int] = None  #: score each on its first N samples only (a subset, so the curve costs less)

    def validate(self, key: str = "curve") -> None:
        if any(step <= 0 for step in self.steps) or self.steps != sorted(set(self.steps)):
            fail(f"{key}.steps", self.steps, "must be optimiser steps > 0, ascending, each once")
        if self.limit is not None and self.limit <= 0:
            fail(f"{key}.limit", self.limit, "must be > 0 or null (every sample)")


@dataclass
class TrainConfig:
    """``python train.py``: LoRA fine-tuning, then scoring on the test split."""

    model: groups.ModelConfig = field(default_factory=groups.ModelConfig)
    data: groups.DataConfig = field(default_factory=groups.DataConfig)
    #: the attention variant's settings: the attn group's option picks the type (conf/attn/*.yaml)
    attn: AttnSettings = field(default_factory=AttnSettings)
    ffn: groups.FfnConfig = field(default_factory=groups.FfnConfig)
    lora: groups.LoraConfig = field(default_factory=groups.LoraConfig)
    optim: groups.OptimConfig = field(default_factory=groups.OptimConfig)
    trainer: groups.TrainerConfig = field(default_factory=groups.TrainerConfig)
    logger: groups.LoggerConfig = field(default_factory=groups.LoggerConfig)
    experiment_name: str = "default"  #: W&B group and report row label
    scale_name: str = "default"  #: the conf/scale option that shaped this run (each scale file sets it)
    #: Row of the paper's Table 1 this run reproduces (set by conf/experiment/table1/row*.yaml);
    #: recorded in the run's job.json, where ``python -m diffpali.report`` reads it. None: not a Table 1 run.
    table_row: Optional[int] = None
    seed: Optional[int] = 0  #: every seed is applied, 0 included; null leaves RNGs unseeded
    #: attention transfer: the first N optimiser steps train only the variant's new parts (second branch's LoRA,
    #: lambda, head norm) to reproduce each pretrained layer's output on the training batches; the fine-tune
    #: takes the steps that remain (they count toward the run's steps). 0: none
    transfer_steps: int = 0
    output_dir: str = "."  #: set by Hydra to the run directory
    #: resume: a checkpoint file; "last": <output_dir>/checkpoints/last.ckpt, which must exist;
    #: "auto": that file when it exists, else a fresh start (for jobs that are requeued into the same
    #: directory); null: a fresh start. Give the old run's directory with hydra.run.dir=<dir>.
    ckpt_path: Optional[str] = None
    ckpt_every_n_steps: int = 50  #: write checkpoints/last.ckpt every N optimiser steps (0: at each epoch end instead)
    #: a NaN/inf loss or gradient: stop (raise, naming step, batch ids, lambdas) | skip the step
    on_nonfinite: str = "stop"
    test_after_fit: bool = True
    #: evaluations of the trained model after the fit, by name: each an ``eval`` group (conf/eval/*.yaml
    #: keys), written to ``<run>/evals/<name>/`` and logged to the run's W&B under ``<name>/...``
    evals: dict[str, EvalTaskConfig] = field(default_factory=dict)
    eval_limit: Optional[int] = None  #: cap every one of ``evals`` at its first N samples (smoke runs); null: no cap
    curve: CurveConfig = field(default_factory=CurveConfig)  #: some of ``evals`` during the fit too
    #: a sweep arm with fewer seeds than the sweep: a job whose seed is above it runs nothing and leaves no
    #: record (experiment=study's from-scratch arm takes 3 of its 5 seeds); null: every seed
    arm_seeds: Optional[int] = None
    #: a job whose directory already holds a completed run of this very config returns its metrics without
    #: running again: a killed sweep started again continues where it stopped (partial runs: ckpt_path=auto)
    skip_if_done: bool = False
    #: print the memory plan (parameters; bytes per device for weights, gradients, AdamW, activations under
    #: single, DDP and FSDP, with and without activation checkpointing) and exit 0 without loading anything
    plan: bool = False
    #: run even where the plan exceeds the device's memory (by default such a run stops before loading, exit 2)
    plan_force: bool = False
    #: GiB one device holds, for the check; null: the GPU's total memory (nvidia-smi), or on a CPU MemAvailable
    plan_budget_gib: Optional[float] = None
    #: text tokens per example the plan assumes (BOS, prompt, answer, EOS; batches pad to their longest)
    plan_text_tokens: int = 32

    def _validate_transfer(self) -> None:
        if self.transfer_steps < 0:
            fail("transfer_steps", self.transfer_steps, "must be >= 0 (0: no attention transfer)")
        if not self.transfer_steps:
            return
        if self.attn.variant == "vanilla":
            fail("transfer_steps", self.transfer_steps, "needs a differential attention (attn=diff_split, diff_dup or "
                 "diff_v2): attn=vanilla has no new attention to train")
        if self.model.activation_checkpointing:
            fail("transfer_steps", self.transfer_steps, "cannot run with model.activation_checkpointing=true: the "
                 "recomputed forward would not be the transfer's")

    def _validate_curve(self) -> None:
        unknown = sorted(set(self.curve.evals) - set(self.evals))
        if unknown:
            fail("curve.evals", unknown, f"must name evaluations in evals: {', '.join(sorted(self.evals)) or 'none'}")
        if self.curve.steps and not self.evals:
            fail("curve.steps", self.curve.steps, "needs evals to score (e.g. experiment=study)")

    def _validate_rehearsal(self) -> None:
        share, model = self.data.rehearsal, self.model
        if not share:
            return
        if model.source != "zoo" or model.name_or_path:
            fail("data.rehearsal", share, "replays the stage-1 stream the embedded base (model.tiny) was built from: "
                 f"needs model.source=zoo and no model.name_or_path (here source={model.source!r}, "
                 f"name_or_path={model.name_or_path!r}); use data.rehearsal=0")
        if self.data.name != "easy_vqa":
            fail("data.rehearsal", share, f"mixes easy-vqa with the base's stage 1: needs data.name=easy_vqa, "
                 f"not {self.data.name!r}")
        if model.tiny.stage1.steps == 0:
            fail("data.rehearsal", share, "model.tiny.stage1.steps=0: the base has no stage-1 examples to replay")
        if self.data.val_fraction > STAGE1_VAL_FRACTION:
            fail("data.val_fraction", self.data.val_fraction, f"must be <= {STAGE1_VAL_FRACTION} with data.rehearsal "
                 "> 0: stage 1 trained on every other easy-vqa train image, so rehearsal could show validation images")

    def validate(self) -> None:
        for name, evaluation in self.evals.items():
            evaluation.validate(f"evals.{name}")
        if self.eval_limit is not None and self.eval_limit <= 0:
            fail("eval_limit", self.eval_limit, "must be > 0 or null (no cap)")
        self._validate_curve()
        if self.arm_seeds is not None and self.arm_seeds <= 0:
            fail("arm_seeds", self.arm_seeds, "must be > 0 or null (every seed)")
        for f in fields(self):
            value = getattr(self, f.name)
            if is_dataclass(value) and hasattr(value, "validate"):
                value.validate(f.name)
        if self.seed is not None and self.seed < 0:
            fail("seed", self.seed, "must be >= 0 or null")
        self._validate_transfer()
        self._validate_rehearsal()
        if self.table_row is not None and self.table_row < 1:
            fail("table_row", self.table_row, "must be >= 1 or null")
        if self.ckpt_path not in (None, "last", "auto") and not Path(self.ckpt_path).expanduser().is_file():
            fail("ckpt_path", self.ckpt_path, 'must be an existing checkpoint file, "last", "auto" or null')
        if self.ckpt_path == "last" and not (Path(self.output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file():
            fail("ckpt_path", self.ckpt_path, f"no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} in "
                 f"output_dir={self.output_dir!r}: "
                 "resume into the old run's directory (hydra.run.dir=<run dir>), or use ckpt_path=auto")
        if self.ckpt_every_n_steps < 0:
            fail("ckpt_every_n_steps", self.ckpt_every_n_steps, "must be >= 0 (0: at each epoch end instead)")
        choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        if self.plan_budget_gib is not None and self.plan_budget_gib <= 0:
            fail("plan_budget_gib", self.plan_budget_gib, "must be > 0 or null (the device's memory)")
        positive("plan_text_tokens", self.plan_text_tokens)
        groups.check_local_model(self.model)
        if self.model.quantization is not None:
            check_quantized(self)
        if self.trainer.strategy == "fsdp":
            # Lightning's ModelParallelStrategy takes no other precision (its own ValueError, after loading).
            choice("trainer.precision", self.trainer.precision, ("32-true", "bf16-mixed", "bf16-true"))
            if self.evals:  # they run in rank 0 alone, and every forward of a sharded model needs every rank
                fail("evals", sorted(self.evals), "not run under trainer.strategy=fsdp (the model is sharded "
                     "over the ranks): score the saved adapter with evaluate.py")


def check_quantized(cfg: TrainConfig) -> None:
    """A 4-bit base (model.quantization=nf4) holds its linear weights packed, two 4-bit codes a byte: a variant
    that copies a pretrained projection into a new one (diff_dup's Q2/K2, diff_v2's Q2, SigLIP's SwiGLU gate
    from fc1) would copy the packed codes, and the noise that breaks the branches' symmetry cannot be added to
    them; FSDP2 cannot shard packed weights either."""
    key = f"model.quantization={cfg.model.quantization!r}"
    if cfg.attn.name() in ("diff_v2", "diff_dup_separate"):
        fail("attn.variant", cfg.attn.variant, f"copies pretrained q/k projections, which {key} packs in 4 bits; "
             "allowed with it: vanilla, diff_split, diff_dup with attn.dup_mode=shared")
    if cfg.ffn.variant == "swiglu" and "vision" in cfg.ffn.towers:
        fail("ffn.variant", cfg.ffn.variant, f"builds SigLIP's gate from fc1, which {key} packs in 4 bits; "
             "use ffn=mlp or ffn.towers=[text]")
    if cfg.trainer.strategy == "fsdp":
        fail("trainer.strategy", cfg.trainer.strategy, f"FSDP cannot shard the packed weights of {key}: "
             "QLoRA is for one device")
    if importlib.util.find_spec("bitsandbytes") is None:
        fail("model.quantization", cfg.model.quantization, "needs bitsandbytes: pip install -e '.[qlora]'")


EVAL_TASKS = ("vqa", "mmneedle", "pope", "attention", "distractors")


@dataclass
class EvalTaskConfig:
    """What ``evaluate.py`` scores: ``eval=vqa | mmneedle | pope | attention | distractors`` (conf/eval/*.yaml).

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
    #: paper mode: row_and_column (a cell counts only if both are right; chance 25%) | column_only: also report
    #: the paper's released scorer, which graded its diff model on the column alone (chance 50%), labelled as such
    paper_scoring: str = "row_and_column"
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
        choice(f"{key}.task", self.task, EVAL_TASKS)
        choice(f"{key}.convention", self.convention, ("official", "simple"))
        choice(f"{key}.split", self.split, ("train", "validation", "test"))
        choice(f"{key}.source", self.source, ("easy_vqa", "coco"))
        choice(f"{key}.mode", self.mode, ("paper", "official"))
        choice(f"{key}.paper_scoring", self.paper_scoring, ("row_and_column", "column_only"))
        choice(f"{key}.setting", self.setting, ("random", "popular", "adversarial", "all"))
        for name in ("limit", "batch_size", "max_new_tokens", "cell_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                fail(f"{key}.{name}", value, "must be > 0 or null (the default)")
        for name in ("images", "grid", "samples", "probe_images", "probe_objects"):
            positive(f"{key}.{name}", getattr(self, name))
        if self.overlays < 0:
            fail(f"{key}.overlays", self.overlays, "must be >= 0")
        if self.attention_samples < 0:
            fail(f"{key}.attention_samples", self.attention_samples, "must be >= 0")
        for name, low in (("distractor_grids", 1), ("distractor_counts", 0), ("distractor_images", 1)):
            values = getattr(self, name)
            if not values or any(v < low for v in values):
                fail(f"{key}.{name}", values, f"must be a non-empty list of integers >= {low}")
        for kind in self.distractor_kinds:
            choice(f"{key}.distractor_kinds", kind, ("hard", "easy"))
        if not 0.0 <= self.negative_fraction < 1.0:
            fail(f"{key}.negative_fraction", self.negative_fraction, "must be in [0, 1)")
        if self.task in ("mmneedle", "attention") and self.mode == "paper" and (self.images, self.grid) != (1, 2):
            fail(f"{key}.mode", self.mode,
                 "paper mode is M=1, N=2 (eval.images=1 eval.grid=2); use mode=official otherwise")
        if self.task in ("mmneedle", "attention") and self.mode == "paper" and self.samples % 4:
            fail(f"{key}.samples", self.samples, "paper mode balances the 4 cells: must be a multiple of 4")
        if self.source == "coco":
            needed = {"mmneedle": ("coco_captions", "coco_images"), "attention": ("coco_captions", "coco_images"),
                      "pope": ("coco_instances", "coco_images")}.get(self.task, ())
            for name in needed:
                value = getattr(self, name)
                if not value or not Path(value).expanduser().exists():
                    fail(f"{key}.{name}", value, f"source=coco needs an existing path for eval={self.task}")


@dataclass
class EvaluateConfig:
    """``python evaluate.py ckpt=<run dir | adapter dir | base>``."""

    ckpt: str = "base"  #: a train.py run directory, an adapter directory, or "base" (no adapter)
    model: groups.ModelConfig = field(default_factory=groups.ModelConfig)
    data: groups.DataConfig = field(default_factory=groups.DataConfig)
    eval: EvalTaskConfig = field(default_factory=EvalTaskConfig)
    logger: groups.LoggerConfig = field(default_factory=groups.LoggerConfig)
    seed: Optional[int] = 0
    device: str = "auto"  #: auto | cpu | cuda
    output_dir: str = "."

    def validate(self) -> None:
        self.model.validate("model")
        self.data.validate("data")
        self.eval.validate("eval")
        self.logger.validate("logger")
        choice("device", self.device, ("auto", "cpu", "cuda"))
        groups.check_local_model(self.model)
        if self.ckpt != "base" and not Path(self.ckpt).expanduser().exists():
            fail("ckpt", self.ckpt, 'must be a run directory, an adapter directory, or "base"')


def smoke_or(scale_name: str, at_smoke: Any, otherwise: Any) -> Any:
    """``${smoke_or:${scale_name},8,1000}``: a value an experiment takes at ``scale=cpu_smoke``, and at every
    other scale (experiment=scratch's base recipe, the study's distractor sets: tiny in a smoke run)."""
    return at_smoke if scale_name == "cpu_smoke" else otherwise


# Registered with the schemas, at import: whatever composes an experiment (train.py, the config checks, tests)
# can resolve it.
OmegaConf.register_new_resolver("smoke_or", smoke_or, replace=True)


def register_configs() -> None:
    """Register the schemas so that Hydra type-checks every group against them."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    for name, settings in ATTN_SETTINGS.items():  # conf/attn/<name>.yaml starts from <name>_schema
        cs.store(group="attn", name=f"{name}{SCHEMA_SUFFIX}", node=settings)


def to_typed(cfg: DictConfig, schema: type = TrainConfig):
    """Convert a composed config to its dataclass and run every value check.

    Raises :class:`ConfigError` (naming key, value and rule, in one line) before anything heavy happens.
    An ``attn`` node that no option typed (a plain dict) gets its variant's settings type here.
    """
    try:
        if "attn" in cfg and OmegaConf.get_type(cfg, "attn") in (dict, AttnSettings):
            cfg = cfg.copy()
            plain = OmegaConf.to_container(cfg.attn, resolve=True)
            settings = attn_settings(plain)  # an unknown variant or knob: a ConfigError of its own
            try:
                cfg.attn = OmegaConf.structured(settings)
            except Exception as err:  # a value of the wrong type, checked in the attn node alone
                raise one_line(err, prefix="attn") from err
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        obj = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf's type and key errors, in the project's one line
        raise one_line(err) from err
    if type(getattr(obj, "attn", None)) is AttnSettings:  # no attn given at all: the vanilla option's settings
        obj.attn = attn_settings(asdict(obj.attn))
    obj.validate()
    if isinstance(obj, TrainConfig):  # a base pretrained with a variant keeps it; a conflicting attn= is refused
        obj.attn = resolve_base_attention(obj.model, obj.attn)
    return obj


"""The memory plan: its parameter counts equal those of the model train.py builds (real classes, the
project's variants and LoRA), plan=true prints without loading, and a run over its budget stops at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffpali.config import AttnSettings, FfnConfig, LoraConfig, ModelConfig, settings_for
from diffpali.config.architectures import ARCHITECTURES
from diffpali.plan.counts import VariantSpec, count_params
from diffpali.plan.memory import Shape, activations
from diffpali.plan.report import architecture_of, variant_spec

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "disabled",
                                                                          "OMP_NUM_THREADS": "1"}
VARIANTS = {
    "vanilla": settings_for("vanilla"),
    "diff_split": settings_for("diff_split"),
    "diff_dup_separate": settings_for("diff_dup_separate"),
    "diff_dup_shared": settings_for("diff_dup_shared", head_norm=False),
    "diff_v2": settings_for("diff_v2"),
}


def built_counts(arch, attn: AttnSettings, ffn: FfnConfig, lora: LoraConfig) -> tuple[int, int]:
    """(trainable, total) of the real model: transformers' classes on the meta device (no memory), then
    the project's apply_variants and wrap_lora, as train.py builds it."""
    from diffpali.model import apply_variants, wrap_lora
    from diffpali.zoo.architecture import build_random

    extra = {} if arch.text.vocab_size > 257_152 else {"image_token_index": arch.text.vocab_size - 1}
    model = build_random(arch, device="meta", **extra)
    saved = apply_variants(model, attn, ffn)
    return wrap_lora(model, lora, saved).get_nb_trainable_parameters()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", ["paligemma_3b_224", "paligemma2_3b_224"])
def test_plan_counts_equal_the_built_model(name, variant):
    arch = ARCHITECTURES[name].at_depth(2)  # full widths; two layers per tower show the per-layer counts
    attn, ffn = VARIANTS[variant], FfnConfig(variant="swiglu" if variant == "diff_v2" else "mlp")
    lora = LoraConfig(rank=8, towers=["vision", "text"], train_projector=variant == "diff_split")
    try:
        trainable, total = built_counts(arch, attn, ffn, lora)
    except NotImplementedError as err:  # a variant the installed attention code does not support on Gemma 2 yet
        pytest.skip(str(err))
    planned = count_params(arch, variant_spec(SimpleNamespace(attn=attn, ffn=ffn, lora=lora)))
    assert (planned.trainable, planned.total) == (trainable, total)


def test_plan_counts_the_tiny_zoo_model_from_its_spec():
    arch = architecture_of(ModelConfig())
    attn, ffn, lora = VARIANTS["diff_dup_separate"], FfnConfig(), LoraConfig(towers=["text"])
    trainable, total = built_counts(arch, attn, ffn, lora)
    planned = count_params(arch, variant_spec(SimpleNamespace(attn=attn, ffn=ffn, lora=lora)))
    assert (planned.trainable, planned.total) == (trainable, total)


def test_eager_maps_double_with_two_maps_per_head_and_grow_with_the_square_of_the_sequence():
    arch = ARCHITECTURES["paligemma2_3b_224"]
    shape = Shape(batch=1, text_tokens=32, eager_text=True)
    sdpa = Shape(batch=1, text_tokens=32, eager_text=False)

    def maps(spec: VariantSpec, a=arch) -> float:
        return activations(a, spec, shape).text - activations(a, spec, sdpa).text

    vanilla, shared = maps(VariantSpec()), maps(VariantSpec(attn="diff_dup", dup_mode="shared"))
    assert vanilla > 0 and shared == vanilla
    assert maps(VariantSpec(attn="diff_v2")) == pytest.approx(2 * vanilla)
    assert maps(VariantSpec(attn="diff_split")) == pytest.approx(2 * vanilla)
    big = ARCHITECTURES["paligemma2_3b_896"]  # 4,096 image tokens instead of 256
    assert maps(VariantSpec(), big) == pytest.approx(vanilla * ((4096 + 32) / (256 + 32)) ** 2)


def test_plan_force_lets_an_over_budget_run_through():
    from hydra import compose, initialize_config_dir

    from diffpali.config import ConfigError, TrainConfig, register_configs, to_typed
    from diffpali.plan.report import check_memory

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_typed(compose(config_name="train", overrides=["output_dir=.", "model=paligemma_3b_224",
                                                                "model.source=random", "plan_budget_gib=1"]),
                       TrainConfig)
    with pytest.raises(ConfigError, match="memory plan"):
        check_memory(cfg)
    cfg.plan_force = True
    check_memory(cfg)


def train(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *overrides, "logger=none", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_plan_true_prints_the_plan_and_loads_nothing(tmp_path):
    # source=pretrained from the Hub: any attempt to load would fail here (no hub), so exit 0 proves none
    proc = train("model=paligemma2_3b_224", "plan=true", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parameters: total 3,061,704,432, trainable 29,462,016" in proc.stdout
    for row in ("single (1 device)", "ddp (1 device)", "fsdp (1 shard)", "total with act. ckpt"):
        assert row in proc.stdout
    assert not (tmp_path / "adapter").exists()
    assert not (tmp_path / "job.json").exists(), "a plan is not a run: no run record"


def test_a_run_over_its_memory_budget_stops_before_loading_with_one_line(tmp_path):
    proc = train("model=paligemma_3b_224", "model.source=random", "plan_budget_gib=2", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and "Traceback" not in proc.stderr
    assert last[0].startswith("config error: memory plan: ") and "> 2.0 GiB (plan_budget_gib)" in last[0]
    assert "plan_force=true" in last[0]

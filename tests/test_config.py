"""Hydra composition against the dataclass schemas: good configs compose, bad ones fail early and clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from diffpali.config import ConfigError, EvaluateConfig, TrainConfig, register_configs, to_typed

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_train(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_default_composes_to_the_embedded_default():
    cfg = to_typed(compose_train("output_dir=."), TrainConfig)
    assert (cfg.model.source, cfg.data.name, cfg.attn.variant, cfg.ffn.variant) == ("zoo", "easy_vqa", "vanilla", "mlp")
    assert cfg.lora.towers == ["vision", "text"] and cfg.lora.alpha == 2 * cfg.lora.rank
    assert cfg.seed == 0 and cfg.trainer.precision == "32-true"


def test_real_model_group_points_at_the_hub_checkpoint():
    cfg = to_typed(compose_train("output_dir=.", "model=paligemma_3b_224", "trainer=gpu"), TrainConfig)
    assert cfg.model.name_or_path == "google/paligemma-3b-pt-224"
    assert cfg.model.source == "pretrained" and not cfg.model.trust_remote_code
    assert cfg.trainer.precision == "bf16-mixed"


def test_misspelt_key_fails_at_composition_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_train("lora.rnak=8")
    assert "Key 'rnak' not in 'LoraConfig'" in str(info.value.__cause__)


def test_unknown_group_option_lists_what_is_available():
    with pytest.raises(Exception) as info:
        compose_train("attn=nope")
    assert "attn/nope" in str(info.value) and "vanilla" in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rank=0", "lora.rank=0: must be > 0"),
        ("attn.variant=diff", "attn.variant='diff': must be one of diff_dup, diff_split, diff_v2, vanilla"),
        ("attn.lambda_init=1.5", "attn.lambda_init=1.5: must be in [0, 1)"),
        ("optim.lr=-1", "optim.lr=-1.0: must be > 0"),
        ("lora.towers=[audio]", "lora.towers='audio': must be one of vision, text"),
        ("data.prompt=hello", "data.prompt='hello': must contain the placeholder {question}"),
        ("trainer.precision=bf16-mixed", "trainer.precision='bf16-mixed': use 32-true with accelerator=cpu"),
    ],
)
def test_bad_values_fail_before_any_model_loads(override, message):
    cfg = compose_train("output_dir=.", override)
    with pytest.raises(ConfigError) as info:
        to_typed(cfg, TrainConfig)
    assert str(info.value) == message


def test_wrongly_typed_value_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as info:
        compose_train("trainer.max_epochs=abc")
    assert "max_epochs" in str(info.value.__cause__)


def test_evaluate_config_rejects_missing_checkpoint(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["output_dir=.", f"ckpt={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="ckpt=.*must be a run directory"):
        to_typed(cfg, EvaluateConfig)


def test_sweep_over_lora_rank_gives_one_job_per_value():
    """The overrides of `-m lora.rank=16,32` compose into two configs with those ranks."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["lora.rank=16,32"])
    values = list(parsed[0].sweep_iterator())
    ranks = [to_typed(compose_train("output_dir=.", f"lora.rank={v}"), TrainConfig).lora.rank for v in values]
    assert ranks == [16, 32]


def test_the_repository_ships_the_base_of_the_default_spec():
    """A changed default spec without a rebuilt base would silently trigger a slow build for every user."""
    import json

    from diffpali.config import TinySpec
    from diffpali.paths import SHIPPED_TINY_DIR
    from diffpali.zoo.tiny import spec_key

    info = json.loads((SHIPPED_TINY_DIR / "build_info.json").read_text())
    assert info["key"] == spec_key(TinySpec())
    assert (SHIPPED_TINY_DIR / "model.safetensors").is_file() and (SHIPPED_TINY_DIR / "tokenizer.json").is_file()
    vqa = info["benchmarks"]["vqa_test"]  # recorded by the same command that built it (python -m diffpali.basecard)
    assert vqa["scores"]["test/vqa_accuracy_official"] > vqa["question_only_baseline"]["overall"]
    assert {"mmneedle_paper_2x2", "mmneedle_official_m1_n2", "pope", "attention_paper_2x2"} <= set(info["benchmarks"])

"""Hydra composition against the dataclass schemas: good configs compose, bad ones fail early and clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import compose_train
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from diffpali.config import (
    ATTN_SETTINGS,
    ConfigError,
    DiffDupSettings,
    EvaluateConfig,
    TrainConfig,
    check_command_line,
    describe,
    register_configs,
    settings_from_record,
    to_typed,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


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
        ("attn=diff_dup attn.lambda_init=1.5", "attn.lambda_init=1.5: must be in [0, 1)"),
        ("attn=diff_v2 attn.v2_lambda_init=half", "attn.v2_lambda_init='half': must be one of exact, plain"),
        ("optim.lr=-1", "optim.lr=-1.0: must be > 0"),
        ("lora.towers=[audio]", "lora.towers='audio': must be one of vision, text"),
        ("data.prompt=hello", "data.prompt='hello': must contain the placeholder {question}"),
        ("trainer.precision=bf16-mixed", "trainer.precision='bf16-mixed': use 32-true with accelerator=cpu"),
        ("model=tiny_paligemma2 model.quantization=nf4",
         "model.quantization='nf4': applies when weights load (source=pretrained or zoo), not to source=random"),
    ],
)
def test_bad_values_fail_before_any_model_loads(override, message):
    cfg = compose_train("output_dir=.", *override.split())
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


def one_line_exit(capsys, *argv: str) -> str:
    """The config check of ``python train.py <argv>``: exit status 2 and one line on stderr."""
    register_configs()
    with pytest.raises(SystemExit) as info:
        check_command_line(Path(CONF), "train", list(argv))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["attn=diff_v2", "attn.head_norm=false"],
     "attn.head_norm='false': attn=diff_v2 has no such knob; its knobs: towers, branch_noise, v2_lambda_init, "
     "lambda_warmup_steps"),
    (["lora.rank=abc"], "lora.rank='abc': must be int"),
    (["attn=nonexist"], "attn='nonexist': must be one of diff_dup, diff_split, diff_v2, vanilla"),
    (["-m", "attn=diff_dup,diff_split", "attn.dup_mode=shared"],  # every swept option is checked
     "attn.dup_mode='shared': attn=diff_split has no such knob; its knobs: towers, head_norm, lambda_schedule, "
     "lambda_init, layer_index_base, lambda_std, lambda_pairs, lambda_warmup_steps"),
    (["lora.rnak=8"], "lora.rnak='8': no such key; LoraConfig has rank, alpha, dropout, towers, text_targets, "
     "vision_targets, train_projector"),
])
def test_every_config_error_is_one_line_with_exit_status_2(capsys, argv, message):
    assert one_line_exit(capsys, *argv) == f"config error: {message}"


def test_the_users_commands_pass_the_check_with_the_default_dup_mode():
    register_configs()
    check_command_line(Path(CONF), "train", ["attn=diff_dup", "ffn=swiglu"])  # no exit
    cfg = to_typed(compose_train("output_dir=.", "attn=diff_dup", "ffn=swiglu"), TrainConfig)
    assert type(cfg.attn) is DiffDupSettings and cfg.attn.dup_mode == "separate" and cfg.attn.name() == \
        "diff_dup_separate"


def test_each_option_of_the_attn_group_is_typed_by_its_own_settings():
    register_configs()
    for option, settings in ATTN_SETTINGS.items():
        cfg = to_typed(compose_train("output_dir=.", f"attn={option}"), TrainConfig)
        assert type(cfg.attn) is settings and cfg.attn.variant == option


def test_an_old_flat_run_record_still_loads_as_its_variant():
    """Records from before per-variant settings held every attn field; the variant's own are kept."""
    flat = {"variant": "diff_v2", "dup_mode": "separate", "towers": ["text"], "head_norm": True,
            "lambda_schedule": "layer", "lambda_init": 0.8, "layer_index_base": 1, "lambda_std": 0.1,
            "lambda_pairs": "independent", "branch_noise": 0.01, "v2_lambda_init": "plain"}
    settings = settings_from_record(flat)
    assert asdict(settings) == {"variant": "diff_v2", "towers": ["text"], "branch_noise": 0.01,
                                "v2_lambda_init": "plain", "lambda_warmup_steps": 0}  # a later knob: its default
    assert describe({**flat, "variant": "diff_dup", "dup_mode": "shared"}).label == "yes (dup, shared)"
    assert describe({"variant": "diff_dup"}).tags == ("attn=diff_dup", "dup_mode=separate")


def test_config_checks_and_the_report_load_no_torch(tmp_path):
    """Composing and validating train, evaluate and report configs never imports torch; nor does a report
    of a run recorded with the old flat attn fields."""
    job = tmp_path / "sweep" / "0_row2"
    job.mkdir(parents=True)
    flat = {"variant": "diff_dup", "dup_mode": "separate", "head_norm": True, "v2_lambda_init": "exact"}
    (job / "job.json").write_text(json.dumps({"status": "completed", "overrides": ["+experiment/table1=row2"],
                                              "config": {"table_row": 2, "seed": 1, "attn": flat,
                                                         "ffn": {"variant": "swiglu"}, "lora": {"rank": 32}}}))
    (job / "metrics.json").write_text(json.dumps({"seed": 1, "test/vqa_accuracy_official": 0.5}))
    code = f"""
import sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from diffpali.config import EvaluateConfig, TrainConfig, check_command_line, register_configs, to_typed
from diffpali.report.__main__ import main  # the report: every section, its figures and labels
register_configs()
check_command_line(Path({CONF!r}), "train", ["attn=diff_v2", "ffn=swiglu"])
with initialize_config_dir(config_dir={CONF!r}, version_base="1.3"):
    for attn in ("vanilla", "diff_split", "diff_dup", "diff_v2"):
        to_typed(compose("train", overrides=["output_dir=.", f"attn={{attn}}", "experiment=study",
                                             "+experiment/study=vanilla", "scale=cpu_smoke"]), TrainConfig)
    to_typed(compose("evaluate", overrides=["output_dir=.", "eval=attention"]), EvaluateConfig)
assert main(["{tmp_path / 'sweep'}", "--out", "{tmp_path / 'report'}"]) == 0
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert "yes (dup, separate)" in (tmp_path / "report" / "table1.md").read_text()


def test_a_plain_attn_dict_is_checked_like_a_composed_one():
    from omegaconf import OmegaConf

    assert type(to_typed(OmegaConf.create({"output_dir": "."}), TrainConfig).attn).__name__ == "VanillaSettings"
    for attn, message in [({"variant": "diff_dup", "lambda_init": "abc"}, "attn.lambda_init='abc': must be float"),
                          ({"variant": "diff_v2", "lambda_std": 0.0},
                           "attn.lambda_std=0.0: attn=diff_v2 has no such knob; its knobs: towers, branch_noise, "
                           "v2_lambda_init, lambda_warmup_steps"),
                          ({"variant": "diff"}, "attn.variant='diff': must be one of diff_dup, diff_split, diff_v2, "
                           "vanilla")]:
        with pytest.raises(ConfigError) as info:
            to_typed(OmegaConf.create({"output_dir": ".", "attn": attn}), TrainConfig)
        assert str(info.value) == message


def test_a_job_completed_before_per_variant_settings_is_still_found_done(tmp_path):
    """skip_if_done reads the old flat attn record as its variant's settings: a resumed sweep keeps its jobs."""
    from diffpali.jobs import finished_run

    typed = to_typed(compose_train("output_dir=.", "attn=diff_dup"), TrainConfig)
    config = json.loads(json.dumps(asdict(typed)))
    config["attn"] = {**config["attn"], "v2_lambda_init": "exact"}  # a field every old record carried
    (tmp_path / "job.json").write_text(json.dumps({"status": "completed", "config": config}))
    (tmp_path / "metrics.json").write_text(json.dumps({"test/vqa_accuracy_official": 0.5}))
    assert finished_run(tmp_path, typed) == {"test/vqa_accuracy_official": 0.5}
    config["attn"]["lambda_init"] = 0.5  # a knob the variant reads, changed: not the same job
    (tmp_path / "job.json").write_text(json.dumps({"status": "completed", "config": config}))
    assert finished_run(tmp_path, typed) is None

"""A base pretrained with a differential attention from its first step: keys, initialisation, every tensor trained,
saved and reloaded; batches drawn in DataLoader workers give the same weights; the command line's attn overrides."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PaliGemmaProcessor

from diffpali.branches import BranchedProjection
from diffpali.config import ConfigError, ModelConfig, TinySpec
from diffpali.paths import SHIPPED_TINY_DIR
from diffpali.zoo.build import apply_overrides, build_base, build_stages, init_modules, spec_from_command_line
from diffpali.zoo.probes import lambda_probe_batch
from diffpali.zoo.tiny import spec_key, stage0_key
from diffpali.zoo.variant_base import load_variant_base

ROOT = Path(__file__).resolve().parents[1]
TINY = ["vision.hidden_size=16", "vision.intermediate_size=32", "vision.num_hidden_layers=1", "vision.image_size=32",
        "text.hidden_size=16", "text.intermediate_size=32", "text.num_hidden_layers=1", "text.head_dim=8",
        "text.vocab_size=300", "stage0.steps=6", "stage0.batch_size=4", "stage1.steps=6", "stage1.batch_size=4",
        "stage1.opening_steps=2", "stage1.match_layer=1"]
QUIET = {"progress": False, "probe_every": 0}
VARIANTS = {"diff_split": ["attn=diff_split"], "diff_v2": ["attn=diff_v2", "attn.v2_lambda_init=plain"]}


def test_the_vanilla_key_is_unchanged_and_every_variant_has_its_own():
    vanilla = TinySpec()
    assert spec_key(vanilla) == "8ca0ff5dc5ac" == json.loads((SHIPPED_TINY_DIR / "build_info.json").read_text())["key"]
    assert spec_key(apply_overrides(vanilla, ["attn=vanilla"])) == spec_key(vanilla)
    keys = {name: spec_key(apply_overrides(vanilla, overrides)) for name, overrides in VARIANTS.items()}
    keys["v2_exact"] = spec_key(apply_overrides(vanilla, ["attn=diff_v2"]))
    keys["split_vision"] = spec_key(apply_overrides(vanilla, ["attn=diff_split", "attn.towers=[vision]"]))
    assert len(set(keys.values()) | {spec_key(vanilla)}) == len(keys) + 1


def test_a_decoder_only_variant_shares_stage_zero_with_vanilla_exactly():
    vanilla = apply_overrides(TinySpec(), TINY)
    decoder_only = apply_overrides(vanilla, ["attn=diff_split", "attn.towers=[text]"])
    both = apply_overrides(vanilla, ["attn=diff_split"])
    assert stage0_key(decoder_only) == stage0_key(vanilla) != stage0_key(both)
    assert spec_key(decoder_only) != spec_key(vanilla)
    processor = PaliGemmaProcessor.from_pretrained(SHIPPED_TINY_DIR)
    plain, converted = init_modules(vanilla, processor), init_modules(decoder_only, processor)
    # what stage 0 trains (the tower and its heads) starts from the same tensors, so its checkpoint serves both
    for a, b in ((plain[0].model.vision_tower, converted[0].model.vision_tower), (plain[1], converted[1])):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_bad_attn_record_fails_before_a_model_loads():
    with pytest.raises(ConfigError, match=r"^model\.tiny\.attn\.lambda_init=0\.5: attn=diff_v2 has no such knob"):
        ModelConfig(tiny=TinySpec(attn={"variant": "diff_v2", "lambda_init": 0.5})).validate()
    with pytest.raises(ConfigError, match=r"^model\.tiny\.attn\.towers=\[\]: must name at least one"):
        ModelConfig(tiny=TinySpec(attn={"variant": "diff_split", "towers": []})).validate()


def test_attn_overrides_make_a_whole_record_and_the_rest_stay_typed():
    spec = apply_overrides(TinySpec(), ["attn=diff_v2", "attn.v2_lambda_init=plain", "attn.towers=[vision]", "seed=1"])
    assert spec.attn == {"variant": "diff_v2", "towers": ["vision"], "branch_noise": 1e-3, "v2_lambda_init": "plain",
                         "lambda_warmup_steps": 0}
    assert spec.seed == 1 and spec.attention().name() == "diff_v2"
    with pytest.raises(SystemExit, match=r"^error: attn='diff_nope': must be one of diff_dup, diff_split, diff_v2, "
                                         r"vanilla$"):
        spec_from_command_line(["attn=diff_nope"])


def test_an_unknown_knob_on_the_command_line_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffpali.zoo.build", "--out", str(tmp_path / "out"),
                           "--set", "attn=diff_v2", "--set", "attn.head_norm=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    assert proc.stderr.strip() == ("error: attn.head_norm=False: attn=diff_v2 has no such knob; its knobs: "
                                   "towers, branch_noise, v2_lambda_init, lambda_warmup_steps")


def _final_model(spec: TinySpec, out: Path, work: Path):
    """The model at step 0 of ``spec``'s build and at its end (stage 1's last checkpoint), and its processor."""
    processor = PaliGemmaProcessor.from_pretrained(out)
    start = init_modules(spec, processor)[0]
    end = init_modules(spec, processor)[0]
    end.load_state_dict(torch.load(work / "stage1.pt", weights_only=True)["modules"]["model"])
    return start, end.eval(), processor


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_variant_base_trains_every_tensor_and_reloads_exactly(variant, tmp_path):
    spec = apply_overrides(TinySpec(), TINY + VARIANTS[variant])
    info = build_base(spec, tmp_path / "base", work_dir=tmp_path / "work", **QUIET)
    start, end, processor = _final_model(spec, tmp_path / "base", tmp_path / "work")

    branches = [m for m in start.modules() if isinstance(m, BranchedProjection)]
    assert len(branches) == (2 if variant == "diff_v2" else 0) and all(  # v2: one query per tower
        (m.branch2.weight - m.branch1.weight).norm() > 0.5 * m.branch1.weight.norm() for m in branches)
    unchanged = [n for n, p in start.named_parameters() if torch.equal(p, dict(end.named_parameters())[n])]
    assert not unchanged, f"never trained: {unchanged}"
    assert any("diff_lambda" in n for n, _ in start.named_parameters())

    loaded, settings = load_variant_base(tmp_path / "base")
    assert settings.name() == variant
    assert info["attn"] == json.loads((tmp_path / "base" / "base_attention.json").read_text())
    reference, reloaded = end.state_dict(), loaded.state_dict()
    assert reference.keys() == reloaded.keys() and all(torch.equal(reference[k], reloaded[k]) for k in reference)
    batch = lambda_probe_batch(spec, processor, size=2)
    inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert torch.equal(end(**inputs).logits, loaded(**inputs).logits)

    layers = {"text/layer0", "vision/layer0"}
    assert layers <= set(info["lambda"]["start"]) and layers <= set(info["lambda"]["end"])
    assert (variant == "diff_v2") == ("text/layer0/std" in info["lambda"]["end"])
    assert info["lambda"]["start"] != info["lambda"]["end"]


def test_workers_draw_the_batches_the_training_process_would(tmp_path):
    spec = apply_overrides(TinySpec(), TINY)
    processor = PaliGemmaProcessor.from_pretrained(SHIPPED_TINY_DIR)
    for stage in build_stages(spec, processor, *init_modules(spec, processor)[:3], tmp_path, "cpu"):
        source = pickle.loads(pickle.dumps(stage.batches))  # what a spawned worker would get
        assert all(torch.equal(a, b) for a, b in zip(source(3).values(), stage.batches(3).values()))
    weights = {}
    for workers in (0, 2):
        info = build_base(spec, tmp_path / f"w{workers}", work_dir=tmp_path / f"work{workers}", workers=workers,
                          **QUIET)
        assert info["data_workers"] == workers
        weights[workers] = (tmp_path / f"w{workers}" / "model.safetensors").read_bytes()
    assert weights[0] == weights[2]
    assert load_file(tmp_path / "w2" / "model.safetensors").keys()  # a whole vanilla base, not an empty file


def test_a_base_build_refuses_a_lambda_warm_up():
    from diffpali.config import ConfigError, TinySpec

    spec = TinySpec(attn={"variant": "diff_dup", "lambda_warmup_steps": 100})
    with pytest.raises(ConfigError, match="lambda_warmup_steps=100: must be 0 in a base pretrained from scratch"):
        spec.attention("model.tiny.attn")

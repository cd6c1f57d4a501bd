"""A tiny base pretrained with a differential attention: its key, its build (every weight trains, second branches
drawn independently), its files, and how train.py and evaluate.py load it with its own attention."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffpali.branches import BranchedProjection
from diffpali.config import ConfigError, FfnConfig, ModelConfig, TinySpec, settings_for
from diffpali.config.bases import resolve_base_attention
from diffpali.files import UnreadableFileError
from diffpali.model import apply_variants, load_base
from diffpali.paths import VARIANT_MODEL_FILE
from diffpali.zoo.build import apply_overrides, build_base
from diffpali.zoo.tiny import spec_key, stage0_key

SHIPPED_KEY = "8ca0ff5dc5ac"  #: the shipped base's key, which no change of the spec's schema may move
RECIPE = ["stage0.steps=3", "stage0.batch_size=8", "stage1.steps=3", "stage1.batch_size=4", "stage1.opening_steps=1"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, tuple[Path, TinySpec]]:
    """Three-step builds of diff_split and diff_v2 (the authors' plain lambda), and their directories."""
    root = tmp_path_factory.mktemp("bases")
    built = {}
    for name, overrides in (("diff_split", ["attn=diff_split"]),
                            ("diff_v2", ["attn=diff_v2", "attn.v2_lambda_init=plain"])):
        spec = apply_overrides(TinySpec(), overrides + RECIPE)
        build_base(spec, root / name, "cpu", root / f"{name}-work", progress=False, probe_every=0)
        built[name] = (root / name, spec)
    return built


def test_a_vanilla_spec_keeps_its_key_and_a_variant_gets_its_own():
    assert spec_key(TinySpec()) == SHIPPED_KEY
    split = apply_overrides(TinySpec(), ["attn=diff_split"])
    v2 = apply_overrides(TinySpec(), ["attn=diff_v2"])
    assert len({spec_key(TinySpec()), spec_key(split), spec_key(v2)}) == 3
    # a knob at its default names the same base as leaving it out; another value, another base
    assert spec_key(apply_overrides(TinySpec(), ["attn=diff_split", "attn.head_norm=true"])) == spec_key(split)
    assert spec_key(apply_overrides(TinySpec(), ["attn=diff_split", "attn.head_norm=false"])) != spec_key(split)


def test_a_decoder_only_variant_shares_stage_zero_with_vanilla_and_a_vision_one_does_not():
    text_only = apply_overrides(TinySpec(), ["attn=diff_split", "attn.towers=[text]"])
    vision = apply_overrides(TinySpec(), ["attn=diff_split", "attn.towers=[vision]"])
    assert stage0_key(text_only) == stage0_key(TinySpec()) != stage0_key(vision)


def test_an_unknown_attention_or_knob_in_a_build_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"model\.tiny\.attn\.variant='diff_nope': must be one of"):
        apply_overrides(TinySpec(), ["attn=diff_nope"])
    with pytest.raises(ConfigError, match="attn=diff_split has no such knob"):
        apply_overrides(TinySpec(), ["attn=diff_split", "attn.v2_lambda_init=plain"])


def test_a_built_base_reloads_with_its_attention_to_the_same_logits(bases):
    for name, (directory, _) in bases.items():
        model, processor = load_base(ModelConfig(source="zoo", name_or_path=str(directory)))
        converted = [m for m in model.modules() if getattr(m, "diffpali_variant", None) is not None]
        assert len(converted) == 5 and {m.diffpali_variant.name for m in converted} == {name}
        again, _ = load_base(ModelConfig(source="pretrained", name_or_path=str(directory)))
        inputs = processor(text="<image>caption en", images=torch.zeros(3, 128, 128), return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, again(**inputs).logits)
        assert torch.equal(model.model.language_model.layers[0].self_attn.o_proj.weight,
                           again.model.language_model.layers[0].self_attn.o_proj.weight)


def test_every_weight_trained_and_second_branches_are_drawn_not_copied(bases, tmp_path):
    directory, spec = bases["diff_v2"]
    trained, _ = load_base(ModelConfig(source="zoo", name_or_path=str(directory)))
    untrained_spec = replace(spec, stage0=replace(spec.stage0, steps=0), stage1=replace(spec.stage1, steps=0))
    build_base(untrained_spec, tmp_path / "init", "cpu", tmp_path / "work", progress=False, probe_every=0)
    initial, _ = load_base(ModelConfig(source="zoo", name_or_path=str(tmp_path / "init")))
    start = dict(initial.named_parameters())
    unchanged = [n for n, p in trained.named_parameters() if torch.equal(p, start[n])]
    # stage 0 trains the tower, stage 1 everything else; only the unused pooling head and the image-token row
    # of the embedding may stay as they were
    assert all("embed_tokens" in n or "head" in n for n in unchanged), unchanged
    assert any("diff_lambda" in n for n in start)
    for module in initial.modules():
        if isinstance(module, BranchedProjection):
            first, second = module.branch1.weight, module.branch2.weight
            assert (first - second).norm() > 0.5 * first.norm()  # independent draws, not a near-copy


def test_the_base_record_holds_lambda_at_both_ends_of_pretraining(bases):
    directory, _ = bases["diff_split"]
    info = json.loads((directory / "build_info.json").read_text())
    assert info["attn"]["variant"] == "diff_split"
    assert set(info["lambda"]["start"]) == set(info["lambda"]["end"]) >= {"text/layer0", "vision/layer1"}
    assert info["lambda"]["start"] != info["lambda"]["end"]


def test_a_run_keeps_the_base_attention_and_refuses_another(bases):
    directory, _ = bases["diff_v2"]
    model = ModelConfig(source="zoo", name_or_path=str(directory))
    kept = resolve_base_attention(model, settings_for("vanilla"))
    assert kept.name() == "diff_v2" and kept.v2_lambda_init == "plain"
    assert resolve_base_attention(model, kept) == kept
    with pytest.raises(ConfigError, match=r"attn='diff_split': the base .* was pretrained with attn=diff_v2"):
        resolve_base_attention(model, settings_for("diff_split"))
    with pytest.raises(ConfigError, match="pretrained with attn=diff_v2"):  # the same variant, other knobs
        resolve_base_attention(model, settings_for("diff_v2"))


def test_applying_the_base_attention_again_converts_nothing(bases):
    directory, _ = bases["diff_split"]
    model, _ = load_base(ModelConfig(source="zoo", name_or_path=str(directory)))
    settings = resolve_base_attention(ModelConfig(source="zoo", name_or_path=str(directory)), settings_for("vanilla"))
    before = {n: p.clone() for n, p in model.named_parameters()}
    saved = apply_variants(model, settings, FfnConfig())
    assert "diff_lambda" in saved and "diff_norm" in saved
    assert {n for n, _ in model.named_parameters()} == set(before)


def test_a_damaged_weights_file_is_named(bases, tmp_path):
    directory, _ = bases["diff_split"]
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    weights = copy / VARIANT_MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UnreadableFileError, match=VARIANT_MODEL_FILE):
        load_base(ModelConfig(source="zoo", name_or_path=str(copy)))

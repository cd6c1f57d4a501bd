"""A tiny base pretrained with a differential attention, as train.py and evaluate.py load it: with its own attention,
to the same logits; a run keeps that attention and refuses another; a damaged weights file is named. (The build
itself: tests/test_variant_build.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffpali.config import ConfigError, FfnConfig, ModelConfig, TinySpec, settings_for
from diffpali.config.bases import resolve_base_attention
from diffpali.files import UnreadableFileError
from diffpali.model import apply_variants, load_base, resolve_tiny_base
from diffpali.paths import VARIANT_MODEL_FILE
from diffpali.zoo.build import apply_overrides, build_base
from diffpali.zoo.tiny import stage0_key

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


def test_a_decoder_only_variant_resumes_the_cached_stage_zero_of_vanilla(tmp_path):
    vanilla = apply_overrides(TinySpec(), RECIPE)
    text_only = apply_overrides(vanilla, ["attn=diff_split", "attn.towers=[text]"])
    first = resolve_tiny_base(vanilla, str(tmp_path))
    shared = tmp_path / "tiny" / ".stage0" / f"{stage0_key(vanilla)}.pt"
    written = shared.stat().st_mtime_ns
    second = resolve_tiny_base(text_only, str(tmp_path))
    assert shared.stat().st_mtime_ns == written  # resumed at its end, not trained again
    towers = [load_base(ModelConfig(source="zoo", name_or_path=str(d)))[0].model.vision_tower for d in (first, second)]
    assert all(torch.equal(a, b) for a, b in zip(*(t.state_dict().values() for t in towers)))

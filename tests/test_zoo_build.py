"""The tiny base's recipe: the stage-1 mixture is balanced, right and held out; the build resumes exactly."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from diffpali.config import TinySpec
from diffpali.data import easy_vqa
from diffpali.data.grids import NEEDLE_PROMPT
from diffpali.scenes import COLORS, SHAPES
from diffpali.zoo import stages
from diffpali.zoo.build import apply_overrides, build_base
from diffpali.zoo.mixture import Stage1Mixture, is_negated, loc_tokens, template_of
from diffpali.zoo.tiny import spec_key


def mixture(**weights: float) -> Stage1Mixture:
    return Stage1Mixture(weights, seed=0, steps=100, image_size=128, tokens_per_side=8)


def examples(source: Stage1Mixture, count: int, step: int = 90) -> list[dict]:
    return [source.example(step + k // 8, k % 8) for k in range(count)]


@pytest.mark.parametrize("task", ["vqa", "vqa_drawn"])
def test_yes_and_no_are_equally_likely_within_every_template(task):
    """easy-vqa's yes/no templates are ~88% "no"; balanced, the question alone cannot tell the answer."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for example in examples(mixture(**{task: 1.0}), 2400):
        if example["suffix"] in ("yes", "no"):
            counts[template_of(example["prefix"])][example["suffix"]] += 1
    assert len(counts) == 16  # every yes/no template is asked
    for template, answers in counts.items():
        share = answers["yes"] / sum(answers.values())
        assert 0.3 < share < 0.7, f"{template}: {dict(answers)}"


def test_drawn_answers_agree_with_the_scene():
    """Each drawn question answered from the scene's labels by rules written out here."""
    for example in examples(mixture(vqa_drawn=1.0), 400):
        (obj,) = example["scene"].objects
        question = example["prefix"].removeprefix("answer en ")
        named_colors = [c for c in COLORS if f" {c} " in f" {question} "]
        named_shapes = [s for s in SHAPES if f" {s}" in f" {question}".replace("?", " ")]
        if question.startswith("what"):
            expected = obj.color if ("what color" in question or "color of" in question) else obj.shape
        else:
            holds = all(c == obj.color for c in named_colors) and all(s == obj.shape for s in named_shapes)
            negated = " not " in question or question.startswith("is no ")
            expected = "yes" if holds != negated else "no"
        assert example["suffix"] == expected, (question, obj)


def test_no_test_or_validation_image_enters_the_mixture():
    train_ids = set(easy_vqa.split_image_ids("train"))
    used = {int(e["source"].rsplit("/", 1)[1]) for e in examples(mixture(vqa=1.0), 800)}
    assert used and used <= train_ids
    assert not used & set(easy_vqa.split_image_ids("validation"))


def test_the_stream_is_a_function_of_seed_step_and_index():
    first, again = mixture(needle=1.0, detect=1.0), mixture(needle=1.0, detect=1.0)
    a, b = first.example(37, 3), again.example(37, 3)
    assert (a["prefix"], a["suffix"], a["match"]) == (b["prefix"], b["suffix"], b["match"])
    assert a["image"].tobytes() == b["image"].tobytes()
    other = Stage1Mixture({"needle": 1.0, "detect": 1.0}, seed=1, steps=100, image_size=128, tokens_per_side=8)
    assert other.example(37, 3)["image"].tobytes() != a["image"].tobytes()


def test_match_marks_the_tokens_of_the_named_objects_cell():
    seen = Counter()
    for example in examples(mixture(needle=1.0), 200):
        scene, marked = example["scene"], example["match"]
        if example["suffix"] == "-1":
            assert sum(marked) == 0
            caption = example["prefix"].rsplit("Caption: ", 1)[1]
            assert caption not in {o.caption for o in scene.objects}
            seen["negative"] += 1
            continue
        index, row, col = (int(v) for v in example["suffix"].split(", "))
        cells = scene.token_cells(8)
        assert index == 1 and [c == (row - 1, col - 1) for c in cells] == [m == 1.0 for m in marked]
        assert scene.object_in((row - 1, col - 1)).caption == example["prefix"].rsplit("Caption: ", 1)[1]
        caption = scene.object_in((row - 1, col - 1)).caption
        assert example["prefix"] == "answer en " + NEEDLE_PROMPT.format(M=1, N=scene.grid, caption=caption)
        seen["positive"] += 1
    assert min(seen.values()) > 50


def test_detect_targets_use_paligemma_loc_bins():
    assert loc_tokens((0, 0, 128, 128), 128) == "<loc0000><loc0000><loc1023><loc1023>"
    assert loc_tokens((32, 64, 96, 128), 128) == "<loc0512><loc0256><loc1023><loc0767>"  # y0 x0 y1 x1
    example = examples(mixture(detect=1.0), 1)[0]
    assert example["prefix"].startswith("detect ") and example["suffix"].endswith(example["prefix"][len("detect "):])


def test_templates_and_negation():
    assert template_of("is there not a red circle?") == "is there not a {color} {shape}?"
    assert is_negated("is no {shape} present?") and not is_negated("is a {shape} present?")


def tiny_spec(steps0: int = 3, steps1: int = 6) -> TinySpec:
    return apply_overrides(TinySpec(), [
        "vision.hidden_size=16", "vision.intermediate_size=32", "vision.num_hidden_layers=1", "vision.image_size=32",
        "text.hidden_size=16", "text.intermediate_size=32", "text.num_hidden_layers=1", "text.head_dim=8",
        "text.vocab_size=300", f"stage0.steps={steps0}", "stage0.batch_size=4", f"stage1.steps={steps1}",
        "stage1.batch_size=4", "stage1.match_layer=1"])


QUIET = {"progress": False, "probe_every": 0}


def test_a_killed_build_resumes_to_exactly_the_uninterrupted_weights(tmp_path, monkeypatch):
    spec = tiny_spec()
    build_base(spec, tmp_path / "whole", work_dir=tmp_path / "whole-work", **QUIET, checkpoint_every=2)
    calls = {"n": 0}
    real_loss = stages.stage1_loss

    def dies_at_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr("diffpali.zoo.build.stage1_loss", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        build_base(spec, tmp_path / "resumed", work_dir=tmp_path / "work", **QUIET, checkpoint_every=2)
    monkeypatch.setattr("diffpali.zoo.build.stage1_loss", real_loss)
    assert torch.load(tmp_path / "work" / "stage1.pt", weights_only=True)["step"] == 4
    build_base(spec, tmp_path / "resumed", work_dir=tmp_path / "work", **QUIET, checkpoint_every=2)
    whole, resumed = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "resumed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    info = json.loads((tmp_path / "resumed" / "build_info.json").read_text())
    assert info["key"] == spec_key(spec) and info["stage1"]["steps"] == 6


def test_an_unreadable_build_checkpoint_is_named(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "stage0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"stage0\.pt: unreadable build checkpoint .* delete it"):
        build_base(tiny_spec(), tmp_path / "out", work_dir=tmp_path / "work", progress=False, probe_every=0)


def test_every_field_of_the_spec_is_in_its_key():
    spec = TinySpec()
    assert spec_key(replace(spec, seed=1)) != spec_key(spec)
    assert spec_key(apply_overrides(spec, ["stage1.weights.detect=0.3"])) != spec_key(spec)
    assert spec_key(apply_overrides(spec, ["stage0.lr=0.001"])) != spec_key(spec)
    # attn: a vanilla record hashes as before the field existed; a differential one with every knob
    split = apply_overrides(spec, ["attn=diff_split"])
    assert spec_key(apply_overrides(spec, ["attn=vanilla", "attn.towers=[text]"])) == spec_key(spec) != spec_key(split)
    assert spec_key(apply_overrides(split, ["attn.lambda_std=0.05"])) != spec_key(split)
    assert spec_key(apply_overrides(split, ["attn.towers=[text]"])) != spec_key(split)


@pytest.mark.parametrize("task", ["vqa", "vqa_drawn"])
def test_a_yes_no_question_marks_the_image_when_the_named_object_is_there(task):
    for example in examples(mixture(**{task: 1.0}), 300):
        if example["suffix"] not in ("yes", "no"):
            assert example["match"] is None
            continue
        template = template_of(example["prefix"].removeprefix("answer en "))
        named_is_there = (example["suffix"] == "yes") != is_negated(template)
        assert example["match"] == [float(named_is_there)] * 64


def test_a_checkpoint_of_another_spec_is_refused_but_stage_zero_is_shared(tmp_path):
    spec = tiny_spec()
    build_base(spec, tmp_path / "a", work_dir=tmp_path / "work", progress=False, probe_every=0)
    other_stage1 = apply_overrides(spec, ["stage1.lr=0.001"])
    with pytest.raises(RuntimeError, match=r"stage1\.pt: a checkpoint of stage 1 for another spec"):
        build_base(other_stage1, tmp_path / "b", work_dir=tmp_path / "work", progress=False, probe_every=0)
    (tmp_path / "work" / "stage1.pt").unlink()  # stage 0 is the same for both specs: it is reused
    written = (tmp_path / "work" / "stage0.pt").stat().st_mtime_ns
    build_base(other_stage1, tmp_path / "b", work_dir=tmp_path / "work", progress=False, probe_every=0)
    assert (tmp_path / "work" / "stage0.pt").stat().st_mtime_ns == written  # resumed at its end, not retrained
    assert (tmp_path / "b" / "model.safetensors").is_file()

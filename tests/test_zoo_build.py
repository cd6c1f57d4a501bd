"""The tiny base's build: stage 1 is reused only from a build of the very same spec."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from diffpali.config import TinySpec
from diffpali.zoo.build import build_base
from diffpali.zoo.tiny import spec_key


def test_a_one_stage_spec_keeps_its_key_and_stage_two_changes_it():
    one_stage = TinySpec()
    assert one_stage.mixture_steps == 0
    assert spec_key(replace(one_stage, mixture_lr=5e-4)) == spec_key(one_stage)  # unused without stage 2
    assert spec_key(replace(one_stage, mixture_steps=10)) != spec_key(one_stage)
    assert spec_key(replace(one_stage, mixture_steps=10, mixture_lr=5e-4)) != spec_key(replace(one_stage, mixture_steps=10))


def test_stage_one_from_another_spec_is_refused(tmp_path):
    other = replace(TinySpec(), pretrain_steps=7)
    (tmp_path / "build_info.json").write_text(json.dumps({"key": "x", "spec": asdict(other)}))
    with pytest.raises(ValueError, match="which is not stage 1 of"):
        build_base(replace(TinySpec(), mixture_steps=5), tmp_path / "out", stage1_from=tmp_path)

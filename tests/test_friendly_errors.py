"""A damaged adapter, checkpoint or base model stops train.py / evaluate.py with one line that names
the file and says what to do next; the traceback only with HYDRA_FULL_ERROR=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from diffpali.config import FfnConfig, LoraConfig, ModelConfig, VanillaSettings
from diffpali.files import UnreadableFileError
from diffpali.model import load_base, save_adapter, wrap_lora
from diffpali.paths import SHIPPED_TINY_DIR

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "disabled",
                                                                          "OMP_NUM_THREADS": "1"}


def run(script: str, *overrides: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *overrides, "logger=none"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def assert_one_line(proc: subprocess.CompletedProcess, path: Path, remedy: str) -> str:
    """Exit status 1, no traceback, and a last line naming the file, what is wrong and what to do."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"UnreadableFileError: {path} cannot be read: truncated or corrupt ("), last
    assert remedy in last, last
    assert (proc.stdout + proc.stderr).count("cannot be read") == 1  # said once, not again in a log line
    return last


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A LoRA adapter of the shipped base, saved as train.py saves it."""
    model, _ = load_base(ModelConfig())
    lora = LoraConfig(rank=4, alpha=8)
    model = wrap_lora(model, lora)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    save_adapter(model, out, {"model": asdict(ModelConfig()), "attn": asdict(VanillaSettings()),
                              "ffn": asdict(FfnConfig()), "lora": asdict(lora)})
    return out


@pytest.mark.slow
def test_a_truncated_adapter_is_named_with_what_to_do(adapter_dir, tmp_path):
    damaged = tmp_path / "adapter"
    shutil.copytree(adapter_dir, damaged)
    truncate(damaged / "adapter_model.safetensors")
    proc = run("evaluate.py", f"ckpt={damaged}", "eval.limit=4", f"hydra.run.dir={tmp_path / 'eval'}")
    assert_one_line(proc, damaged / "adapter_model.safetensors",
                    "Copy the adapter folder again from where it was trained")
    assert json.loads((tmp_path / "eval" / "failed.json").read_text())["error_type"] == "UnreadableFileError"


@pytest.mark.slow
def test_a_truncated_last_checkpoint_is_named_with_what_to_do_and_the_traceback_is_there_on_request(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 4, "state_dict": {"w": torch.zeros(256)}}, last)
    truncate(last)  # as a copy cut short leaves it (diffpali itself writes checkpoints atomically)
    proc = run("train.py", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(proc, last, "Restore it from a copy, or start the run afresh without resuming (ckpt_path=null")
    assert "trainable of" not in (tmp_path / "run" / "train.log").read_text()  # refused before the model loaded

    full = run("train.py", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}", env=ENV | {"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1
    assert "Traceback (most recent call last)" in full.stderr and "UnreadableFileError" in full.stderr


@pytest.mark.slow
def test_a_corrupt_local_base_model_is_named_with_what_to_do(tmp_path):
    base = tmp_path / "base"
    shutil.copytree(SHIPPED_TINY_DIR, base)
    truncate(base / "model.safetensors", keep=0.9)
    proc = run("evaluate.py", "ckpt=base", "model.source=pretrained", f"model.name_or_path={base}", "eval.limit=4",
               f"hydra.run.dir={tmp_path / 'eval'}")
    assert_one_line(proc, base / "model.safetensors", f"Copy or download the model into {base} again")


def test_a_corrupt_cached_or_shipped_tiny_base_says_how_to_restore_it(tmp_path):
    from helpers import small_spec

    from diffpali.zoo.tiny import spec_key

    spec = small_spec()  # not the shipped spec: resolved from the cache
    cached = tmp_path / "tiny" / spec_key(spec)
    shutil.copytree(SHIPPED_TINY_DIR, cached)
    info = json.loads((cached / "build_info.json").read_text())
    (cached / "build_info.json").write_text(json.dumps({**info, "key": spec_key(spec)}))
    (cached / "tokenizer.json").write_text((cached / "tokenizer.json").read_text()[:1000])
    with pytest.raises(UnreadableFileError) as caught:
        load_base(ModelConfig(tiny=spec, cache_dir=str(tmp_path)))
    assert caught.value.path == cached / "tokenizer.json"
    assert str(caught.value).endswith(f"It is a cached tiny base: delete {cached} and it is rebuilt on next use")

    from diffpali.model import base_remedy

    assert "git checkout -- diffpali/zoo/tiny_paligemma" in base_remedy(SHIPPED_TINY_DIR)

"""model.source=random (a real architecture with random weights and a processor of its shape) and the
synthetic VQAv2 directory read by the real data loader; train.py on the tiny PaliGemma 2 for every variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from diffpali.config import ModelConfig
from diffpali.config.architectures import ARCHITECTURES, PALIGEMMA_TOKENIZER_SIZE
from diffpali.data.synthetic_vqav2 import FEATURES, split_file, write_synthetic_vqav2
from diffpali.data.vqav2 import load_vqav2
from diffpali.model import load_base
from diffpali.paths import METRICS_FILE
from diffpali.zoo.architecture import paligemma_config
from diffpali.zoo.random_base import processor_dir, random_processor

ROOT = Path(__file__).resolve().parents[1]


def test_full_size_processor_has_the_checkpoints_vocabulary_ids_and_image_shape(tmp_path):
    arch = ARCHITECTURES["paligemma2_3b_448"]
    processor = random_processor(arch, str(tmp_path))
    tokenizer = processor.tokenizer
    assert len(tokenizer) == PALIGEMMA_TOKENIZER_SIZE + 1  # + <image>
    assert processor.image_token_id == paligemma_config(arch).image_token_index == 257_152
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<loc0000>", "<loc1023>", "<seg127>"]) == [
        0, 1, 2, 256_000, 257_023, 257_151]
    assert processor.image_processor.size == {"height": 448, "width": 448}
    assert processor.image_seq_length == arch.vision.image_tokens == 1024
    assert tokenizer.decode(tokenizer("answer en red?", add_special_tokens=False).input_ids) == "answer en red?"
    cached = processor_dir(arch, str(tmp_path))
    stamp = (cached / "tokenizer.json").stat().st_mtime_ns
    assert len(random_processor(arch, str(tmp_path)).tokenizer) == len(tokenizer)
    assert (cached / "tokenizer.json").stat().st_mtime_ns == stamp  # read from the cache, not rebuilt


def test_random_source_builds_the_architecture_seeded_in_its_dtype_at_its_depth():
    cfg = ModelConfig(name="tiny_paligemma2", source="random", architecture="tiny_paligemma2", dtype="bfloat16")
    model, processor = load_base(cfg)
    again, _ = load_base(cfg)
    config, arch = model.config, ARCHITECTURES["tiny_paligemma2"]
    assert config.image_token_index == processor.image_token_id
    assert config.text_config.vocab_size == len(processor.tokenizer)
    assert config.text_config.attn_logit_softcapping == 50.0 and config.text_config.sliding_window == 8
    assert config.text_config.num_hidden_layers == arch.text.num_hidden_layers
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    cut, _ = load_base(ModelConfig(source="random", architecture="tiny_paligemma2", depth=1))
    assert cut.config.text_config.num_hidden_layers == cut.config.vision_config.num_hidden_layers == 1
    assert {p.dtype for p in cut.parameters()} == {torch.float32}


def test_synthetic_vqav2_has_the_hubs_layout_and_the_real_loader_reads_it(tmp_path):
    write_synthetic_vqav2(tmp_path, image_size=56, records_per_split=7)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == [
        "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"]
    schema = pq.read_schema(split_file(tmp_path, "train"))
    assert schema.names == list(FEATURES)
    assert str(schema.field("answers").type) == (
        "list<element: struct<answer: string, answer_confidence: string, answer_id: int64>>")
    train = load_vqav2(str(tmp_path), "train")
    assert len(train) == 7 and len(load_vqav2(str(tmp_path), "validation")) == 7
    record = train[0]
    assert len(record["answers"]) == 10 and record["question"].endswith("?")
    assert record["image"].size == (56, 56)  # drawn at the model's image size
    ids = set(train["image_id"])
    assert 1 < len(ids) < 7  # several questions per image, as in VQAv2 (minival keeps them together)
    assert set(load_vqav2(str(tmp_path), "minival", minival_fraction=0.5)["image_id"]) < ids


@pytest.mark.slow
def test_train_py_runs_the_tiny_paligemma2_with_every_variant(tmp_path):
    common = ["model=tiny_paligemma2", "logger=none", "trainer.max_steps=2", "trainer.limit_val_batches=0",
              "trainer.enable_progress_bar=false", "data.train_limit=4", "data.batch_size=2", "data.test_limit=2",
              "data.eval_batch_size=2", "data.max_new_tokens=2"]
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    sweeps = [["--multirun", "attn=vanilla,diff_split,diff_v2,diff_dup", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
              ["attn=diff_dup", "attn.dup_mode=shared", f"hydra.run.dir={tmp_path / 'sweep' / 'shared'}"]]
    for overrides in sweeps:
        flags = [o for o in overrides if o.startswith("--")]  # before the overrides, or argparse refuses them
        rest = [o for o in overrides if o not in flags]
        proc = subprocess.run([sys.executable, "train.py", *flags, *common, *rest], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob(f"*/{METRICS_FILE}"))
    assert len(runs) == 5
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["train_steps"] == 2 and metrics["skipped_steps"] == 0, path
        assert "test/vqa_accuracy_official" in metrics, path

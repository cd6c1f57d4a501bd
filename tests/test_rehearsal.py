"""data.rehearsal: easy-vqa train mixed with the embedded base's own stage-1 examples, in a set share."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import compose_train
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from transformers import PaliGemmaProcessor

from diffpali import runner
from diffpali.checkpointing import AtomicCheckpointIO, RNGState
from diffpali.config import (
    ConfigError,
    DataConfig,
    EvalTaskConfig,
    EvaluateConfig,
    TinySpec,
    to_typed,
)
from diffpali.data import easy_vqa
from diffpali.data.collate import VQAExamples
from diffpali.data.datamodule import VQADataModule, load_split
from diffpali.data.grids import NEEDLE_PROMPT
from diffpali.evals.base import samples_dir
from diffpali.evals.distractors import sets as distractor_sets
from diffpali.evals.distractors.task import setting_points
from diffpali.evals.mmneedle.task import haystack_set, needle_questions
from diffpali.evals.pope.task import probe_set
from diffpali.paths import LAST_CHECKPOINT, SHIPPED_TINY_DIR
from diffpali.zoo.build import build_stages, init_modules
from diffpali.zoo.rehearsal import RehearsalExamples, rehearsal_address
from diffpali.zoo.stages import TokenCache

ROOT = Path(__file__).resolve().parents[1]
TRAIN = 480  #: easy-vqa train records of the small mixes
SPEC = TinySpec()  #: the shipped base's spec: the stream it was built from


def pixels_key(image: Image.Image) -> str:
    array = np.asarray(image.convert("RGB"))
    return hashlib.sha1(str(array.shape).encode() + array.tobytes()).hexdigest()


def file_key(path: str | Path) -> str:
    with Image.open(path) as opened:
        return pixels_key(opened)


@pytest.fixture(scope="module")
def processor():
    return PaliGemmaProcessor.from_pretrained(SHIPPED_TINY_DIR)


@pytest.fixture(scope="module")
def easy_train():
    cfg = DataConfig(train_limit=TRAIN, check_images=False)
    return VQAExamples(load_split(cfg, "train", TRAIN), cfg.prompt, "easy_vqa", "train")


# ------------------------------------------------------------------- (a) the share
@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_the_dataset_holds_the_configured_share_of_replayed_examples(easy_train, share):
    mixed = RehearsalExamples(easy_train, SPEC, share)
    assert len(mixed) == round(TRAIN / (1 - share))
    assert abs(mixed.replayed / len(mixed) - share) <= 1 / len(mixed)
    assert not mixed[0]["rehearsal"] and not mixed[TRAIN - 1]["rehearsal"]
    assert mixed[TRAIN]["rehearsal"] and mixed[len(mixed) - 1]["rehearsal"]
    assert mixed[0]["question_id"] == easy_train[0]["question_id"]


def test_the_first_shuffled_batches_hold_the_share_and_resume_refuses_another(easy_train, processor):
    cfg = DataConfig(train_limit=TRAIN, val_limit=8, test_limit=8, check_images=False, batch_size=32, rehearsal=0.5)
    datamodule = VQADataModule(cfg, processor, seed=0)
    datamodule.setup("fit")
    datamodule.datasets["train"] = RehearsalExamples(datamodule.datasets["train"], SPEC, cfg.rehearsal)  # as the runner
    flags = []
    for step, batch in enumerate(datamodule.train_dataloader()):
        flags += [m["rehearsal"] for m in batch["meta"]]
        assert batch["input_ids"].shape[0] == 32 and "labels" in batch
        if step == 9:
            break
    # 320 draws at p = 0.5: the standard error is 0.028, so 0.1 is more than 3.5 of them
    assert abs(sum(flags) / len(flags) - 0.5) < 0.1, sum(flags)
    state = {"epoch": 0, "batches_done": 3, "seed": 0, "train_size": 960, "world_size": 1, "batch_size": 32,
             "rehearsal": 0.5}
    datamodule.load_state_dict(state)
    assert datamodule._resume == (0, 96)
    with pytest.raises(ValueError, match="rehearsal: checkpoint 0.25, this run 0.5"):
        datamodule.load_state_dict({**state, "rehearsal": 0.25})


# ------------------------------------------------------------------- (b) no evaluation item enters
def evaluation_pairs(processor, cache: Path) -> set[tuple[str, str]]:
    """(image key, prompt) of every question the evaluations ask, at small sizes, built by their own builders."""
    pairs = set()
    for mode in ("paper", "official"):
        cfg = EvaluateConfig(eval=EvalTaskConfig(task="mmneedle", mode=mode, samples=40, cache_dir=str(cache)))
        stacks = haystack_set(cfg, processor)
        for haystack in stacks.haystacks:
            key = "+".join(pixels_key(image) for image in stacks.images(haystack))
            pairs |= {(key, prompt) for _, prompt, _ in needle_questions(cfg, haystack)}
    cfg = EvaluateConfig(eval=EvalTaskConfig(task="pope", probe_images=60, cache_dir=str(cache)))
    for probes in probe_set(cfg).probes.values():
        pairs |= {(file_key(p.path), cfg.data.prompt.format(question=p.question)) for p in probes}
    cfg = EvaluateConfig(eval=EvalTaskConfig(task="distractors", samples=6, cache_dir=str(cache)))
    for point in setting_points(cfg):
        spec = distractor_sets.DistractorSetSpec(point, cfg.eval.samples, cfg.eval.negative_fraction,
                                                 cfg.eval.haystack_seed, SPEC.vision.image_size)
        stacks = distractor_sets.load_or_build(spec, samples_dir(cfg, "distractors"))
        for haystack in stacks.haystacks:
            question = NEEDLE_PROMPT.format(M=point.images, N=point.grid, caption=haystack.caption)
            key = "+".join(pixels_key(image) for image in stacks.images(haystack))
            pairs.add((key, cfg.data.prompt.format(question=question)))
    return pairs


def test_no_evaluation_item_is_replayed(processor, tmp_path):
    cfg = DataConfig(check_images=False)
    everything = VQAExamples(load_split(cfg, "train", None), cfg.prompt, "easy_vqa", "train")
    mixed = RehearsalExamples(everything, SPEC, 0.9)  # 9 replayed per easy-vqa example: most of stage 1
    stride = mixed.replayed // 400
    replayed = [mixed[len(everything) + k * stride] for k in range(400)]
    tasks = Counter(item["task"] for item in replayed)
    assert {"where", "needle", "detect", "vqa", "exist"} <= set(tasks), tasks

    held_out = [easy_vqa.image_path("test", i) for i in easy_vqa.split_image_ids("test")]
    held_out += [easy_vqa.image_path("validation", i) for i in easy_vqa.split_image_ids("validation", cfg.val_fraction)]
    held_out_keys = {file_key(path) for path in held_out}
    assert len(held_out_keys) > 1000
    keys = [pixels_key(item["image"]) for item in replayed]
    assert not set(keys) & held_out_keys
    train_ids = set(easy_vqa.split_image_ids("train", cfg.val_fraction))
    sources = [item["source"] for item in replayed if item["task"] == "vqa"]
    assert sources and all(int(s.rsplit("/", 1)[1]) in train_ids for s in sources)

    evaluation = evaluation_pairs(processor, tmp_path)
    ours = {(key, item["prefix"]) for key, item in zip(keys, replayed)}
    # The benchmarks' wordings are rehearsed (where = MMNeedle's paper mode): only the images tell them apart.
    assert {prompt for _, prompt in ours} & {prompt for _, prompt in evaluation}
    assert not ours & evaluation


# ------------------------------------------------------------------- (c) the build's own examples
def test_replayed_examples_are_the_ones_the_build_trained_on_at_their_step(easy_train, processor, tmp_path):
    stage1 = SPEC.stage1
    assert rehearsal_address(0, SPEC) == (stage1.steps - 1, 0)
    assert rehearsal_address(stage1.batch_size + 5, SPEC) == (stage1.steps - 2, 5)
    span = (stage1.steps - stage1.opening_steps) * stage1.batch_size
    assert rehearsal_address(span, SPEC) == (stage1.steps - 1, 0)  # wraps before the caption-heavy opening
    assert rehearsal_address(span - 1, SPEC) == (stage1.opening_steps, stage1.batch_size - 1)

    model, heads, match_head, _ = init_modules(SPEC, processor)
    batches = build_stages(SPEC, processor, model, heads, match_head, tmp_path, "cpu")[1].batches
    mixed = RehearsalExamples(easy_train, SPEC, 0.5)
    tokens, seen = TokenCache(processor), {}
    for j in (0, 31, 33, 200, mixed.replayed - 1):
        step, index = rehearsal_address(j, SPEC)
        item = mixed[len(easy_train) + j]
        assert item["question_id"] == f"stage1/{step}/{index}"
        batch = seen.setdefault(step, batches(step))
        ids, types = tokens(item["prefix"], item["suffix"])
        assert batch["input_ids"][index, : len(ids)].tolist() == ids
        assert batch["token_type_ids"][index, : len(ids)].tolist() == types
        assert int(batch["attention_mask"][index].sum()) == len(ids)
        pixels = processor.image_processor([item["image"]], return_tensors="pt")["pixel_values"][0]
        assert torch.equal(pixels, batch["pixel_values"][index])


# ------------------------------------------------------------------- (d) config errors
@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_share_outside_zero_to_one_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=rf"data\.rehearsal={value}: must be in \[0, 1\)"):
        to_typed(compose_train("output_dir=.", "data=rehearsal", f"data.rehearsal={value}"))


def test_rehearsal_is_refused_without_the_embedded_base_or_with_a_wider_validation_split():
    cfg = to_typed(compose_train("output_dir=.", "data=rehearsal"))
    assert (cfg.data.name, cfg.data.rehearsal) == ("easy_vqa", 0.5)
    with pytest.raises(ConfigError, match=r"data\.rehearsal=0\.5: .*model\.tiny.*name_or_path='google/paligemma"):
        to_typed(compose_train("output_dir=.", "data=rehearsal", "model=paligemma_3b_224", "trainer=gpu"))
    with pytest.raises(ConfigError, match=r"data\.val_fraction=0\.2: must be <= 0\.1 with data\.rehearsal"):
        to_typed(compose_train("output_dir=.", "data=rehearsal", "data.val_fraction=0.2"))


def test_train_py_refuses_a_share_of_one_before_anything_loads(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=rehearsal", "data.rehearsal=1.0",
                           "logger=none", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.rehearsal=1.0: must be in [0, 1)" in proc.stderr + proc.stdout
    assert not (tmp_path / "adapter").exists()


# ------------------------------------------------------------------- (e) a real short run
class Died(RuntimeError):
    pass


class BatchRecorder(L.Callback):
    """Each training batch's question ids and kinds and its loss; optionally a death before a given step."""

    def __init__(self, die_before_step: int | None = None) -> None:
        self.ids: list[list[str]] = []
        self.kinds: list[list[bool]] = []
        self.losses: list[float] = []
        self.die_before_step = die_before_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.die_before_step:
            raise Died(f"killed before step {trainer.global_step}")
        self.ids.append([str(m["question_id"]) for m in batch["meta"]])
        self.kinds.append([m["rehearsal"] for m in batch["meta"]])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def short_fit(out: Path, recorder: BatchRecorder, steps: int = 6, resume: Path | None = None) -> L.Trainer:
    """``steps`` Lightning steps of a data=rehearsal run prepared by the runner, checkpointed every step."""
    cfg = to_typed(compose_train("data=rehearsal", "data.train_limit=48", "data.val_limit=8", "data.test_limit=8",
                                 "data.batch_size=8", "data.check_images=false", "logger=none",
                                 "test_after_fit=false", f"output_dir={out}"))
    run = runner.prepare(cfg, "rehearsal")
    train = run.datamodule.datasets["train"]
    assert isinstance(train, RehearsalExamples) and len(train) == 96
    assert not isinstance(run.datamodule.datasets["validation"], RehearsalExamples)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        use_distributed_sampler=False, default_root_dir=out, plugins=[AtomicCheckpointIO()],
                        callbacks=[ModelCheckpoint(dirpath=out / "ckpt", save_last=True, save_top_k=0,
                                                   every_n_train_steps=1), RNGState(), recorder])
    trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume, weights_only=True)
    return trainer


def test_a_short_lightning_run_with_rehearsal_trains_on_both_kinds_and_resumes_in_order(tmp_path):
    recorder = BatchRecorder()
    trainer = short_fit(tmp_path / "whole", recorder)
    assert trainer.global_step == 6
    assert all(math.isfinite(loss) for loss in recorder.losses) and len(recorder.losses) == 6
    flags = [flag for kinds in recorder.kinds for flag in kinds]
    assert any(flags) and not all(flags)
    assert any(any(kinds) and not all(kinds) for kinds in recorder.kinds)  # mixed within a batch, not only across

    killed = BatchRecorder(die_before_step=3)
    with pytest.raises(Died):
        short_fit(tmp_path / "killed", killed)
    resumed = BatchRecorder()
    short_fit(tmp_path / "killed", resumed, resume=tmp_path / "killed" / "ckpt" / LAST_CHECKPOINT)
    assert killed.ids + resumed.ids == recorder.ids, "data order differs after resuming"

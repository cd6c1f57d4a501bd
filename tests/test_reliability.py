"""Reliability (docs/design.md, "Reliability guarantees"): exact resume, atomic checkpoints, bad data, bad config,
non-finite loss, safe loading. Real tiny PaliGemma, real peft, real Lightning Trainer, real easy-vqa.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image

from diffpali.checkpointing import (
    AtomicCheckpointIO,
    CheckpointMismatchError,
    RNGState,
    check_checkpoint,
    read_checkpoint,
    remove_partial_writes,
    run_signature,
)
from diffpali.config import (
    DataConfig,
    DiffDupSettings,
    DiffV2Settings,
    FfnConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    VanillaSettings,
)
from diffpali.data.datamodule import VQADataModule
from diffpali.data.schema import BadRecordError, check_records
from diffpali.lightning_module import DiffPaliModule
from diffpali.model import apply_variants, wrap_lora
from diffpali.nonfinite import NonFiniteError
from diffpali.paths import LAST_CHECKPOINT
from diffpali.surgery import lambda_values

ATTN = DiffDupSettings()
LORA = LoraConfig(rank=4, alpha=8, dropout=0.1)  # dropout: the resumed run must restore the RNG too
SIGNATURE = run_signature(ModelConfig(), ATTN, FfnConfig(), LORA)


class Died(RuntimeError):
    """Stands in for a kill: the process state after it is thrown away."""


class Recorder(Callback):
    """Question ids of every training batch, and an optional death before a given step."""

    def __init__(self, die_before_step: int | None = None) -> None:
        self.ids: list[list[int]] = []
        self.die_before_step = die_before_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.die_before_step:
            raise Died(f"killed before step {trainer.global_step}")
        self.ids.append([m["question_id"] for m in batch["meta"]])


def _data(tiny_processor, **overrides: Any) -> VQADataModule:
    cfg = DataConfig(**{"train_limit": 20, "val_limit": 4, "test_limit": 4, "batch_size": 4, **overrides})
    datamodule = VQADataModule(cfg, tiny_processor, seed=0)
    datamodule.setup("fit")
    return datamodule


def _module(tiny_processor, config, init_seed: int, **kwargs: Any) -> DiffPaliModule:
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)  # the base: the same in every run, as if loaded from disk
    torch.manual_seed(init_seed)  # what the run adds (Q2/K2 copies, lambda, LoRA) must come from the checkpoint
    model = wrap_lora(model, LORA, apply_variants(model, ATTN, FfnConfig())).train()
    return DiffPaliModule(model, tiny_processor, OptimConfig(lr=5e-3, warmup_steps=2), signature=SIGNATURE, **kwargs)


def _fit(module, datamodule, ckpt_dir: Path, recorder: Recorder, max_epochs: int = 2, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=ckpt_dir.parent,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=1),
                   RNGState(), recorder],
        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer


def _state(module: DiffPaliModule, trainer: L.Trainer) -> dict[str, Any]:
    return {
        "params": {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad},
        "optimizer": trainer.optimizers[0].state_dict()["state"],
        "lambda": lambda_values(module.model),
        "step": trainer.global_step,
    }


@pytest.fixture(scope="module")
def tiny_config(tiny_processor):
    from helpers import small_spec

    from diffpali.zoo.tiny import build_config

    return build_config(small_spec(layers=1), tiny_processor)


# ---------------------------------------------------------------------------------------- resume
def test_a_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_run(tiny_processor, tiny_config, tmp_path):
    # 20 records, batch 4: 5 steps per epoch, 10 in all; the kill comes in the middle of epoch 2.
    whole = Recorder()
    module = _module(tiny_processor, tiny_config, init_seed=0)
    expected = _state(module, _fit(module, _data(tiny_processor), tmp_path / "a", whole))
    assert expected["step"] == 10

    killed = Recorder(die_before_step=7)
    with pytest.raises(Died):
        _fit(_module(tiny_processor, tiny_config, init_seed=0), _data(tiny_processor), tmp_path / "b", killed)
    assert torch.load(tmp_path / "b" / LAST_CHECKPOINT, weights_only=True)["global_step"] == 7

    resumed = Recorder()
    module = _module(tiny_processor, tiny_config, init_seed=123)  # other init: everything must come from the checkpoint
    last = tmp_path / "b" / LAST_CHECKPOINT
    got = _state(module, _fit(module, _data(tiny_processor), tmp_path / "b", resumed, ckpt_path=last))

    assert killed.ids + resumed.ids == whole.ids, "data order differs after resuming"
    assert got["step"] == expected["step"] and got["lambda"] == expected["lambda"]
    for name, tensor in expected["params"].items():
        assert torch.equal(got["params"][name], tensor), name
    assert expected["optimizer"].keys() == got["optimizer"].keys()
    for key, state in expected["optimizer"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[field], got["optimizer"][key][field]), (key, field)


def test_a_checkpoint_from_before_per_variant_settings_still_matches_its_run():
    """Old checkpoints recorded every attn field flat; a knob the run's variant lacks is not compared."""
    from diffpali.checkpointing import signature_differences

    current = run_signature(ModelConfig(), DiffV2Settings(), FfnConfig(), LoraConfig())
    old = {**current, "attn.head_norm": True, "attn.dup_mode": "separate", "attn.lambda_init": 0.8}
    assert signature_differences(old, current) == []
    assert signature_differences({**old, "attn.branch_noise": 0.0}, current) == [
        "attn.branch_noise: checkpoint 0.0, this run 0.001"]


def test_a_checkpoint_for_another_model_is_refused_naming_the_fields(tiny_processor, tiny_config, tmp_path):
    module = _module(tiny_processor, tiny_config, init_seed=0)
    _fit(module, _data(tiny_processor, train_limit=4), tmp_path / "c", Recorder(), max_epochs=1)
    other = run_signature(ModelConfig(), VanillaSettings(), FfnConfig(), LoraConfig(rank=8, alpha=16))
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint(tmp_path / "c" / LAST_CHECKPOINT, other)
    message = str(info.value)
    assert "attn.variant: checkpoint 'diff_dup', this run 'vanilla'" in message
    assert "lora.rank: checkpoint 4, this run 8" in message
    assert "lora.alpha: checkpoint 8, this run 16" in message
    assert "towers" not in message and "dropout" not in message  # only fields that differ and shape the model
    check_checkpoint(tmp_path / "c" / LAST_CHECKPOINT, SIGNATURE)  # the matching config loads


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / LAST_CHECKPOINT
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:  # torch.save fails partway through writing, as a kill or a full disk would
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000), "x": Unpicklable()}, path)
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == [LAST_CHECKPOINT], "a partial file was left behind"


def test_partial_files_of_a_killed_save_are_removed_at_the_next_start(tmp_path):
    (tmp_path / f".{LAST_CHECKPOINT}.4242.partial").write_bytes(b"half a checkpoint")
    (tmp_path / LAST_CHECKPOINT).write_bytes(b"kept")
    assert [p.name for p in remove_partial_writes(tmp_path)] == [f".{LAST_CHECKPOINT}.4242.partial"]
    assert [p.name for p in tmp_path.iterdir()] == [LAST_CHECKPOINT]


def test_checkpoints_load_without_pickle(tmp_path):
    """A checkpoint carrying a pickled object (code on load) is refused by weights_only loading."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Died("x")}, path)
    with pytest.raises(ValueError,
                       match=r"evil.ckpt cannot be read: it holds a pickled object \(test_reliability.Died\)"):
        read_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)


# ---------------------------------------------------------------------------------------- bad data
def _png_bytes(color: tuple[int, int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def vqav2_dir(tmp_path) -> Path:
    """A local VQAv2-schema split (save_to_disk) of 8 records; record 5 has a truncated image."""
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    images = [{"bytes": _png_bytes((30 * k, 0, 200)), "path": None} for k in range(8)]
    images[5]["bytes"] = images[5]["bytes"][:60]  # cut off mid-file, as an interrupted download leaves it
    features = Features({"question_id": Value("int64"), "image": ImageFeature(), "question": Value("string"),
                         "answers": Sequence(Value("string")), "answer_type": Value("string")})
    rows = {"question_id": [1000 + k for k in range(8)], "image": images,
            "question": [f"answer en what color is the shape {k}?" for k in range(8)],
            "answers": [["red"] * 10] * 8, "answer_type": ["other"] * 8}
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "vqav2"))
    return tmp_path / "vqav2"


def test_a_truncated_image_stops_the_run_before_training_naming_the_record(vqav2_dir, tiny_processor):
    cfg = DataConfig(name="vqav2", path=str(vqav2_dir), train_split="train", val_split="train", test_split="train")
    with pytest.raises(BadRecordError) as info:
        VQADataModule(cfg, tiny_processor).setup("fit")
    assert str(info.value).startswith("vqav2[train] record 5, question_id=1005: unreadable image (")
    assert str(info.value).endswith("(set data.on_bad_record=skip to skip such records)")


def test_skipped_records_are_left_out_and_counted_per_split(vqav2_dir, tiny_processor):
    cfg = DataConfig(name="vqav2", path=str(vqav2_dir), train_split="train", val_split="train", test_split="train",
                     on_bad_record="skip")
    datamodule = VQADataModule(cfg, tiny_processor)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 7
    assert 1005 not in datamodule.datasets["train"].dataset["question_id"]
    assert [m.split(":")[0] for m in datamodule.skipped["train"]] == ["vqav2[train] record 5, question_id=1005"]


def test_an_image_that_breaks_during_training_is_skipped_and_counted(vqav2_dir, tiny_processor, tiny_config, tmp_path):
    """With the up-front check off, the collate step meets the bad image: skipped, counted, training goes on."""
    cfg = DataConfig(name="vqav2", path=str(vqav2_dir), train_split="train", val_split="train", test_split="train",
                     on_bad_record="skip", check_images=False, batch_size=4)
    datamodule = VQADataModule(cfg, tiny_processor)
    datamodule.setup("fit")
    module = _module(tiny_processor, tiny_config, init_seed=0)
    recorder = Recorder()
    trainer = _fit(module, datamodule, tmp_path / "ckpt", recorder, max_epochs=1)
    assert trainer.global_step == 2 and module.skipped_records == 1
    assert sorted(i for ids in recorder.ids for i in ids) == [1000 + k for k in range(8) if k != 5]
    assert trainer.callback_metrics["data/skipped_records_in_training"] == 1


def test_empty_questions_and_missing_answers_or_files_are_named(tmp_path):
    image = tmp_path / "ok.png"
    Image.new("RGB", (4, 4)).save(image)
    rows = [("what?", ["a"], str(image)), ("  ", ["a"], str(image)), ("why?", ["", " "], str(image)),
            ("how?", ["b"], str(tmp_path / "gone.png"))]
    problems = []
    for k in range(1, 4):
        with pytest.raises(BadRecordError) as info:
            check_records([rows[0], rows[k]], "easy_vqa", "test", "error", ids=[10, 10 + k], check_images=True)
        problems.append(str(info.value).split(" (set")[0])
    assert problems == ["easy_vqa[test] record 1, question_id=11: empty question",
                        "easy_vqa[test] record 1, question_id=12: no answers",
                        f"easy_vqa[test] record 1, question_id=13: image file not found: {tmp_path / 'gone.png'}"]


# ---------------------------------------------------------------------------------------- bad config
@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.alpha=0", "lora.alpha=0.0: must be > 0"),
        ("attn=diff_split attn.lambda_init=-0.1", "attn.lambda_init=-0.1: must be in [0, 1)"),
        ("attn.towers=[text,audio]", "attn.towers='audio': must be one of vision, text"),
        ("optim.lr=0", "optim.lr=0.0: must be > 0"),
        ("data.on_bad_record=drop", "data.on_bad_record='drop': must be one of error, skip"),
        ("on_nonfinite=ignore", "on_nonfinite='ignore': must be one of stop, skip"),
        ("ckpt_every_n_steps=-1", "ckpt_every_n_steps=-1: must be >= 0 (0: at each epoch end instead)"),
        ("ckpt_path=/no/such.ckpt",
         "ckpt_path='/no/such.ckpt': must be an existing checkpoint file, \"last\", \"auto\" or null"),
        ("model=paligemma_3b_224 model.name_or_path=/no/such/dir",
         "model.name_or_path='/no/such/dir': local directory does not exist (or give a Hub id)"),
        ("trainer=fsdp trainer.precision=16-mixed",
         "trainer.precision='16-mixed': must be one of 32-true, bf16-mixed, bf16-true"),
    ],
)
def test_every_bad_value_is_named_with_what_is_allowed(override, message):
    from test_config import compose_train

    from diffpali.config import ConfigError, TrainConfig, to_typed

    with pytest.raises(ConfigError) as info:
        to_typed(compose_train("output_dir=.", *override.split()), TrainConfig)
    assert str(info.value) == message


def test_evaluate_refuses_a_local_model_directory_that_does_not_exist_before_loading():
    from hydra import compose, initialize_config_dir

    from diffpali.config import ConfigError, EvaluateConfig, register_configs, to_typed

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["output_dir=.", "model=paligemma_3b_224",
                                                         "model.name_or_path=./no/such/dir"])
    with pytest.raises(ConfigError) as info:
        to_typed(cfg, EvaluateConfig)
    assert str(info.value) == "model.name_or_path='./no/such/dir': local directory does not exist (or give a Hub id)"


def test_resume_from_last_needs_a_checkpoint_in_the_run_directory(tmp_path):
    from test_config import compose_train

    from diffpali.checkpointing import resolve_resume
    from diffpali.config import ConfigError, TrainConfig, to_typed

    with pytest.raises(ConfigError, match=r"^ckpt_path='last': no checkpoints/last.ckpt in output_dir="):
        to_typed(compose_train(f"output_dir={tmp_path}", "ckpt_path=last"), TrainConfig)
    assert resolve_resume("auto", tmp_path) is None  # auto: a fresh start when there is nothing to resume
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / LAST_CHECKPOINT).write_bytes(b"x")
    assert to_typed(compose_train(f"output_dir={tmp_path}", "ckpt_path=last"), TrainConfig).ckpt_path == "last"
    last = tmp_path / "checkpoints" / LAST_CHECKPOINT
    assert resolve_resume("auto", tmp_path) == resolve_resume("last", tmp_path) == last


# ---------------------------------------------------------------------------------------- non-finite
def test_a_diverging_run_stops_naming_step_batch_and_lambdas_and_keeps_its_last_checkpoint(
        tiny_processor, tiny_config, tmp_path):
    module = _module(tiny_processor, tiny_config, init_seed=0)
    module.optim = OptimConfig(lr=1e30, warmup_steps=0, schedule="constant")  # one step overflows every weight
    recorder = Recorder()
    with pytest.raises(NonFiniteError) as info:
        _fit(module, _data(tiny_processor), tmp_path / "ckpt", recorder, max_epochs=1)
    message = str(info.value)
    assert message.startswith(f"non-finite loss at step 1 (epoch 0); batch ids (question_id): {recorder.ids[1]}; ")
    assert "lambda per layer: text/layer0=" in message and ", vision/layer0=" in message
    assert f"the last good checkpoint is {tmp_path / 'ckpt' / LAST_CHECKPOINT}" in message
    saved = read_checkpoint(tmp_path / "ckpt" / LAST_CHECKPOINT)
    assert saved["global_step"] == 1 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_skip_mode_drops_non_finite_updates_and_counts_them(tiny_processor, tiny_config, tmp_path):
    module = _module(tiny_processor, tiny_config, init_seed=0, on_nonfinite="skip")
    module.optim = OptimConfig(lr=1e30, warmup_steps=0, schedule="constant")
    trainer = _fit(module, _data(tiny_processor), tmp_path / "ckpt", Recorder(), max_epochs=1)
    assert trainer.global_step == 5 and module.skipped_steps == 4  # every step after the first diverges
    after_first = read_checkpoint(tmp_path / "ckpt" / LAST_CHECKPOINT)  # written after the last step that was applied
    for name, p in module.model.named_parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all(), name
            assert torch.equal(p.detach(), after_first["state_dict"][f"model.{name}"]), name


class PoisonGradients(Callback):
    """Puts a NaN into one gradient at the given steps, as an overflow in the backward pass would."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps:
            next(p for p in pl_module.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def test_skipped_steps_do_not_advance_the_learning_rate_schedule(tiny_processor, tiny_config, tmp_path):
    module = _module(tiny_processor, tiny_config, init_seed=0, on_nonfinite="skip")
    module.optim = OptimConfig(lr=1e-3, warmup_steps=10)  # linear warm-up: lr x (k + 1) / 10 after k updates
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[PoisonGradients({1, 3})], use_distributed_sampler=False)
    trainer.fit(module, datamodule=_data(tiny_processor))  # 5 steps, 2 of them skipped
    assert trainer.global_step == 5 and module.skipped_steps == 2
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 4 / 10)


# ---------------------------------------------------------------------------------------- safe loading
def test_adapters_and_new_parameters_reload_from_safetensors_alone(tiny_processor, tiny_config, tiny_batch, tmp_path):
    from transformers import PaliGemmaForConditionalGeneration

    from diffpali.data.collate import model_inputs
    from diffpali.model import load_adapter, save_adapter

    model = _module(tiny_processor, tiny_config, init_seed=7).model.eval()
    expected = model(**model_inputs(tiny_batch, with_labels=False)).logits
    variants = {"attn": vars(ATTN), "ffn": vars(FfnConfig()), "lora": vars(LORA)}
    save_adapter(model, tmp_path / "adapter", variants)
    weights = sorted(p.name for p in (tmp_path / "adapter").iterdir() if p.suffix not in (".json", ".md"))
    assert weights == ["adapter_model.safetensors", "variant_weights.safetensors"]  # nothing pickled

    torch.manual_seed(0)
    fresh = PaliGemmaForConditionalGeneration(tiny_config)  # the same base, as if loaded from disk
    torch.manual_seed(99)  # another RNG state at load time: Q2/K2 must come from the file, not be redrawn
    reloaded = load_adapter(fresh, tmp_path / "adapter").eval()
    assert torch.equal(reloaded(**model_inputs(tiny_batch, with_labels=False)).logits, expected)

    (tmp_path / "adapter" / "adapter_model.safetensors").rename(tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(FileNotFoundError,
                       match="no adapter_model.safetensors; diffpali loads adapters from safetensors only"):
        load_adapter(PaliGemmaForConditionalGeneration(tiny_config), tmp_path / "adapter")


def test_remote_code_is_off_unless_the_config_asks():
    assert ModelConfig().trust_remote_code is False


# ---------------------------------------------------------------------------------------- real runs
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_a_real_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights():
    """benchmarks/faults.py once: train.py to the end, then a run SIGKILLed at a random step and resumed."""
    proc = subprocess.run([sys.executable, "benchmarks/faults.py", "--kills", "1", "data.train_limit=32"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1/1 resumes reproduced the weights exactly" in proc.stdout


@pytest.mark.slow
def test_train_py_names_a_bad_record_in_one_line_before_loading_the_model(vqav2_dir, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "data=vqav2", f"data.path={vqav2_dir}", "data.val_split=train",
                           "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("BadRecordError: vqav2[train] record 5, question_id=1005: unreadable image ("), last
    assert "trainable of" not in (tmp_path / "run" / "train.log").read_text()  # stopped before the model loaded
    assert (tmp_path / "run" / "failed.json").is_file()

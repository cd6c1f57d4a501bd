"""``trainer=fsdp`` through ``train.py``: two CPU processes (gloo) shard the tiny PaliGemma with FSDP2.

The same run under DDP is the reference (the same batches, the same all-reduced gradients; only the place
where the shards live differs), and a run killed with SIGKILL after its first checkpoint, then resumed,
must end with the uninterrupted run's adapter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
#: diff_dup (frozen Q2/K2 copies, lambda in modules_to_save) with LoRA dropout (the RNG must resume too); 3
#: validation and test questions at batch 1, so the ranks' shares differ (2 + 1) and FSDP's padding is needed
RUN = ["attn=diff_dup", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1", "data.train_limit=16",
       "data.val_limit=3", "data.test_limit=3", "data.batch_size=2", "data.eval_batch_size=1",
       "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "ckpt_every_n_steps=1", "logger=none",
       "optim.lr=5e-3", "optim.warmup_steps=2", "trainer.accelerator=cpu", "trainer.precision=32-true",
       "trainer.devices=2"]
FSDP = ["trainer=fsdp", *RUN]
DDP = ["trainer=ddp", *RUN]
WEIGHTS = ("adapter_model.safetensors", "variant_weights.safetensors")


def command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]


def train(run_dir: Path, overrides: list[str]) -> dict:
    proc = subprocess.run(command(run_dir, overrides), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{k}": v for name in WEIGHTS for k, v in load_file(str(run_dir / "adapter" / name)).items()}


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    train(run_dir, FSDP)
    return run_dir


@pytest.mark.slow
def test_fsdp_through_train_py_shards_the_model_and_trains_and_scores_as_ddp_does(fsdp_run, tmp_path):
    log = (fsdp_run / "train.log").read_text()
    found = re.search(r"FSDP: (\d+) of (\d+) parameters sharded over 2 ranks, (\d+) layer units", log)
    assert found and found[1] == found[2] and found[3] == "5"  # every tensor: 2 vision + 3 text layers, then the root
    fsdp = json.loads((fsdp_run / "metrics.json").read_text())
    ddp = train(tmp_path / "ddp", DDP)
    assert fsdp["train_steps"] == ddp["train_steps"] == 4  # 16 records, 2 ranks x batch 2
    # 3 questions, scored once each: FSDP's padding copy (rank 1's second batch) counts nowhere
    for key in ("val/vqa_accuracy_official", "test/vqa_accuracy_official"):
        assert fsdp[key] == ddp[key], key
    ours, reference = adapter(fsdp_run), adapter(tmp_path / "ddp")
    assert ours.keys() == reference.keys() and any("lambda" in k for k in ours)
    # The same gradients, summed in another order (a reduce-scatter, not an all-reduce): Adam divides by their
    # root mean square, so an element near zero moves a little differently (measured: at most 4e-5). LoRA's B
    # starts at zero, so how far it moved shows what a real difference (another batch, another mask) would be.
    moved = max(t.abs().max().item() for k, t in reference.items() if "lora_B" in k)
    assert moved > 5e-3
    for name, tensor in reference.items():
        assert torch.allclose(ours[name], tensor, atol=2e-4), name
    assert torch.load(fsdp_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.slow
def test_an_fsdp_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_adapter(fsdp_run, tmp_path):
    run_dir = tmp_path / "killed"
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(command(run_dir, [*FSDP, "test_after_fit=false"]), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, errors.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks, mid-run
    proc.wait()
    assert not (run_dir / "adapter").exists(), "the run ended before the kill: nothing was resumed"
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 1 <= killed_at < 4

    resumed = train(run_dir, [*FSDP, "test_after_fit=false", "ckpt_path=last"])
    assert resumed["resumed_from"] and resumed["train_steps"] == 4
    ours, reference = adapter(run_dir), adapter(fsdp_run)
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


def test_fsdp_refuses_evaluations_after_the_fit_before_anything_loads():
    from test_config import compose_train

    from diffpali.config import ConfigError, TrainConfig, to_typed

    overrides = ["output_dir=.", "experiment=study", "trainer=fsdp", "trainer.accelerator=cpu",
                 "trainer.precision=32-true", "trainer.devices=2"]
    with pytest.raises(ConfigError) as info:
        to_typed(compose_train(*overrides), TrainConfig)
    assert str(info.value).startswith("evals=[")
    assert str(info.value).endswith("not run under trainer.strategy=fsdp (the model is sharded over the ranks): "
                                    "score the saved adapter with evaluate.py")
    cfg = to_typed(compose_train(*overrides[2:], "output_dir=."), TrainConfig)  # without the evals: allowed on CPU
    assert cfg.trainer.strategy == "fsdp" and cfg.trainer.accelerator == "cpu"


def test_fsdp_pads_an_evaluation_split_so_every_rank_runs_as_many_batches():
    from diffpali.data.sampling import PaddedSplit, ShardSampler

    split = [{"question_id": k} for k in range(5)]
    padded = PaddedSplit(split, world_size=2)
    shares = [[padded[i] for i in ShardSampler(len(padded), rank, 2)] for rank in (0, 1)]
    assert [len(s) for s in shares] == [3, 3]
    assert shares[1][-1] == {"question_id": 0, "padding": True}  # a marked copy, scored by nothing
    real = sorted(r["question_id"] for share in shares for r in share if not r.get("padding"))
    assert real == [0, 1, 2, 3, 4]  # every question once

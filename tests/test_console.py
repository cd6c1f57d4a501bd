"""What `python train.py` prints and what its W&B run holds: each line once, the score and the run
directory last, images in the prediction table, and a resumed run that continues its W&B run and
its lambda history without repeating a step. Real train.py runs (shipped base, W&B offline)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# W&B offline and not silenced, as a user runs it; output unbuffered so stdout and stderr interleave in order.
ENV = ({k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "HYDRA_FULL_ERROR")}
       | {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
# diff_dup (lambda is recorded); 48 records at batch 8: 6 steps, a checkpoint at step 4, lambda every 2 steps.
RUN = ["attn=diff_dup", "data.train_limit=48", "data.val_limit=8", "data.test_limit=16", "data.batch_size=8",
       "trainer.log_every_n_steps=2", "ckpt_every_n_steps=4"]


def train(run_dir: Path, *extra: str) -> list[str]:
    """The run's console (stdout and stderr together), as lines."""
    proc = subprocess.run([sys.executable, "train.py", *RUN, *extra, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return [line for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, list[str]]:
    run_dir = tmp_path_factory.mktemp("console") / "run"
    return run_dir, train(run_dir)


@pytest.fixture(scope="module")
def resumed(first) -> tuple[Path, list[str]]:
    """The same run restarted from its checkpoint (step 4), as after a kill: steps 5 and 6 are trained again."""
    run_dir, _ = first
    return run_dir, train(run_dir, "ckpt_path=last")


def assert_clean(lines: list[str], run_dir: Path) -> None:
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated
    assert lines[-3].startswith("VQA accuracy (easy_vqa test, official VQAv2 convention): ")
    assert lines[-2].startswith("question-only baseline (full test split")
    assert lines[-1] == f"run directory: {run_dir}  (metrics.json, adapter/, checkpoints/)"
    text = "\n".join(lines)
    for noise in ("litlogger", "Tip:", "is deprecated", "wandb:", "INFO:", "Loading weights", "GPU available"):
        assert noise not in text, noise


@pytest.mark.slow
def test_train_prints_each_line_once_and_ends_with_the_score_and_the_run_directory(first):
    run_dir, lines = first
    assert_clean(lines, run_dir)
    text = "\n".join(lines)
    assert "] train: 6 optimiser steps" in text and "] train: 6 steps in " in text  # our progress and phase lines
    assert "] validation at step 6: vqa_accuracy_official " in text
    log = (run_dir / "train.log").read_text()
    assert "GPU available: False" in log  # other libraries' INFO lines go to the log file, not the console
    assert "litlogger" not in log


def test_known_noise_is_filtered_and_any_other_warning_kept():
    from diffpali.console import filter_known_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=1)
        warnings.warn("`foo` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("The number of training batches (6) is smaller than the logging interval", UserWarning,
                      stacklevel=1)
    assert [str(w.message)[:5] for w in caught] == ["`foo`", "The n"]


@pytest.mark.slow
def test_the_prediction_table_shows_the_images_the_model_answered(first):
    from diffpali.config import DataConfig
    from diffpali.data.collate import load_rgb
    from diffpali.data.datamodule import load_split

    run_dir, _ = first
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    (files,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/files")
    (table,) = files.glob("media/table/test/predictions_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["image", "question_id", "question", "prediction", "answers", "score"]
    assert len(logged["data"]) == 16
    # offline, the table stores the word "Image"; the same images are kept as a captioned gallery
    gallery = {hashlib.sha1(Image.open(p).convert("RGB").tobytes()).hexdigest()
               for p in files.glob("media/images/test/predictions_images_*.png")}
    test = load_split(DataConfig(test_limit=16), "test", 16)
    expected = {hashlib.sha1(load_rgb(r["image"], "test").tobytes()).hexdigest() for r in test}
    assert gallery == expected


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run_and_lambda_history_without_repeating_a_step(first, resumed):
    run_dir, lines = resumed
    assert_clean(lines, run_dir)
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # both starts, one W&B run id
    assert any(f"W&B: offline, continuing run {run_id} in " in line for line in lines)
    steps = [json.loads(line)["step"] for line in (run_dir / "lambda_history.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4, 6]

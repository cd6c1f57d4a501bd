"""train.py and evaluate.py run for real in subprocesses: Hydra, Lightning, peft, W&B (offline).

The model is a one-layer tiny PaliGemma built on first use into a temporary cache (a few seconds),
so these tests exercise the build-on-first-use path too; the shipped base is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMOKE_DATA, smoke_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(script: str, *overrides: str, env_mode: str = "offline") -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE=env_mode, WANDB_SILENT="true", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, script, *overrides, "trainer.enable_progress_bar=false"] if script == "train.py"
        else [sys.executable, script, *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    run_dir = tmp / "run"
    proc = run("train.py", *smoke_model(tmp / "cache"), *SMOKE_DATA, f"hydra.run.dir={run_dir}")
    return tmp, run_dir, proc


def test_train_builds_the_base_on_first_use_and_caches_it(trained_run):
    tmp, run_dir, proc = trained_run
    log = (run_dir / "train.log").read_text()
    assert "not shipped or cached; building it now" in log
    built = list((tmp / "cache" / "tiny").glob("*/build_info.json"))
    assert len(built) == 1 and json.loads(built[0].read_text())["key"] == built[0].parent.name


def test_train_writes_metrics_adapter_and_offline_wandb_run(trained_run):
    _, run_dir, _ = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["convention"] == "official" and metrics["train_steps"] == 6
    for key in ("test/vqa_accuracy_official", "val/vqa_accuracy_official"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    saved = json.loads((run_dir / "adapter" / "diffpali.json").read_text())
    assert saved["attn"]["variant"] == "vanilla" and saved["lora"]["rank"] == 16
    assert list((run_dir / "wandb").glob("offline-run-*")), "the W&B run was not written offline"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_evaluate_scores_the_trained_adapter_exactly_as_training_did(trained_run):
    tmp, run_dir, _ = trained_run
    eval_dir = tmp / "eval"
    run("evaluate.py", f"ckpt={run_dir}", *smoke_model(tmp / "cache"), *SMOKE_DATA, "logger=none",
        f"hydra.run.dir={eval_dir}")
    trained = json.loads((run_dir / "metrics.json").read_text())
    scored = json.loads((eval_dir / "metrics.json").read_text())
    assert scored["convention"] == "official" and scored["test/count"] == 40
    # one scorer, one generation loop: the same adapter gets the same number in both places
    assert scored["test/vqa_accuracy_official"] == pytest.approx(trained["test/vqa_accuracy_official"], abs=1e-9)


def test_evaluate_mmneedle_writes_metrics_heatmap_and_every_reply(trained_run):
    tmp, run_dir, _ = trained_run
    out = tmp / "mmneedle"
    proc = run("evaluate.py", f"ckpt={run_dir}", "eval=mmneedle", "eval.samples=8",
               f"eval.cache_dir={tmp / 'haystacks'}", *smoke_model(tmp / "cache"), f"hydra.run.dir={out}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mmneedle" and metrics["mmneedle/mode"] == "paper"
    assert metrics["mmneedle/samples"] == metrics["mmneedle/positives"] == 8
    cells = {f"mmneedle/cell_r{r}_c{c}" for r in (1, 2) for c in (1, 2)}
    assert {k for k in metrics if k.startswith("mmneedle/cell_")} == cells
    assert 0.0 <= metrics["mmneedle/exact"] <= min(metrics["mmneedle/row"], metrics["mmneedle/column"])
    assert metrics["haystacks"]["seed"] == 0 and metrics["haystacks"]["source"] == "easy_vqa/test"
    assert len((out / "mmneedle_replies.jsonl").read_text().splitlines()) == 8
    assert (out / "mmneedle_heatmap.png").stat().st_size > 1000
    assert "chance 25%" in proc.stdout and "exact" in proc.stdout
    (table,) = (out / "wandb").glob("offline-run-*/files/media/table/mmneedle/samples_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["sample_id", "haystack", "caption", "answer", "reply", "exact"]
    assert len(logged["data"]) == 8
    assert list((out / "wandb").glob("offline-run-*/files/media/images/mmneedle/heatmap_*.png"))
    # the table's stitched images also reach the offline run, as a captioned gallery
    assert len(list((out / "wandb").glob("offline-run-*/files/media/images/mmneedle/samples_images_*.png"))) == 8

    official = tmp / "mmneedle_official"
    run("evaluate.py", f"ckpt={run_dir}", "eval=mmneedle", "eval.mode=official", "eval.samples=8",
        f"eval.cache_dir={tmp / 'haystacks'}", *smoke_model(tmp / "cache"), f"hydra.run.dir={official}")
    metrics = json.loads((official / "metrics.json").read_text())
    assert (metrics["mmneedle/positives"], metrics["mmneedle/negatives"]) == (4, 4)
    assert {"mmneedle/index", "mmneedle/existence"} <= metrics.keys()


def test_a_bad_value_exits_before_loading_anything(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, "train.py", "lora.rank=-4", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("config error: lora.rank=-4: must be > 0")
    assert not (tmp_path / "metrics.json").exists()


def test_multirun_sweep_over_lora_rank_runs_one_job_per_value(tmp_path):
    sweep = tmp_path / "sweep"
    run("train.py", "-m", "lora.rank=4,8", *smoke_model(tmp_path / "cache"), *SMOKE_DATA,
        "data.train_limit=16", "test_after_fit=false", "logger=csv", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    ranks = [json.loads((job / "adapter" / "adapter_config.json").read_text())["r"] for job in jobs]
    assert sorted(ranks) == [4, 8]
    assert all("lora.rank=" in json.loads((job / "metrics.json").read_text())["run_name"] for job in jobs)

"""experiment=scratch end to end on a CPU at scale=cpu_smoke: a diff_split and a diff_v2 base built from the random
initialisation, each fine-tuned and scored by the study's evaluations; the built bases load with their own attention
in train.py and evaluate.py, a conflicting attn= is refused in one line, and the report tabulates the arm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
EVALS = {"vqa", "mmneedle_paper", "mmneedle_official", "mmneedle_official_n3", "mmneedle_official_n4", "pope",
         "distractors", "attention"}
ARMS = ("vanilla", "diff_split", "diff_v2_plain")


def run(args: list[str], cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", DIFFPALI_CACHE=str(cache))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> tuple[Path, Path, float]:
    """The arm at smoke scale, one seed: (sweep directory, cache root holding the built bases, seconds)."""
    root = tmp_path_factory.mktemp("scratch")
    sweep, cache = root / "sweep", root / "cache"
    started = time.time()
    proc = run(["train.py", "-m", "experiment=scratch", "scale=cpu_smoke", f"+experiment/scratch={','.join(ARMS)}",
                "seed=1", "eval_limit=4", "data.train_limit=64", "logger=none", f"hydra.sweep.dir={sweep}"], cache)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return sweep, cache, time.time() - started


def job_dir(sweep: Path, arm_name: str) -> Path:
    return next(p for p in sweep.iterdir() if f"+experiment-scratch={arm_name}," in p.name)


def test_each_arm_builds_its_base_with_its_attention_then_trains_and_runs_every_evaluation(arm):
    sweep, _, seconds = arm
    assert seconds < 600, f"the smoke arm took {seconds:.0f} s (bar: 10 min)"
    for name, variant in zip(ARMS, ("vanilla", "diff_split", "diff_v2")):
        job = job_dir(sweep, name)
        record = json.loads((job / "job.json").read_text())
        assert record["status"] == "completed"
        assert record["config"]["attn"]["variant"] == variant  # the run computes the base's own attention
        base = json.loads((job / "base.json").read_text())
        assert base["attn"]["variant"] == variant and base["spec"]["seed"] == 1
        assert set(json.loads((job / "metrics.json").read_text())["evals"]) == EVALS
        if variant == "diff_v2":
            assert base["attn"]["v2_lambda_init"] == "plain"
        if variant != "vanilla":  # lambda per converted layer, at the start and the end of pretraining
            assert {"text/layer0", "vision/layer0"} <= set(base["lambda"]["end"])
            assert base["lambda"]["start"] != base["lambda"]["end"]


def built_base(cache: Path, variant: str) -> Path:
    for info in (cache / "tiny").glob("*/build_info.json"):
        if json.loads(info.read_text()).get("attn", {}).get("variant") == variant:
            return info.parent
    raise AssertionError(f"no {variant} base under {cache}")


def test_a_built_base_scores_with_its_own_attention_in_evaluate_py(arm, tmp_path):
    _, cache, _ = arm
    base = built_base(cache, "diff_split")
    proc = run(["evaluate.py", "ckpt=base", f"model.name_or_path={base}", "eval=mmneedle", "eval.limit=4",
                "logger=none", f"hydra.run.dir={tmp_path / 'eval'}"], cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads((tmp_path / "eval" / "job.json").read_text())
    assert job["status"] == "completed"
    assert "mmneedle/exact" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_a_conflicting_attn_on_a_differential_base_is_refused_in_one_line(arm, tmp_path):
    _, cache, _ = arm
    base = built_base(cache, "diff_v2")
    proc = run(["train.py", f"model.name_or_path={base}", "attn=diff_split", "logger=none",
                f"hydra.run.dir={tmp_path / 'run'}"], cache, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error")]
    assert len(lines) == 1, proc.stderr
    assert "attn='diff_split'" in lines[0] and "pretrained with attn=diff_v2" in lines[0]


def test_the_report_tabulates_the_arm_against_vanilla(arm):
    sweep, _, _ = arm
    proc = subprocess.run([sys.executable, "-m", "diffpali.report", str(sweep)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (sweep / "scratch.md").read_text()
    for name in ARMS:
        assert name in text
    assert "slope" in text.lower() and "lambda" in text.lower()

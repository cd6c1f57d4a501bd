"""experiment=study end to end on tiny slices: real train.py multirun jobs, every evaluation of each trained model,
a rerun that keeps the finished jobs, and the report with intervals and paired comparisons."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffpali.report.readme import END, START

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
EVALS = {"vqa", "mmneedle_paper", "mmneedle_official", "pope", "distractors", "attention"}


def study(sweep: Path, *extra: str) -> str:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "train.py", "-m", "experiment=study", "scale=cpu_smoke",
                           "+experiment/study=vanilla,diff_split", "seed=1,2", "eval_limit=4", "data.train_limit=64",
                           f"hydra.sweep.dir={sweep}", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("study") / "sweep"
    study(directory)
    return directory


def test_every_job_trains_and_runs_every_evaluation(sweep):
    jobs = sorted(p for p in sweep.iterdir() if (p / "job.json").is_file())
    assert len(jobs) == 4
    for job in jobs:
        assert json.loads((job / "job.json").read_text())["status"] == "completed"
        assert {p.name for p in (job / "evals").iterdir()} == EVALS
        assert set(json.loads((job / "metrics.json").read_text())["evals"]) == EVALS
        for name in EVALS - {"attention"}:
            assert (job / "evals" / name / "items.jsonl").stat().st_size > 0, name
        # each seed scores its own distractor scenes, drawn from the run's seed (the curve points pool them)
        distractors = json.loads((job / "evals" / "distractors" / "metrics.json").read_text())
        assert distractors["distractors/setting"]["seed"] == distractors["seed"]


def test_a_study_started_again_keeps_its_finished_jobs(sweep):
    before = {p: (p / "metrics.json").stat().st_mtime_ns for p in sweep.iterdir() if (p / "job.json").is_file()}
    output = study(sweep)
    assert output.count("already completed with this very config") == 4
    assert all((p / "metrics.json").stat().st_mtime_ns == t for p, t in before.items())


def test_the_report_gives_intervals_and_paired_comparisons_with_vanilla(sweep):
    proc = subprocess.run([sys.executable, "-m", "diffpali.report", str(sweep)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = (sweep / "results.md").read_text()
    assert "## Every evaluation" in results and "## The paper, side by side" in results
    assert "(n=2)" in results and "(n=2 seeds x" in results  # intervals over 2 seeds; paired over items too
    with (sweep / "study.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    split = [r for r in rows if r["setting"] == "diff_split" and r["metric"].startswith("VQA")]
    assert split and split[0]["n"] == "2" and split[0]["p_value"]
    assert float(split[0]["diff_low"]) <= float(split[0]["diff"]) <= float(split[0]["diff_high"])
    assert 0.0 <= float(split[0]["ci_low"]) <= float(split[0]["mean"]) <= float(split[0]["ci_high"]) <= 1.0
    vanilla = [r for r in rows if r["setting"] == "vanilla"]
    assert vanilla and all(r["diff"] == "" for r in vanilla)  # the baseline is not compared with itself
    sections = {part.split("\n", 1)[0]: part for part in results.split("\n## ")}
    attention = sections["Attention on the needle (MMNeedle haystacks, the answer rows)"]
    assert "| vanilla | 0 |" in attention and "| diff_split | 0 |" in attention  # every setting, every text layer
    points = sections["Distractor curve points: 95% half-widths"]
    assert "| N2/M1/hard/k1 |" in points and " (N=" in points and "⚠" in points  # eval_limit=4: far too wide
    assert "- vanilla: 21 of 21 points wider than ±0.08" in points
    lambdas = sections["Lambda after the fine-tune"]
    assert "| diff_split |" in lambdas and "vanilla" not in lambdas  # vanilla has no lambda
    assert "- diff_split: below vanilla on " in sections["Findings"]
    table1 = (sweep / "table1.md").read_text()
    assert "none of them is a Table 1 job" in table1 and "| diff_split" not in table1  # no empty Table 1 lines
    for figure in ("distractors_exact.png", "distractors_attention.png", "lambda_trajectories.png"):
        assert (sweep / figure).stat().st_size > 0


def test_the_report_writes_the_readme_findings_between_its_markers(sweep, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\nintro\n\n{START}\nold text\n{END}\n\n## Next section\n")
    proc = subprocess.run([sys.executable, "-m", "diffpali.report", str(sweep), "--out", str(tmp_path / "report"),
                           "--readme", str(readme)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("# Project\n\nintro\n\n") and text.endswith(f"{END}\n\n## Next section\n")
    assert "old text" not in text and "| vanilla |" in text and "| diff_split |" in text
    assert "\n- diff_split: below vanilla on " in text and "What they do not show:" in text
    for figure in ("distractors_exact.png", "lambda_trajectories.png"):
        assert (tmp_path / "docs" / "study" / figure).stat().st_size > 0
        assert f"](docs/study/{figure})" in text
    readme.write_text("# no markers\n")
    proc = subprocess.run([sys.executable, "-m", "diffpali.report", str(sweep), "--out", str(tmp_path / "report"),
                           "--readme", str(readme)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no study-findings markers" in proc.stderr
    assert readme.read_text() == "# no markers\n"  # nothing lost

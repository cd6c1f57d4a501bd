"""`python -m diffpali.report`: Table 1 / Table 2 from a sweep directory, failed jobs listed, never dropped."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import SMOKE_DATA, smoke_model

from diffpali.report.__main__ import main
from diffpali.report.format import sci
from diffpali.report.runs import load_jobs
from diffpali.report.stats import mean_std

ROOT = Path(__file__).resolve().parents[1]


def write_job(root: Path, name: str, *, row=None, seed=0, score=None, status="completed", extra_metrics=None,
              failure=None, lr=4e-4, wd=1e-9, rank=32, alpha=64.0, attn="vanilla", overrides=None) -> Path:
    """A job directory as diffpali.jobs and diffpali.runner leave it."""
    job = root / name
    job.mkdir(parents=True)
    config = {
        "table_row": row, "seed": seed, "experiment_name": "table1" if row else "default",
        "attn": {"variant": attn, "dup_mode": "separate"}, "ffn": {"variant": "mlp"},
        "optim": {"name": "adam", "lr": lr, "weight_decay": wd}, "lora": {"rank": rank, "alpha": alpha},
        "data": {"name": "easy_vqa", "batch_size": 4}, "model": {"name": "tiny"},
    }
    if overrides is None:
        overrides = ([f"+experiment/table1=row{row}"] if row else []) + [f"seed={seed}"]
    job_status = "failed" if failure else status
    (job / "job.json").write_text(json.dumps({"status": job_status, "overrides": overrides, "config": config}))
    if failure:
        failed = {"error_type": failure[0], "message": failure[1], "traceback": "..."}
        (job / "failed.json").write_text(json.dumps(failed))
    elif status == "completed":
        metrics = {"seed": seed, "convention": "official", **(extra_metrics or {})}
        if score is not None:
            metrics["test/vqa_accuracy_official"] = score
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, (seed, score) in enumerate([(1, 0.50), (2, 0.60), (3, 0.70)]):
        write_job(root, f"{i}_row1_seed{seed}", row=1, seed=seed, score=score)
    write_job(root, "3_row3_seed1", row=3, seed=1, score=0.4012, lr=2e-5, wd=1e-8, rank=16, alpha=32.0)
    write_job(root, "4_row3_seed2", row=3, seed=2, failure=("FileNotFoundError", "data.path='/x': no train*.parquet"),
              lr=2e-5, wd=1e-8, rank=16, alpha=32.0)
    write_job(root, "5_row3_seed3", row=3, seed=3, status="running", lr=2e-5, wd=1e-8, rank=16, alpha=32.0)
    # the same row with another LoRA rank is another setting: not averaged with the rank-16 runs
    write_job(root, "6_row3_rank32", row=3, seed=1, score=0.30, lr=2e-5, wd=1e-8, rank=32, alpha=32.0,
              overrides=["+experiment/table1=row3", "seed=1", "lora.rank=32"])
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_mean_and_sample_std_over_seeds():
    mean, std, n = mean_std([0.5, 0.6, 0.7])
    assert (mean, n) == (pytest.approx(0.6), 3)
    assert std == pytest.approx(statistics.stdev([0.5, 0.6, 0.7])) == pytest.approx(0.1)
    assert mean_std([0.42]) == (0.42, None, 1) and mean_std([]) == (None, None, 0)
    assert (sci(4e-4), sci(2e-5), sci(1e-9), sci(0.1)) == ("4e-4", "2e-5", "1e-9", "0.1")


def test_job_status_is_read_from_the_files(sweep):
    jobs = {j.path: j for j in load_jobs(sweep)}
    assert len(jobs) == 7
    assert jobs["4_row3_seed2"].status == "failed" and "FileNotFoundError" in jobs["4_row3_seed2"].error
    assert jobs["5_row3_seed3"].status == "incomplete"
    assert jobs["0_row1_seed1"].score == 0.5 and jobs["0_row1_seed1"].table_row == 1
    assert jobs["4_row3_seed2"].score is None  # a failed job never counts


def test_table1_markdown_and_csv_from_hand_written_runs(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    md = (out / "table1.md").read_text()
    assert capsys.readouterr().out.startswith(md)
    assert "`test/vqa_accuracy_official`" in md and "official VQAv2 accuracy" in md and "percent" in md
    rows = read_csv(out / "table1.csv")
    row1 = next(r for r in rows if r["row"] == "1")
    assert row1["n"] == "3" and float(row1["mean_pct"]) == pytest.approx(60.0)
    assert float(row1["std_pct"]) == pytest.approx(10.0)
    assert row1["seeds"] == "1;2;3" and float(row1["paper_pct"]) == 53.21
    assert (row1["diff_attn"], row1["lr"], row1["lora"], row1["wd"]) == ("no", "4e-4", "32/64", "1e-9")
    assert "| 1 | no | mlp | 4e-4 | 32/64 | 1e-9 | tiny / easy_vqa | 60.00 ± 10.00 | 3 | 53.21 |" in md
    row3 = [r for r in rows if r["row"] == "3"]
    assert len(row3) == 2  # rank 16 (the paper's row) and the rank-32 variant, kept apart
    paper3 = next(r for r in row3 if r["lora"] == "16/32")
    assert paper3["n"] == "1" and float(paper3["mean_pct"]) == pytest.approx(40.12) and paper3["std_pct"] == ""
    assert (paper3["failed"], paper3["incomplete"]) == ("1", "1") and paper3["differs_from_paper"] == ""
    variant = next(r for r in row3 if r["lora"] == "32/32")
    assert variant["setting"] == "lora.rank=32" and "lora.rank 32 (paper 16)" in variant["differs_from_paper"]
    # rows nobody ran are shown as such, with the paper's number
    for missing in ("2", "4", "5"):
        line = next(r for r in rows if r["row"] == missing)
        assert line["n"] == "0" and line["paper_pct"]
    assert "not run" in md
    # failures are listed, with their error, never dropped
    assert "**failed** `4_row3_seed2`" in md and "FileNotFoundError: data.path='/x'" in md
    assert "**incomplete** `5_row3_seed3`" in md
    jobs = read_csv(out / "jobs.csv")
    assert len(jobs) == 7 and sorted(j["status"] for j in jobs).count("failed") == 1
    assert not (out / "table2.md").exists()


def test_table2_when_mmneedle_results_exist(tmp_path):
    root = tmp_path / "needle"
    cells = {"mmneedle/cell_r1_c1": 0.5, "mmneedle/cell_r1_c2": 0.25, "mmneedle/cell_r2_c1": 1.0,
             "mmneedle/cell_r2_c2": 0.0}
    for seed, exact in ((1, 0.40), (2, 0.50)):
        write_job(root, f"diff_{seed}", seed=seed, attn="diff_dup", overrides=[f"seed={seed}", "attn=diff_dup"],
                  extra_metrics={"mmneedle/exact": exact, "mmneedle/index": 1.0, "mmneedle/existence": 0.9, **cells})
    assert main([str(root)]) == 0
    md = (root / "table2.md").read_text()
    assert "row AND column" in md and "r2c1 (%)" in md
    (line,) = read_csv(root / "table2.csv")
    assert line["n"] == "2" and float(line["exact_mean_pct"]) == pytest.approx(45.0)
    assert float(line["exact_std_pct"]) == pytest.approx(100 * statistics.stdev([0.4, 0.5]), abs=1e-3)
    assert float(line["cell_r2_c1"]) == 100.0 and float(line["cell_r1_c2"]) == 25.0
    assert "yes (dup, separate)" in md


def test_an_evaluate_run_inherits_the_method_of_the_run_it_scores(tmp_path):
    """evaluate.py's config has no attn/ffn/lora: the report reads them from the scored run's job.json,
    and a paper-mode result shows its row-only and column-only scores beside exact."""
    trained = write_job(tmp_path / "train", "diff_split_run", attn="diff_split", rank=8)
    evaluation = tmp_path / "evals" / "needle"
    evaluation.mkdir(parents=True)
    (evaluation / "job.json").write_text(json.dumps({"status": "completed", "config": {"ckpt": str(trained), "seed": 0},
                                                     "overrides": [f"ckpt={trained}", "eval=mmneedle"]}))
    (evaluation / "metrics.json").write_text(json.dumps({"seed": 0, "mmneedle/mode": "paper", "mmneedle/exact": 0.3,
                                                         "mmneedle/row": 0.6, "mmneedle/column": 0.55}))
    (job,) = load_jobs(tmp_path / "evals")
    assert job.get("attn.variant") == "diff_split" and job.get("lora.rank") == 8
    assert main([str(tmp_path / "evals")]) == 0
    (line,) = read_csv(tmp_path / "evals" / "table2.csv")
    assert float(line["row_mean_pct"]) == pytest.approx(60.0) and float(line["column_mean_pct"]) == pytest.approx(55.0)
    md = (tmp_path / "evals" / "table2.md").read_text()
    base = tmp_path / "evals" / "base"
    base.mkdir()
    (base / "job.json").write_text(json.dumps({"status": "completed", "overrides": ["ckpt=base", "eval=mmneedle"],
                                               "config": {"ckpt": "base", "seed": 0}}))
    (base / "metrics.json").write_text(json.dumps({"seed": 0, "mmneedle/exact": 0.1}))
    assert main([str(tmp_path / "evals")]) == 0
    md = (tmp_path / "evals" / "table2.md").read_text()
    assert "no (base, no adapter)" in [line for line in md.splitlines() if "| 10.00" in line][0]
    (table_line,) = [line for line in md.splitlines() if "30.00" in line]
    assert "yes (original)" in table_line and "60.00" in table_line and "55.00" in table_line


def test_an_empty_directory_is_an_error_not_an_empty_table(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no runs found" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_multirun_with_a_failing_job_is_reported(tmp_path):
    """Two jobs fail at runtime (a VQAv2 directory that holds no data: valid config, fails when the
    data loads) before two that train: the sweep runs them all, exits non-zero, and the report shows
    the successes as one setting over two seeds and lists the failures."""
    sweep, empty = tmp_path / "sweep", tmp_path / "vqav2_without_files"
    empty.mkdir()
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "data=vqav2,easy_vqa", "seed=1,2", f"data.path={empty}",
         *smoke_model(tmp_path / "cache"), *SMOKE_DATA, "data.train_limit=16", "data.val_limit=8", "data.test_limit=8",
         "logger=csv",
         "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0, "a sweep with failed jobs must not exit 0"
    assert len(list(sweep.glob("*/metrics.json"))) == 2, proc.stderr[-3000:]  # jobs after the failures still ran
    failed = sorted(sweep.glob("*/failed.json"))
    assert [p.parent.name.split("_")[0] for p in failed] == ["0", "1"]
    record = json.loads(failed[0].read_text())
    assert record["error_type"] == "FileNotFoundError" and "no train*.parquet" in record["message"]
    assert "Traceback" in record["traceback"]
    assert json.loads((failed[0].parent / "job.json").read_text())["status"] == "failed"

    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    rows = read_csv(out / "table1.csv")
    good = next(r for r in rows if "data=easy_vqa" in r["setting"])
    bad = next(r for r in rows if "data=vqav2" in r["setting"])
    scores = [json.loads(p.read_text())["test/vqa_accuracy_official"] for p in sorted(sweep.glob("*/metrics.json"))]
    assert good["n"] == "2" and good["seeds"] == "1;2" and good["failed"] == "0"
    assert float(good["mean_pct"]) == pytest.approx(100 * statistics.fmean(scores), abs=1e-3)
    assert bad["n"] == "0" and bad["failed"] == "2"
    md = (out / "table1.md").read_text()
    assert md.count("**failed**") == 2 and "4 jobs: 2 completed, 2 failed, 0 incomplete" in md


class _FakeRun:
    def __init__(self, name, state, config, summary, path):
        self.name, self.state, self.config, self.summary, self.path = name, state, config, summary, path


def test_wandb_runs_are_read_as_job_directories_are(tmp_path, monkeypatch, capsys):
    """--wandb: a run's name is its overrides, its config the validated config, its summary the metrics;
    a crashed run is listed as failed, never averaged in."""
    config = {"table_row": 1, "attn": {"variant": "vanilla"}, "ffn": {"variant": "mlp"},
              "lora": {"rank": 32, "alpha": 64}, "optim": {"name": "adam", "lr": 4e-4, "weight_decay": 1e-9},
              "data": {"name": "easy_vqa", "batch_size": 4}, "model": {"name": "tiny"}}
    runs = [_FakeRun("+experiment/table1=row1,seed=1", "finished", {**config, "seed": 1},
                     {"test/vqa_accuracy_official": 0.5, "_step": 9}, ["me", "proj", "a1"]),
            _FakeRun("+experiment/table1=row1,seed=2", "finished", {**config, "seed": 2},
                     {"test/vqa_accuracy_official": 0.7}, ["me", "proj", "a2"]),
            _FakeRun("+experiment/table1=row1,seed=3", "crashed", {**config, "seed": 3}, {}, ["me", "proj", "a3"])]
    asked = {}

    class Api:
        def runs(self, project, filters=None):
            asked.update(project=project, filters=filters)
            return runs

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=Api))
    out = tmp_path / "report"
    assert main(["--wandb", "me/proj", "--group", "table1-x", "--out", str(out)]) == 0
    assert asked == {"project": "me/proj", "filters": {"group": "table1-x"}}
    (row1,) = [r for r in read_csv(out / "table1.csv") if r["row"] == "1"]
    assert (row1["n"], row1["seeds"], row1["failed"]) == ("2", "1;2", "1")
    assert float(row1["mean_pct"]) == pytest.approx(60.0)
    md = (out / "table1.md").read_text()
    assert "Source: `wandb:me/proj group table1-x`" in md
    assert "**failed** `me/proj/a3`" in md and "W&B run state: crashed" in md
    assert md in capsys.readouterr().out


def test_an_unreadable_wandb_project_is_one_clear_error(monkeypatch):
    class Api:
        def runs(self, project, filters=None):
            raise PermissionError("no login")

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=Api))
    with pytest.raises(SystemExit, match=r"--wandb me/proj: could not read the project .*PermissionError: no login"):
        main(["--wandb", "me/proj"])

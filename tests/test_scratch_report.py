"""The from-scratch arm's report on job directories written as the runner writes them: distractor slopes with
their intervals and paired differences, lambda at the end of pretraining and whether it moved, the share of
replies out of format beside the location figures, and scratch.md beside (never inside) the study's files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from diffpali.evals.base import write_items
from diffpali.evals.distractors.sets import points
from diffpali.jsonio import write_json_atomic
from diffpali.paths import BASE_RECORD_FILE, EVALS_DIR, ITEMS_FILE, JOB_FILE, LAMBDA_HISTORY_FILE, METRICS_FILE
from diffpali.report.base_lambda import MOVED, layer_lambdas
from diffpali.report.readme import summary_table
from diffpali.report.runs import load_jobs
from diffpali.report.slopes import least_squares_slope, slope_estimates
from diffpali.report.sweep_tables import invalid_share, read_study_csv
from diffpali.report.sweeps import SCRATCH, STUDY, settings_of
from diffpali.report.write import write_report

T2 = 4.303  #: Student t, 97.5%, 2 degrees of freedom (3 seeds)
SEEDS = (1, 2, 3)
#: hard-distractor slope of exact per k, per arm and seed; easy curves are flat for every arm
HARD_SLOPES = {"vanilla": {1: -0.01, 2: -0.02, 3: -0.03}, "diff_split": {1: -0.03, 2: -0.05, 3: -0.07},
               "diff_v2_plain": {1: -0.02, 2: -0.01, 3: -0.03}}
#: lambda (start, end) per layer and seed of each arm's base; vanilla records none
LAMBDA = {
    "diff_split": {"text/layer0": {1: (0.2, 0.28), 2: (0.2, 0.30), 3: (0.2, 0.32)},
                   "text/layer1": {1: (0.2, 0.21), 2: (0.2, 0.26), 3: (0.2, 0.19)}},
    "diff_v2_plain": {"text/layer0": {1: (0.5, 0.51), 2: (0.5, 0.49), 3: (0.5, 0.50)}},
}


def write_eval(job: Path, name: str, task: str, seed: int, metrics: dict, items: dict) -> None:
    """evals/<name>/metrics.json and items.jsonl, as runner.run_task writes them."""
    folder = job / EVALS_DIR / name
    folder.mkdir(parents=True)
    write_json_atomic(folder / METRICS_FILE, {"ckpt": str(job), "task": task, "seed": seed, **metrics,
                                              "eval_seconds": 1.0})
    write_items(folder / ITEMS_FILE, items)


def distractor_metrics(arm: str, seed: int) -> tuple[dict, dict]:
    """Exact at every point of a 2x2 grid, k in 0, 1, 3: 0.9 + slope * k (hard), 0.9 (easy)."""
    metrics, items = {}, {}
    for point in points([2], [0, 1, 3], ["hard", "easy"], [1]):
        slope = HARD_SLOPES[arm][seed] if point.kind == "hard" else 0.0
        key = f"distractors/{point.name}"
        metrics.update({f"{key}/exact": 0.9 + slope * point.distractors, f"{key}/existence": 0.8,
                        f"{key}/positives": 20, f"{key}/negatives": 5, f"{key}/invalid": 5})
        items[f"{key}/exact"] = [(i, float(i % 10 != 0)) for i in range(20)]
    return metrics, items


def write_job(root: Path, sweep: str, arm: str, seed: int) -> None:
    job = root / f"{arm}_seed{seed}" if sweep == "scratch" else root / f"study_{arm}_seed{seed}"
    job.mkdir(parents=True)
    overrides = [f"experiment={sweep}", f"+experiment/{sweep}={arm}", f"seed={seed}"]
    write_json_atomic(job / JOB_FILE, {"status": "completed", "run_name": job.name, "overrides": overrides,
                                       "job_num": seed, "sweep_dir": str(root), "schema": "TrainConfig",
                                       "host": "test", "started": "2026-01-01T00:00:00", "seconds": 60.0,
                                       "config": {"seed": seed, "experiment_name": sweep,
                                                  "attn": {"variant": "vanilla"}}})
    evals = ("vqa", "mmneedle_paper", "mmneedle_official_n3", "distractors")
    write_json_atomic(job / METRICS_FILE, {"run_name": job.name, "experiment": sweep, "seed": seed,
                                           "train_steps": 150, "total_seconds": 60.0,
                                           "evals": {name: f"{EVALS_DIR}/{name}" for name in evals}})
    right = 0.9 if arm == "vanilla" else 0.7
    write_eval(job, "vqa", "vqa", seed, {"test/vqa_accuracy_official": right},
               {"test/vqa_accuracy_official": [(f"q{i}", float(i < 10 * right)) for i in range(10)]})
    # paper mode asks two questions per haystack: 10 unparseable replies of 20 questions is half
    write_eval(job, "mmneedle_paper", "mmneedle", seed,
               {"mmneedle/mode": "paper", "mmneedle/exact": 0.4, "mmneedle/column": 0.8, "mmneedle/samples": 10,
                "mmneedle/positives": 10, "mmneedle/negatives": 0, "mmneedle/invalid": 10 if arm != "vanilla" else 0},
               {"mmneedle/exact": [(i, float(i < 4)) for i in range(10)],
                "mmneedle/column": [(i, float(i < 8)) for i in range(10)]})
    write_eval(job, "mmneedle_official_n3", "mmneedle", seed,
               {"mmneedle/mode": "official", "mmneedle/exact": 0.25, "mmneedle/samples": 10,
                "mmneedle/positives": 8, "mmneedle/negatives": 2, "mmneedle/invalid": 3},
               {"mmneedle/exact": [(i, float(i < 2)) for i in range(8)]})
    write_eval(job, "distractors", "distractors", seed, *distractor_metrics(arm, seed))
    if arm == "diff_split":  # the fine-tune's lambda history, as LambdaHistory writes it: moved 0.1, 0.1, 0.01
        records = [{"step": 0, "text/layer0": 0.3}, {"step": 150, "text/layer0": 0.4 if seed < 3 else 0.31}]
        (job / LAMBDA_HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    if sweep == "scratch":
        lam = LAMBDA.get(arm, {})
        record = {"start": {layer: by_seed[seed][0] for layer, by_seed in lam.items()},
                  "end": {layer: by_seed[seed][1] for layer, by_seed in lam.items()}}
        if arm.startswith("diff_v2"):  # V2's lambda depends on the token: a spread over the probe batch
            record["start"].update({f"{layer}/std": 0.0 for layer in lam})
            record["end"].update({f"{layer}/std": 0.04 for layer in lam})
        write_json_atomic(job / BASE_RECORD_FILE, {"directory": "/bases/x", "key": f"{arm}-{seed}",
                                                   "attn": {"variant": arm}, "build_seconds": 100.0,
                                                   "lambda": record if lam else {}})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scratch") / "sweep"
    for arm in HARD_SLOPES:
        for seed in SEEDS:
            write_job(root, "scratch", arm, seed)
    write_job(root, "study", "vanilla", 1)  # a study job in the same folder: its own section, not the arm's
    return root


def test_least_squares_slope():
    assert least_squares_slope([0, 1, 2], [0, 2, 1]) == pytest.approx(0.5)
    assert least_squares_slope([0, 1, 3, 7], [0.9, 0.88, 0.84, 0.76]) == pytest.approx(-0.02)
    assert least_squares_slope([3, 3], [0.1, 0.5]) is None  # one count: no line


def test_slopes_over_seeds_and_paired_against_vanilla(sweep):
    settings = settings_of(load_jobs(sweep), SCRATCH)
    assert list(settings) == ["vanilla", "diff_split", "diff_v2_plain"]  # the study job is not an arm
    hard = slope_estimates(settings)[(2, 1, "hard")]
    vanilla, none = hard["vanilla"]
    half = T2 * 0.01 / math.sqrt(3)
    assert none is None and vanilla.n == 3 and vanilla.mean == pytest.approx(-0.02)
    assert (vanilla.low, vanilla.high) == (pytest.approx(-0.02 - half), pytest.approx(-0.02 + half))
    split, paired = hard["diff_split"]
    assert split.mean == pytest.approx(-0.05)
    assert paired.n == 3 and paired.mean == pytest.approx(-0.03) and paired.high == pytest.approx(-0.03 + half)
    assert paired.high < 0  # falls faster than vanilla: the paired interval excludes 0
    _, v2_paired = hard["diff_v2_plain"]  # per-seed differences 0.01, -0.01, 0: level with vanilla
    assert v2_paired.mean == pytest.approx(0.0) and v2_paired.low < 0 < v2_paired.high
    _, easy = slope_estimates(settings)[(2, 1, "easy")]["diff_split"]
    assert easy.mean == pytest.approx(0.0)


def test_lambda_moved_flag_per_layer(sweep):
    settings = settings_of(load_jobs(sweep), SCRATCH)
    assert layer_lambdas(settings["vanilla"]) == []
    first, second = layer_lambdas(settings["diff_split"])
    assert first.layer == "text/layer0" and first.moved and first.seeds_moved == 3
    assert first.change.mean == pytest.approx(0.10) and first.start.mean == pytest.approx(0.2)
    assert first.change.high - first.change.mean == pytest.approx(T2 * 0.02 / math.sqrt(3))
    # mean change 0.02 < MOVED although one seed moved 0.06
    assert second.change.mean == pytest.approx(0.02) and second.change.mean < MOVED
    assert not second.moved and second.seeds_moved == 1
    (v2,) = layer_lambdas(settings["diff_v2_plain"])
    assert not v2.moved and v2.end_std == pytest.approx(0.04)


def test_invalid_share_counts_every_question_asked():
    assert invalid_share({"mmneedle/mode": "paper", "mmneedle/samples": 10, "mmneedle/invalid": 10},
                         "mmneedle/") == pytest.approx(0.5)
    assert invalid_share({"mmneedle/mode": "official", "mmneedle/positives": 8, "mmneedle/negatives": 2,
                          "mmneedle/invalid": 3}, "mmneedle/") == pytest.approx(0.3)
    assert invalid_share({"mmneedle/exact": 0.5}, "mmneedle/") is None


def test_the_report_writes_scratch_md_csv_and_small_multiples(sweep, tmp_path):
    written = write_report(load_jobs(sweep), tmp_path, str(sweep))
    for name in (SCRATCH.markdown, SCRATCH.csv, "scratch_distractors_exact.png", STUDY.markdown, STUDY.csv):
        assert written[name].stat().st_size > 0, name
    text = written["scratch.md"].read_text()
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")}
    assert "MMNeedle official, M=1 N=3: exact" in sections["Every evaluation"]
    assert "| 0.500 ± 0.000 (n=3) |" in sections["Every evaluation"]  # diff_split's paper-mode invalid share
    slopes = sections["Distractor slopes (exact against k, least squares per seed)"]
    row = "| N2/M1/hard | diff_split | 0.900 ± 0.000 (n=3) | -0.0500 ± 0.0497 (n=3) | -0.0300 ± 0.0248 (n=3) ▼ |"
    assert row in slopes  # exact at k = 0, the slope over seeds, the paired difference: falls faster
    lam = sections["Lambda at the end of pretraining (base.json)"]
    assert "| diff_split | text/layer0 | 0.200 |" in lam and "| yes | 3 of 3 |" in lam and "| no | 1 of 3 |" in lam
    assert "- diff_v2_plain: lambda moved by at least 0.05 (mean over seeds) in 0 of 1" in lam
    assert "vanilla" not in lam.split("\n- ")[0].split("\n", 2)[2]  # no lambda row for vanilla
    tuned = sections["Lambda after the fine-tune"]
    assert "| diff_split | text/layer0: 0.370 ± 0.129 (n=3), moved in 2 of 3 |" in tuned
    with written["scratch.csv"].open() as handle:
        rows = {(r["setting"], r["evaluation"], r["key"]): r for r in csv.DictReader(handle)}
    slope = rows[("diff_split", "distractors", "distractors/N2/M1/hard/slope")]
    assert float(slope["mean"]) == pytest.approx(-0.05) and float(slope["diff"]) == pytest.approx(-0.03)
    assert float(rows[("diff_split", "base", "base/lambda/text/layer0")]["mean"]) == pytest.approx(0.10)
    assert float(rows[("diff_split", "mmneedle_paper", "mmneedle/exact")]["invalid"]) == pytest.approx(0.5)
    assert float(rows[("vanilla", "mmneedle_official_n3", "mmneedle/exact")]["invalid"]) == pytest.approx(0.3)
    assert rows[("vanilla", "vqa", "test/vqa_accuracy_official")]["invalid"] == ""  # not a location figure
    assert ("- diff_split: accuracy falls faster with k than vanilla's on 1 of 2 distractor curves, slower on 0; "
            "largest: N2/M1/hard, -0.0300 per distractor") in sections["Findings"]
    assert "- diff_v2_plain: accuracy falls faster with k than vanilla's on 0 of 2" in sections["Findings"]
    study = written["results.md"].read_text()
    assert "| diff_split |" not in study and "1 runs from" in study and "## The paper, side by side" in study


def test_the_readme_summary_says_which_misses_were_out_of_format(sweep, tmp_path):
    written = write_report(load_jobs(sweep), tmp_path, str(sweep))
    rows = [r for r in read_study_csv(written["scratch.csv"]) if r["evaluation"] == "mmneedle_paper"]
    table = summary_table(rows)
    assert "| diff_split | 0.400 ± 0.000 (0.50 out of format) |" in table
    assert "| vanilla | 0.400 ± 0.000 |" in table  # no reply out of format: nothing added

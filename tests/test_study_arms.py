"""The study's arms and what they need: the learning curve (evaluations during the fit, which leave the fit as it
was), an arm with fewer seeds than its sweep, the capacity-matched vanilla control, and the report's arms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_train
from safetensors.torch import load_file

from diffpali.config import ConfigError, TrainConfig, to_typed
from diffpali.report.curves import curve_points, curve_table
from diffpali.report.runs import Job, load_jobs
from diffpali.report.sweeps import by_arm

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
FIT = ["scale=cpu_smoke", "data.train_limit=48", "data.batch_size=8", "logger=none", "test_after_fit=false",
       "trainer.max_steps=6", "lora.dropout=0.1",  # dropout: the fit draws from torch's generator at every step
       "+evals={mmneedle_paper:{task:mmneedle,mode:paper,samples:4}}", "trainer.enable_progress_bar=false"]


def composed(*overrides: str) -> TrainConfig:
    return to_typed(compose_train("output_dir=.", *overrides), TrainConfig)


def train(run_dir: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "train.py", *FIT, *extra, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_the_learning_curve_scores_during_the_fit_and_leaves_the_fit_unchanged(tmp_path):
    train(tmp_path / "curve", "curve.steps=[2,4]")
    train(tmp_path / "plain")
    curve_job = load_jobs(tmp_path / "curve")[0]
    points = curve_points(curve_job)
    assert set(points) == {"mmneedle_paper"} and set(points["mmneedle_paper"]) == {2, 4}
    assert all("mmneedle/exact" in metrics for metrics in points["mmneedle_paper"].values())
    assert "mmneedle_paper@2" not in load_jobs(tmp_path / "plain")[0].evals
    table = curve_table({"vanilla": [curve_job]})
    assert "step 2" in table and "step 4" in table and "MMNeedle paper 2x2 exact" in table
    with_curve = load_file(tmp_path / "curve" / "adapter" / "adapter_model.safetensors")
    without = load_file(tmp_path / "plain" / "adapter" / "adapter_model.safetensors")
    assert with_curve.keys() == without.keys()
    assert all((with_curve[k] == without[k]).all() for k in with_curve)  # the same weights, bit for bit


def test_a_seed_beyond_its_arm_runs_nothing_and_leaves_no_record(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "-m", "experiment=study", "+experiment/study=scratch_vanilla",
                           "seed=4,5", f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("beyond this arm's 3 seeds") == 2
    assert not list(tmp_path.rglob("job.json")) and not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize("overrides, message", [
    (["curve.steps=[4,2]"], "curve.steps"),
    (["curve.steps=[0]"], "curve.steps"),
    (["experiment=study", "curve.steps=[2]", "curve.evals=[nope]"], "curve.evals"),
    (["curve.steps=[2]"], "needs evals"),
    (["arm_seeds=0"], "arm_seeds"),
])
def test_bad_curve_and_arm_settings_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        composed(*overrides)


def test_the_rank_control_has_at_least_the_trainable_parameters_of_every_fair_differential_setting():
    from diffpali.model import build_model

    def trainable(setting: str) -> int:
        cfg = composed("experiment=study", f"+experiment/study={setting}")
        model, _ = build_model(cfg.model, cfg.attn, cfg.ffn, cfg.lora)
        return model.get_nb_trainable_parameters()[0]

    largest = max(trainable(s) for s in ("fair_diff_dup", "fair_diff_v2", "fair_diff_split_transfer"))
    control = composed("experiment=study", "+experiment/study=fair_vanilla_rank").lora
    assert trainable("fair_vanilla_rank") >= largest > trainable("fair_vanilla")
    one_less = composed("experiment=study", "+experiment/study=fair_vanilla", f"lora.rank={control.rank - 1}")
    fewer, _ = build_model(one_less.model, one_less.attn, one_less.ffn, one_less.lora)
    assert fewer.get_nb_trainable_parameters()[0] < largest  # the smallest rank that matches


def test_every_arm_is_paired_with_its_own_vanilla():
    names = ["vanilla", "diff_split", "fair_vanilla", "fair_vanilla_rank", "fair_diff_dup", "scratch_diff_split",
             "scratch_vanilla"]
    arms = by_arm({name: [Job(name, "completed")] for name in names})
    assert [arm.name for arm in arms] == ["paper", "fair", "scratch"]
    fair = arms[next(a for a in arms if a.name == "fair")]
    assert list(fair) == ["vanilla", "diff_dup", "vanilla_rank"]  # the baseline first
    assert fair["vanilla"][0].path == "fair_vanilla"
    assert [j.path for j in arms[next(a for a in arms if a.name == "scratch")]["vanilla"]] == ["scratch_vanilla"]


def test_the_study_composes_every_arm():
    settings = sorted(p.stem for p in (ROOT / "conf/experiment/study").glob("*.yaml"))
    arms = {name: composed("experiment=study", f"+experiment/study={name}") for name in settings}
    assert {n for n, c in arms.items() if c.arm_seeds == 3} == {n for n in settings if n.startswith("scratch_")}
    fair = {n: c for n, c in arms.items() if n.startswith("fair_")}
    assert all(c.trainer.max_steps == 300 and c.curve.steps == [75, 150, 300] and c.data.rehearsal > 0
               for c in fair.values())
    assert all(c.attn.lambda_warmup_steps > 0 and not getattr(c.attn, "head_norm", False)
               for n, c in fair.items() if "vanilla" not in n)
    assert {n for n, c in fair.items() if c.transfer_steps} == {n for n in fair if n.endswith("_transfer")}
    paper = {n: c for n, c in arms.items() if not n.startswith(("fair_", "scratch_"))}
    assert all(c.trainer.max_steps == -1 and not c.curve.steps and c.data.train_limit == 4800 for c in paper.values())


def test_a_smoke_study_runs_two_seeds_of_every_arm():
    smoke = {name: composed("experiment=study", f"+experiment/study={name}", "scale=cpu_smoke")
             for name in ("vanilla", "fair_diff_dup", "scratch_diff_split")}
    assert all(cfg.arm_seeds == 2 for cfg in smoke.values())
    assert composed("experiment=study", "+experiment/study=vanilla").arm_seeds is None


def test_forgetting_sets_each_paper_gap_beside_the_fair_gap_of_the_same_variant():
    from diffpali.report.readme import forgetting_lines

    def row(setting, key, diff, low, high):
        return {"setting": setting, "evaluation": "mmneedle_paper", "key": key, "metric": key, "diff": diff,
                "diff_low": low, "diff_high": high}

    rows = [row("diff_dup_separate", "exact", -0.9, -0.95, -0.85), row("fair_diff_dup", "exact", -0.1, -0.2, 0.0),
            row("diff_dup_separate", "column", -0.4, -0.5, -0.3), row("fair_diff_dup", "column", -0.3, -0.4, -0.2),
            row("diff_dup_separate", "row", 0.01, -0.02, 0.04), row("fair_diff_dup", "row", -0.5, -0.6, -0.4),
            row("diff_split", "exact", -0.5, -0.6, -0.4)]  # no fair counterpart scored: no line
    (line,) = forgetting_lines(rows)
    assert line.startswith("diff_dup_separate → fair_diff_dup: of the 2 figures where the paper-style retrofit is "
                           "below its vanilla, the fair one is below its own on 1")
    assert "median share of the gap closed 89% (from 25% to 89%)" in line  # 1 - 0.1/0.9 and 1 - 0.3/0.4
    assert "largest: exact, -0.900" in line

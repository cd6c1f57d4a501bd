"""The embedded default, measured: VQA score reached and wall time of each phase.

    python benchmarks/embedded_default.py [extra train.py overrides ...]

Runs ``python train.py`` (tiny PaliGemma LoRA-fine-tuned on easy-vqa, CPU) in a subprocess and
prints its phases: the shipped base's build (read from its build_info.json: the build is run once,
by ``python -m diffpali.basecard``), the LoRA fine-tune and the test-split scoring, with the score
beside the question-only baseline and the base's own. Scores use the official VQAv2 convention.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffpali.data.easy_vqa import question_only_baseline  # noqa: E402
from diffpali.paths import SHIPPED_TINY_DIR  # noqa: E402


def main() -> None:
    build = json.loads((SHIPPED_TINY_DIR / "build_info.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        subprocess.run(
            [sys.executable, "train.py", "logger=csv", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp}",
             *sys.argv[1:]],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )
        wall = time.time() - started
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    key = "test/vqa_accuracy_official"
    baseline = question_only_baseline("test")
    stages = [build.get(stage, {}) for stage in ("stage0", "stage1")]
    rows = [
        (f"base build (shipped, {build['device']})", sum(s.get("train_seconds") or 0 for s in stages),
         f"stage 0 {stages[0].get('steps')} + stage 1 {stages[1].get('steps')} steps, once"),
        ("LoRA fine-tune", metrics["fit_seconds"], f"{metrics['train_steps']} steps"),
        ("test scoring (generation)", metrics["test_seconds"], ""),
        ("train.py end to end", wall, "process start to exit"),
    ]
    print(f"{'phase':<30}{'wall time':>12}")
    for label, seconds, note in rows:
        print(f"{label:<30}{seconds:>10.0f} s" + (f"  ({note})" if note else ""))
    print()
    print("easy-vqa test, official VQAv2 convention   overall  yes/no  color  shape")
    def row(name: str, v: dict) -> None:
        print(f"{name:<42} {v['overall']:.3f}   {v['yes/no']:.3f}   {v['color']:.3f}  {v['shape']:.3f}")

    row("question-only baseline", baseline)
    base = build["benchmarks"]["vqa_test"]["scores"]
    categories = ("yes/no", "color", "shape")
    row("shipped base (before LoRA)", {"overall": base[key], **{c: base[f"{key}/{c}"] for c in categories}})
    fine_tuned = {c: metrics[f"{key}/{c}"] for c in ("yes/no", "color", "shape")}
    row("LoRA fine-tuned (python train.py)", {"overall": metrics[key], **fine_tuned})


if __name__ == "__main__":
    main()

"""The attention analysis (``evaluate.py eval=attention``): one line per (run, text layer), and one plot
of every run's per-layer curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evals.attention.plots import CURVES_FILE, PREFIX, layer_curves
from .format import diff_attn_label, md_section, md_table, pct, write_csv
from .runs import Job
from .section import Report, Section
from .stats import finite

ATTENTION_PREFIX = f"{PREFIX}/layer"
ATTENTION_GROUPS = ("needle", "distractor", "text", "needle_of_image", "lambda", "prompt_rows/needle_of_image")


def attention_layers(job: Job) -> dict[int, dict[str, float]]:
    """``{layer: {group: value}}`` from a completed eval=attention run's per-layer means (heads averaged)."""
    if job.status != "completed":
        return {}
    out: dict[int, dict[str, float]] = {}
    for key, value in job.metrics.items():
        if not key.startswith(ATTENTION_PREFIX) or finite(value) is None:
            continue
        layer, _, group = key[len(ATTENTION_PREFIX):].partition("/")
        if layer.isdigit() and group in ATTENTION_GROUPS:
            out.setdefault(int(layer), {})[group] = float(value)
    return dict(sorted(out.items()))


def attention_label(job: Job) -> str:
    """What an eval=attention run measured: the base, or the scored (or scoring) run's attention variant, and
    the run."""
    if job.get("ckpt") is None and job.evals:  # a train.py run's own evaluation after its fit
        return f"{job.metrics.get('attention/variant') or diff_attn_label(job)} ({job.path})"
    if job.get("ckpt") in (None, "base"):
        return "base"
    variant = job.metrics.get("attention/variant") or diff_attn_label(job)
    return f"{variant} ({Path(str(job.get('ckpt'))).name})"


def attention_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    """One line per (eval=attention run, text layer), base first."""
    measured = sorted((j for j in jobs if attention_layers(j)),
                      key=lambda j: (j.get("ckpt") not in (None, "base"), j.path))
    rows = []
    for job in measured:
        for layer, values in attention_layers(job).items():
            rows.append({"run": job.path, "model": attention_label(job), "layer": layer,
                         "questions": job.metrics.get("attention/questions"),
                         "needle_sem": job.metrics.get(f"{ATTENTION_PREFIX}{layer}/needle_sem"),
                         **{g: values.get(g) for g in ATTENTION_GROUPS}})
    return rows


ATTENTION_CSV_FIELDS = ["run", "model", "layer", "questions", *ATTENTION_GROUPS, "needle_sem"]


def attention_markdown(jobs: list[Job], source: str) -> str:
    rows = attention_rows(jobs)
    header = ["model", "layer", "needle (%)", "other cells (%)", "text (%)", "needle / image (%)",
              "prompt rows: needle / image (%)", "lambda", "questions"]
    lines = [[r["model"], r["layer"], pct(r["needle"], r["needle_sem"]), pct(r["distractor"], None),
              pct(r["text"], None),
              pct(r["needle_of_image"], None), pct(r["prompt_rows/needle_of_image"], None),
              "—" if r["lambda"] is None else f"{r['lambda']:.3f}", r["questions"]] for r in rows]
    chance = next((j.metrics.get("attention/chance_needle_of_image") for j in jobs if attention_layers(j)), None)
    note = (
        "Attention of the answer rows (the positions that predict the answer tokens) of the text decoder on "
        "MMNeedle positives (`evaluate.py eval=attention`): the share of each row's net attention on the needle "
        "cell's image tokens, on the other cells' image tokens and on the text, averaged over heads, rows and "
        "questions (needle ± standard error over haystacks). For differential layers the map is "
        "softmax(Q1K1) − λ·softmax(Q2K2), whose shares can fall below 0. `needle / image`: the needle cell's part "
        "of the attention on the image" + (f" (chance {pct(chance, None)}%)" if chance else "") + "; — where the rows "
        "give the image less than 1e-6. The prompt rows (bos, the question with its caption, the newline) are "
        "measured the same way."
    )
    return md_section("Attention on the needle", note, source, md_table(header, lines))


def write(report: Report) -> dict[str, Path]:
    """attention.md/.csv and attention_layers.png (every eval=attention run's per-layer curves on one plot)."""
    jobs, out, source = report.jobs, report.out, report.source
    measured = [j for j in jobs if attention_layers(j)]
    written = {"attention.md": out / "attention.md", "attention.csv": out / "attention.csv"}
    written["attention.md"].write_text(attention_markdown(jobs, source))
    write_csv(written["attention.csv"], attention_rows(jobs), ATTENTION_CSV_FIELDS)
    runs: dict[str, dict[str, Any]] = {}
    for job in measured:  # two runs of one label (seeds, settings) stay two curves
        label = attention_label(job)
        runs[label if label not in runs else f"{label} [{job.path}]"] = job.metrics
    written[CURVES_FILE] = layer_curves(runs, out / CURVES_FILE, f"eval=attention runs in {source}")
    return written


SECTION = Section("attention", has_results=lambda job: bool(attention_layers(job)), write=write)

"""POPE (``evaluate.py eval=pope``): object hallucination, one line per (group of runs, POPE setting).

POPE results in ``metrics.json``, for each setting (random, popular, adversarial):
``pope/<setting>/<metric>`` with metric in accuracy, precision, recall, f1, yes_ratio (fractions in
[0, 1], "yes" the positive class) and ``other`` (replies neither yes nor no).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .format import diff_attn_label, md_section, md_table, percent_columns, write_csv
from .runs import Job, scored_run
from .section import Report, Section
from .stats import finite, mean_std

POPE_PREFIX = "pope/"
POPE_SETTINGS = ("random", "popular", "adversarial")
#: the five POPE metrics, fractions in [0, 1] ("yes" is the positive class)
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
#: overrides of an evaluate.py run that do not change what it measures
#: (eval.setting only picks which of the same cached probes are asked)
_POPE_IGNORED = ("ckpt", "seed", "logger", "hydra", "device", "eval.setting", "eval.batch_size", "eval.cache_dir")


def pope_scores(job: Job) -> dict[str, dict[str, float]]:
    """``{setting: {metric: value}}`` from a completed run's ``pope/<setting>/<metric>`` keys."""
    if job.status != "completed":
        return {}
    out: dict[str, dict[str, float]] = {}
    for setting in POPE_SETTINGS:
        for metric in (*POPE_METRICS, "other"):
            value = finite(job.metrics.get(f"{POPE_PREFIX}{setting}/{metric}"))
            if value is not None:
                out.setdefault(setting, {})[metric] = value
    return out


def _pope_group_key(job: Job) -> tuple[Any, str, str]:
    """(Table 1 row, what was scored, how): runs of one training setting over seeds share a key.

    What was scored is the base, or the scored run's overrides without its seed (and Table 1 row
    selector), or the checkpoint path when that run's job.json is gone; how is the evaluate.py
    overrides that change the probes (e.g. ``eval.probe_images=100``).
    """
    scored = scored_run(job.get("ckpt"))
    if job.get("ckpt") in (None, "base"):
        model = "base"
    elif scored is None:
        model = f"ckpt={job.get('ckpt')}"
    else:
        overrides = [str(o) for o in scored.get("overrides") or []]
        model = Job("", "completed", scored.get("config") or {}, overrides).setting
    how = [o for o in job.overrides if not o.split("=", 1)[0].lstrip("+~").startswith(_POPE_IGNORED)]
    return job.table_row, model, ",".join(sorted(how))


def pope_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    """One line per (group of runs, POPE setting): mean ± sample std over the group's runs, in percent."""
    groups: dict[tuple[Any, str, str], list[Job]] = {}
    for job in jobs:
        if pope_scores(job):
            groups.setdefault(_pope_group_key(job), []).append(job)
    rows = []
    order = lambda key: (key[1] != "base", key[0] is None, key[0] or 0, key[1], key[2])  # noqa: E731 - base first
    for (table_row, model, how), members in sorted(groups.items(), key=lambda kv: order(kv[0])):
        scored = scored_run(members[0].get("ckpt"))
        label = "base (no adapter)" if model == "base" else diff_attn_label(
            Job("", "completed", (scored or {}).get("config") or members[0].config))
        for setting in POPE_SETTINGS:
            runs = [pope_scores(j)[setting] for j in members if setting in pope_scores(j)]
            if not runs:
                continue
            row: dict[str, Any] = {"row": table_row if table_row is not None else "", "model": label,
                                   "scored": model, "eval_setting": how, "pope_setting": setting, "n": len(runs)}
            for metric in POPE_METRICS:
                mean, std, _ = mean_std(r[metric] for r in runs if metric in r)
                row.update(percent_columns(metric, mean, std))
            other, _, _ = mean_std(r["other"] for r in runs if "other" in r)
            row["other"] = None if other is None else round(other, 1)
            rows.append(row)
    return rows


POPE_CSV_FIELDS = ["row", "model", "scored", "eval_setting", "pope_setting", "n", "other"] + [
    f"{m}_{s}_pct" for m in POPE_METRICS for s in ("mean", "std")]


def pope_markdown(jobs: list[Job], source: str) -> str:
    rows = pope_rows(jobs)
    show_how = any(r["eval_setting"] for r in rows)
    header = ["row", "diff attn", "scored run", "POPE setting", "n", "accuracy (%)", "precision (%)", "recall (%)",
              "F1 (%)", "yes-ratio (%)", "other"] + (["eval setting"] if show_how else [])
    lines = []
    for r in rows:
        line = [r["row"], r["model"], f"`{r['scored']}`" if r["scored"] else "—", r["pope_setting"], r["n"],
                *(r[m] for m in POPE_METRICS), r["other"]]
        lines.append(line + ([f"`{r['eval_setting']}`" if r["eval_setting"] else ""] if show_how else []))
    note = (
        "POPE (`evaluate.py eval=pope`): balanced yes/no questions \"is there a {object} in the image?\", half about "
        "present objects, half about absent ones drawn at random, among the most frequent objects (popular) or "
        "among those that co-occur most with the present ones (adversarial). \"yes\" is the positive class; "
        "precision, recall and F1 are over \"yes\"; a yes-ratio far above 50% means the model says objects "
        "are there when they are not (hallucination). `other`: replies that were neither yes nor no (mean count "
        "per run; scored as wrong). Mean ± sample std over runs (n), in percent; every model is asked the same "
        "cached probes."
    )
    return md_section("POPE: object hallucination", note, source, md_table(header, lines))


def write(report: Report) -> dict[str, Path]:
    written = {"pope.md": report.out / "pope.md", "pope.csv": report.out / "pope.csv"}
    written["pope.md"].write_text(pope_markdown(report.jobs, report.source))
    write_csv(written["pope.csv"], pope_rows(report.jobs), POPE_CSV_FIELDS)
    return written


SECTION = Section("pope", has_results=lambda job: bool(pope_scores(job)), write=write)

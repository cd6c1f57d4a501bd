"""Table 2 of the paper: MMNeedle (``evaluate.py eval=mmneedle``), every model scored the same way.

MMNeedle results in ``metrics.json``, all fractions in [0, 1]: ``mmneedle/exact`` (answer entirely
right: image index, row and column, on positives), ``mmneedle/index`` (image index right, on
positives), ``mmneedle/existence`` ("-1" predicted exactly when the needle is absent, on all samples),
``mmneedle/row`` and ``mmneedle/column`` (paper mode: one of the two questions right), and
``mmneedle/cell_r{r}_c{c}`` (exact accuracy of the positives whose needle is in row r, column c,
1-based; the per-cell heatmap).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .format import diff_attn_label, md_section, md_table, percent_columns, write_csv
from .runs import Group, Job, group_jobs
from .section import Report, Section
from .stats import mean_std

NEEDLE_PREFIX = "mmneedle/"
_CELL = re.compile(r"^mmneedle/cell_r(\d+)_c(\d+)$")
#: exact/index/existence: the official mode; row/column: the paper's two questions, beside exact
NEEDLE_METRICS = ("exact", "index", "existence", "row", "column")
#: The paper's Table 2 (MMNeedle M=1, N=2, 200 samples, two-question protocol), percent.
PAPER_TABLE2 = {"baseline PaliGemma": 28.75, "fine-tuned PaliGemma": 30.42, "fine-tuned with diff attn": 34.72}


def needle_scores(job: Job) -> dict[str, float]:
    """A completed job's finite ``mmneedle/...`` metrics."""
    return job.finite_metrics(NEEDLE_PREFIX)


def needle_cells(jobs: list[Job]) -> list[tuple[int, int]]:
    cells = set()
    for job in jobs:
        for key in needle_scores(job):
            m = _CELL.match(key)
            if m:
                cells.add((int(m.group(1)), int(m.group(2))))
    return sorted(cells)


def table2_rows(groups: list[Group], cells: list[tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        with_needle = [j for j in group.jobs if needle_scores(j)]
        if not with_needle:
            continue
        row: dict[str, Any] = {
            "row": group.table_row if group.table_row is not None else "",
            "diff_attn": diff_attn_label(group.first),
            "setting": group.setting,
            "n": len(with_needle),
            "failed": group.count("failed") + group.count("incomplete"),
        }
        scores = [needle_scores(j) for j in with_needle]
        for metric in NEEDLE_METRICS:
            key = f"{NEEDLE_PREFIX}{metric}"
            mean, std, _ = mean_std(s[key] for s in scores if key in s)
            columns = percent_columns(metric, mean, std)
            row["row_side" if metric == "row" else metric] = columns.pop(metric)  # "row" names the Table 1 row
            row.update(columns)
        for r, c in cells:
            key = f"{NEEDLE_PREFIX}cell_r{r}_c{c}"
            mean, _, _ = mean_std(s[key] for s in scores if key in s)
            row[f"cell_r{r}_c{c}"] = None if mean is None else round(100 * mean, 2)
        rows.append(row)
    return rows


def table2_markdown(jobs: list[Job], source: str) -> str:
    groups = group_jobs(jobs)
    cells = needle_cells(jobs)
    rows = table2_rows(groups, cells)
    show_setting = any(r["setting"] for r in rows)
    header = ["row", "diff attn", "n", "exact (%)", "index (%)", "existence (%)", "row only (%)", "column only (%)"]
    header += [f"r{r}c{c} (%)" for r, c in cells]
    if show_setting:
        header.append("setting")
    lines = []
    for r in rows:
        line = [r["row"], r["diff_attn"], r["n"], r["exact"], r["index"], r["existence"], r["row_side"], r["column"]]
        line += ["—" if r[f"cell_r{a}_c{b}"] is None else f"{r[f'cell_r{a}_c{b}']:.2f}" for a, b in cells]
        if show_setting:
            line.append(f"`{r['setting']}`" if r["setting"] else "")
        lines.append(line)
    paper = ", ".join(f"{k} {v:.2f}" for k, v in PAPER_TABLE2.items())
    note = (
        "MMNeedle, every model scored the same way: a needle counts only if row AND column are right "
        "(chance 25% for 2×2). `exact`: whole answer right, on positives; `index`: image index right, on "
        "positives; `existence`: -1 exactly when the needle is absent; r{r}c{c}: exact accuracy of the "
        "positives whose needle is in that cell (row, column 1-based); `row only`/`column only` (paper mode): "
        "one of the two questions right, shown beside exact, never instead of it. "
        "Mean ± sample std over runs (n), in percent. "
        f"Paper (its Table 2, M=1, N=2, 200 samples, 'index accuracy' = the cell is right): {paper}; "
        "its released scorer graded the diff model on the column only (chance 50%), so those numbers are "
        "not comparable with these."
    )
    return md_section("Table 2: MMNeedle", note, source, md_table(header, lines))


def write(report: Report) -> dict[str, Path]:
    cells = needle_cells(report.jobs)
    written = {"table2.md": report.out / "table2.md", "table2.csv": report.out / "table2.csv"}
    written["table2.md"].write_text(table2_markdown(report.jobs, report.source))
    fields = ["row", "diff_attn", "setting", "n", "failed"]
    fields += [f"{m}_{s}_pct" for m in NEEDLE_METRICS for s in ("mean", "std")]
    fields += [f"cell_r{r}_c{c}" for r, c in cells]
    write_csv(written["table2.csv"], table2_rows(group_jobs(report.jobs), cells), fields)
    return written


SECTION = Section("table2", has_results=lambda job: bool(needle_scores(job)), write=write)

"""Table 1 (and Table 2) of the paper from the runs of a sweep: no W&B account needed.

    python -m diffpali.report multirun/table1/2025-01-31_12-00-00             # prints; writes table1.md/.csv there
    python -m diffpali.report multirun/table1/2025-01-31_12-00-00 --out reports/
    python -m diffpali.report --wandb ENTITY/PROJECT [--group GROUP] --out reports/   # the same from W&B

Every job directory under the sweep directory (found at any depth) is read; nothing is dropped:
a job that failed, or never finished, is listed as such beside the table.

What a job directory holds (the contract this module reads)
-----------------------------------------------------------
``job.json`` (written by :func:`diffpali.cli.run_job`)
    ``status`` (running | completed | failed), ``run_name``, ``overrides`` (the job's command-line
    overrides), ``config`` (the whole validated config: ``config.table_row``, ``config.attn.variant``,
    ``config.optim.lr``, ...). Older runs without it are read from Hydra's ``.hydra/config.yaml`` and
    ``.hydra/overrides.yaml``.
``metrics.json`` (written by :func:`diffpali.runner.train` / ``evaluate``)
    ``test/vqa_accuracy_official``: the official VQAv2 accuracy of the test split, a fraction in
    [0, 1] (an ``evaluate.py`` result counts too: ``test/vqa_accuracy`` with ``"convention": "official"``).
    MMNeedle results (``evaluate.py eval=mmneedle``), all fractions in [0, 1]:
      ``mmneedle/exact``      answer entirely right (image index, row and column) on positives;
      ``mmneedle/index``      image index right, on positives;
      ``mmneedle/existence``  "-1" predicted exactly when the needle is absent, on all samples;
      ``mmneedle/cell_r{r}_c{c}``  exact accuracy of the positives whose needle is in row r, column c
                              (1-based; the per-cell heatmap).
POPE results (``evaluate.py eval=pope``), for each setting (random, popular, adversarial):
      ``pope/<setting>/<metric>``  metric in accuracy, precision, recall, f1, yes_ratio (fractions in
                              [0, 1], "yes" the positive class) and ``other`` (replies neither yes nor no).
``failed.json`` (written by :func:`diffpali.cli.run_job` when the job raised)
    ``error_type``, ``message``, ``traceback``.

Status of a job: ``failed`` if failed.json exists; ``incomplete`` if job.json still says running or
there is no metrics.json (a job killed by a time limit cannot write failed.json); else ``completed``.

Jobs are grouped by Table 1 row and by their overrides other than ``seed`` (and the row selector),
so each row reports mean ± sample standard deviation over seeds, with n. Scores are shown in percent,
beside the paper's percentages. Which model and dataset a number comes from is in the table: the
paper's column is VQAv2 on PaliGemma 3B; a tiny-model easy-vqa number is a plumbing check, not a
reproduction.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .attention import variant_for

METRIC = "test/vqa_accuracy_official"
NEEDLE_PREFIX = "mmneedle/"
JOB_FILE, METRICS_FILE, FAILED_FILE = "job.json", "metrics.json", "failed.json"
_CELL = re.compile(r"^mmneedle/cell_r(\d+)_c(\d+)$")
#: exact/index/existence: the official mode; row/column: the paper's two questions, beside exact
NEEDLE_METRICS = ("exact", "index", "existence", "row", "column")


@dataclass(frozen=True)
class PaperRow:
    row: int
    attn: str  #: our attn.variant
    diff_attn: str  #: as the paper's table says it
    ffn: str
    lr: float
    rank: int
    alpha: int
    weight_decay: float
    vqav2: float  #: the paper's VQAv2 score, percent


#: The paper's Table 1 (VQAv2, PaliGemma 3B, LoRA, Adam, batch size 4, 40% of VQAv2 train).
PAPER_TABLE1 = {
    1: PaperRow(1, "vanilla", "no", "mlp", 4e-4, 32, 64, 1e-9, 53.21),
    2: PaperRow(2, "diff_dup", "yes (dup)", "swiglu", 4e-4, 32, 64, 1e-9, 51.91),
    3: PaperRow(3, "vanilla", "no", "mlp", 2e-5, 16, 32, 1e-8, 35.72),
    4: PaperRow(4, "diff_dup", "yes (dup)", "mlp", 2e-5, 32, 64, 1e-8, 33.91),
    5: PaperRow(5, "diff_split", "yes (original)", "swiglu", 2e-5, 32, 64, 1e-8, 41.32),
}
#: The paper's Table 2 (MMNeedle M=1, N=2, 200 samples, two-question protocol), percent.
PAPER_TABLE2 = {"baseline PaliGemma": 28.75, "fine-tuned PaliGemma": 30.42, "fine-tuned with diff attn": 34.72}

SCORING_NOTE = (
    "Score: `test/vqa_accuracy_official`, the official VQAv2 accuracy (GT-Vision-Lab vqaEval.py: answers "
    "normalised, accuracy = mean over the 10 leave-one-out subsets of min(1, matches/3)) on each run's test "
    "split, stored as a fraction and shown here in percent: mean ± sample standard deviation over the runs "
    "of a row (n). Paper: its Table 1 VQAv2 score, in percent (PaliGemma 3B fine-tuned on 40% of VQAv2 train); "
    "on another model or dataset it is a reference, not a target."
)


# --------------------------------------------------------------------------------------------
# reading jobs
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One run: where it is, how it ended, what it was, what it scored."""

    path: str  #: job directory relative to the sweep directory (or a W&B run path)
    status: str  #: completed | failed | incomplete
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  #: "ErrorType: message" for a failed job

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def table_row(self) -> Optional[int]:
        row = self.get("table_row")
        return int(row) if row is not None else None

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed", self.get("seed"))

    @property
    def score(self) -> Optional[float]:
        """The official VQA accuracy (fraction) or None."""
        if self.status != "completed":
            return None
        return _finite(self.metrics.get(METRIC))

    @property
    def needle(self) -> dict[str, float]:
        if self.status != "completed":
            return {}
        out = {}
        for k, v in self.metrics.items():
            if k.startswith(NEEDLE_PREFIX) and _finite(v) is not None:
                out[k] = float(v)
        return out

    @property
    def setting(self) -> str:
        """The overrides that make this job's group: all but the seed and the Table 1 row selector."""
        kept = []
        for item in self.overrides:
            key = item.split("=", 1)[0].lstrip("+~")
            if key == "seed":
                continue
            if self.table_row is not None and (key == "experiment" or key.startswith("experiment/")):
                continue
            kept.append(item)
        return ",".join(sorted(kept))


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _hydra_fallback(directory: Path) -> tuple[dict[str, Any], list[str]]:
    """Config and overrides from Hydra's own files, for runs older than job.json."""
    config: dict[str, Any] = {}
    overrides: list[str] = []
    try:
        import yaml

        cfg_file, ovr_file = directory / ".hydra" / "config.yaml", directory / ".hydra" / "overrides.yaml"
        if cfg_file.is_file():
            config = yaml.safe_load(cfg_file.read_text()) or {}
        if ovr_file.is_file():
            overrides = [str(o) for o in yaml.safe_load(ovr_file.read_text()) or []]
    except Exception:  # an unreadable leftover must not stop the report
        pass
    return config, overrides


def read_job(directory: Path, root: Path) -> Job:
    job_info = _read_json(directory / JOB_FILE) or {}
    metrics = _read_json(directory / METRICS_FILE)
    failure = _read_json(directory / FAILED_FILE)
    config = job_info.get("config") or {}
    overrides = [str(o) for o in job_info.get("overrides") or []]
    if not job_info:
        config, overrides = _hydra_fallback(directory)
        if not overrides and metrics and metrics.get("run_name") not in (None, "default"):
            overrides = str(metrics["run_name"]).split(",")
    error = None
    if (directory / FAILED_FILE).exists():
        status = "failed"
        failure = failure or {}
        error = f"{failure.get('error_type', 'unknown error')}: {failure.get('message', '(failed.json unreadable)')}"
    elif job_info.get("status") == "running" or metrics is None:
        status = "incomplete"
        error = "no metrics.json and no failed.json: still running, or killed (time limit, out of memory)"
    else:
        status = "completed"
    _inherit_from_checkpoint(config, root)
    rel = directory.relative_to(root).as_posix() if directory != root else "."
    return Job(rel, status, config, overrides, metrics or {}, error)


INHERITED = ("table_row", "attn", "ffn", "lora")


def _inherit_from_checkpoint(config: dict[str, Any], root: Path) -> None:
    """An evaluate.py run scores a train.py run (``ckpt``): it inherits that run's Table 1 row and
    the method it was trained with (attention, FFN, LoRA), which its own config does not hold."""
    ckpt = config.get("ckpt")
    if not ckpt or ckpt == "base":
        return
    for candidate in (Path(ckpt), Path(ckpt).parent):
        info = _read_json(candidate / JOB_FILE)
        if info and info.get("config"):
            for key in INHERITED:
                if config.get(key) is None and info["config"].get(key) is not None:
                    config[key] = info["config"][key]
            return


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (it may itself be one), in a stable order."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: not a directory")
    dirs = {p.parent for name in (JOB_FILE, METRICS_FILE, FAILED_FILE) for p in root.rglob(name)}
    dirs = {d for d in dirs if "wandb" not in d.relative_to(root).parts}
    return [read_job(d, root) for d in sorted(dirs, key=_natural_key)]


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def load_wandb_jobs(project: str, group: Optional[str] = None) -> list[Job]:
    """The same records from a W&B project through the public API (needs network and a login)."""
    try:
        import wandb
    except ImportError as err:  # pragma: no cover - wandb is a dependency
        raise SystemExit(f"--wandb needs the wandb package: {err}")
    try:
        api = wandb.Api()
        runs = list(api.runs(project, filters={"group": group} if group else None))
    except Exception as err:
        raise SystemExit(f"--wandb {project}: could not read the project through the W&B API "
                         f"(online and logged in? `wandb login`): {type(err).__name__}: {err}")
    jobs = []
    for run in runs:
        state = getattr(run, "state", "unknown")
        status = {"finished": "completed", "failed": "failed", "crashed": "failed"}.get(state, "incomplete")
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        name = run.name or ""
        jobs.append(Job(
            path="/".join(run.path) if isinstance(run.path, (list, tuple)) else str(run.path),
            status=status,
            config=dict(run.config),
            overrides=[] if name in ("", "default") else name.split(","),
            metrics=summary,
            error=None if status == "completed" else f"W&B run state: {state}",
        ))
    return jobs


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
@dataclass
class Group:
    """The jobs of one setting (a Table 1 row, or one point of any sweep), over seeds."""

    table_row: Optional[int]
    setting: str
    jobs: list[Job] = field(default_factory=list)

    @property
    def first(self) -> Optional[Job]:
        done = [j for j in self.jobs if j.config]
        return done[0] if done else (self.jobs[0] if self.jobs else None)

    @property
    def scores(self) -> list[float]:
        return [s for s in (j.score for j in self.jobs) if s is not None]

    @property
    def seeds(self) -> list[Any]:
        return [j.seed for j in self.jobs if j.score is not None]

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs)

    @property
    def unscored(self) -> int:
        return sum(j.status == "completed" and j.score is None for j in self.jobs)


def mean_std(values: Iterable[float]) -> tuple[Optional[float], Optional[float], int]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    values = list(values)
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def group_jobs(jobs: Iterable[Job]) -> list[Group]:
    groups: dict[tuple[Any, str], Group] = {}
    for job in jobs:
        key = (job.table_row, job.setting)
        groups.setdefault(key, Group(job.table_row, job.setting)).jobs.append(job)
    return sorted(groups.values(), key=lambda g: (g.table_row is None, g.table_row or 0, g.setting))


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------
def sci(value: Any) -> str:
    """4e-4 as the paper writes it: ``4e-4``; 0.1 as ``0.1``."""
    if value is None:
        return "—"
    x = float(value)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:g}"
    mantissa, exponent = f"{x:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def pct(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def diff_attn_label(job: Optional[Job]) -> str:
    if job is None:
        return "—"
    variant = job.get("attn.variant")
    if variant is None and job.get("ckpt") == "base":
        return "no (base, no adapter)"
    if variant is None:
        return "—"
    try:
        return variant_for({k: job.get(f"attn.{k}") for k in ("variant", "dup_mode") if job.get(f"attn.{k}") is not None}).label
    except ValueError:  # a variant this version does not know: its raw name
        return str(variant)


def _differences(job: Optional[Job], paper: Optional[PaperRow]) -> str:
    """Where a run's hyper-parameters differ from the paper's row (none for an untouched row)."""
    if job is None or paper is None or not job.config:
        return ""
    checks = [
        ("attn", job.get("attn.variant"), paper.attn),
        ("ffn", job.get("ffn.variant"), paper.ffn),
        ("lr", job.get("optim.lr"), paper.lr),
        ("lora.rank", job.get("lora.rank"), paper.rank),
        ("lora.alpha", job.get("lora.alpha"), paper.alpha),
        ("wd", job.get("optim.weight_decay"), paper.weight_decay),
        ("optim", job.get("optim.name"), "adam"),
        ("batch", job.get("data.batch_size"), 4),
    ]
    out = []
    for name, ours, theirs in checks:
        same = (ours == theirs) if isinstance(theirs, str) else (
            ours is not None and math.isclose(float(ours), float(theirs), rel_tol=1e-9))
        if not same:
            out.append(f"{name} {sci(ours) if isinstance(ours, float) else ours} (paper {sci(theirs) if isinstance(theirs, float) else theirs})")
    return "; ".join(out)


def table1_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One dict per table line: every group, plus the paper's rows no job ran (when any job is a Table 1 row)."""
    rows = []
    seen_rows = {g.table_row for g in groups if g.table_row is not None}
    missing = sorted(set(PAPER_TABLE1) - seen_rows) if seen_rows else []
    for group in groups:
        job = group.first
        paper = PAPER_TABLE1.get(group.table_row) if group.table_row is not None else None
        mean, std, n = mean_std(group.scores)
        rows.append({
            "row": group.table_row if group.table_row is not None else "",
            "diff_attn": diff_attn_label(job),
            "ffn": (job.get("ffn.variant") if job else None) or "—",
            "lr": sci(job.get("optim.lr")) if job else "—",
            "lora": f"{job.get('lora.rank')}/{_num(job.get('lora.alpha'))}" if job and job.get("lora.rank") is not None else "—",
            "wd": sci(job.get("optim.weight_decay")) if job else "—",
            "optimizer": job.get("optim.name", "—") if job else "—",
            "batch_size": job.get("data.batch_size", "—") if job else "—",
            "model_data": f"{job.get('model.name', '?')} / {job.get('data.name', '?')}" if job and job.config else "—",
            "setting": group.setting,
            "n": n,
            "mean_pct": None if mean is None else round(100 * mean, 4),
            "std_pct": None if std is None else round(100 * std, 4),
            "ours": pct(mean, std),
            "scores_pct": ";".join(f"{100 * s:.2f}" for s in group.scores),
            "seeds": ";".join(str(s) for s in group.seeds),
            "paper_pct": paper.vqav2 if paper else None,
            "failed": group.count("failed"),
            "incomplete": group.count("incomplete"),
            "unscored": group.unscored,
            "differs_from_paper": _differences(job, paper),
        })
    for number in missing:
        paper = PAPER_TABLE1[number]
        rows.append({
            "row": number, "diff_attn": paper.diff_attn, "ffn": paper.ffn, "lr": sci(paper.lr),
            "lora": f"{paper.rank}/{paper.alpha}", "wd": sci(paper.weight_decay), "optimizer": "adam",
            "batch_size": 4, "model_data": "—", "setting": "", "n": 0, "mean_pct": None, "std_pct": None,
            "ours": "not run", "scores_pct": "", "seeds": "", "paper_pct": paper.vqav2, "failed": 0,
            "incomplete": 0, "unscored": 0, "differs_from_paper": "",
        })
    return sorted(rows, key=lambda r: (r["row"] == "", r["row"] if r["row"] != "" else 0, r["setting"]))


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _md_table(header: list[str], lines: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v if v is not None else "—").replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def _status_line(jobs: list[Job]) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "incomplete")}
    return f"{len(jobs)} jobs: {counts['completed']} completed, {counts['failed']} failed, {counts['incomplete']} incomplete"


def unfinished_section(jobs: list[Job]) -> str:
    """Every job that gave no score, with why: failed (its error), incomplete, or completed without the metric."""
    lines = []
    for job in jobs:
        if job.status == "completed" and (job.score is not None or job.needle or pope_scores(job)):
            continue
        why = job.error if job.status != "completed" else f"completed without `{METRIC}` (test_after_fit=false?)"
        row = f"row {job.table_row}, " if job.table_row is not None else ""
        seed = f"seed {job.seed}, " if job.seed is not None else ""
        message = (why or "").splitlines()[0][:300] if why else ""
        overrides = ",".join(job.overrides) or "no overrides"
        overrides = overrides if len(overrides) <= 200 else overrides[:200] + "..."
        lines.append(f"- **{job.status}** `{job.path}` ({row}{seed}{overrides}): {message}")
    if not lines:
        return ""
    return "### Jobs without a score\n\n" + "\n".join(lines)


def table1_markdown(jobs: list[Job], source: str) -> str:
    rows = table1_rows(group_jobs(jobs))
    show_setting = any(r["setting"] for r in rows)
    header = ["row", "diff attn", "ffn", "lr", "LoRA r/α", "wd", "model / data", "ours (%)", "n", "paper VQAv2 (%)", "failed"]
    if show_setting:
        header.append("setting")
    header.append("differs from the paper's row")
    lines = []
    for r in rows:
        failed = str(r["failed"]) if r["failed"] else ""
        if r["incomplete"]:
            failed = f"{failed} (+{r['incomplete']} incomplete)".strip()
        line = [r["row"], r["diff_attn"], r["ffn"], r["lr"], r["lora"], r["wd"], r["model_data"], r["ours"], r["n"],
                "—" if r["paper_pct"] is None else f"{r['paper_pct']:.2f}", failed]
        if show_setting:
            line.append(f"`{r['setting']}`" if r["setting"] else "")
        line.append(r["differs_from_paper"])
        lines.append(line)
    parts = [
        "## Table 1: VQA score, ours beside the paper's",
        "",
        SCORING_NOTE,
        "",
        f"Source: `{source}`; {_status_line(jobs)}."
        + (" The paper's rows: Adam, batch size 4." if any(j.table_row is not None for j in jobs) else ""),
        "",
        _md_table(header, lines),
    ]
    unfinished = unfinished_section(jobs)
    if unfinished:
        parts += ["", unfinished]
    return "\n".join(parts) + "\n"


TABLE1_CSV_FIELDS = [
    "row", "diff_attn", "ffn", "lr", "lora", "wd", "optimizer", "batch_size", "model_data", "setting", "n",
    "mean_pct", "std_pct", "scores_pct", "seeds", "paper_pct", "failed", "incomplete", "unscored", "differs_from_paper",
]


# --------------------------------------------------------------------------------------------
# Table 2: MMNeedle
# --------------------------------------------------------------------------------------------
def needle_cells(jobs: list[Job]) -> list[tuple[int, int]]:
    cells = set()
    for job in jobs:
        for key in job.needle:
            m = _CELL.match(key)
            if m:
                cells.add((int(m.group(1)), int(m.group(2))))
    return sorted(cells)


def table2_rows(groups: list[Group], cells: list[tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        with_needle = [j for j in group.jobs if j.needle]
        if not with_needle:
            continue
        row: dict[str, Any] = {
            "row": group.table_row if group.table_row is not None else "",
            "diff_attn": diff_attn_label(group.first),
            "setting": group.setting,
            "n": len(with_needle),
            "failed": group.count("failed") + group.count("incomplete"),
        }
        for metric in NEEDLE_METRICS:
            mean, std, _ = mean_std(j.needle[f"{NEEDLE_PREFIX}{metric}"] for j in with_needle if f"{NEEDLE_PREFIX}{metric}" in j.needle)
            row["row_side" if metric == "row" else metric] = pct(mean, std)  # "row" names the Table 1 row
            row[f"{metric}_mean_pct"] = None if mean is None else round(100 * mean, 4)
            row[f"{metric}_std_pct"] = None if std is None else round(100 * std, 4)
        for r, c in cells:
            key = f"{NEEDLE_PREFIX}cell_r{r}_c{c}"
            mean, _, _ = mean_std(j.needle[key] for j in with_needle if key in j.needle)
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
        "one of the two questions right, shown beside exact, never instead of it. Mean ± sample std over runs (n), in percent. "
        f"Paper (its Table 2, M=1, N=2, 200 samples, 'index accuracy' = the cell is right): {paper}; "
        "its released scorer graded the diff model on the column only (chance 50%), so those numbers are "
        "not comparable with these."
    )
    return "\n".join(["## Table 2: MMNeedle", "", note, "", f"Source: `{source}`.", "", _md_table(header, lines)]) + "\n"


# --------------------------------------------------------------------------------------------
# POPE: object hallucination
# --------------------------------------------------------------------------------------------
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
            value = _finite(job.metrics.get(f"{POPE_PREFIX}{setting}/{metric}"))
            if value is not None:
                out.setdefault(setting, {})[metric] = value
    return out


def _scored_run(job: Job) -> Optional[dict[str, Any]]:
    """The job.json of the train.py run an evaluate.py run scored (``ckpt``), if it can be found."""
    ckpt = job.get("ckpt")
    if not ckpt or ckpt == "base":
        return None
    for candidate in (Path(ckpt), Path(ckpt).parent):
        info = _read_json(candidate / JOB_FILE)
        if info and info.get("config"):
            return info
    return None


def _pope_group_key(job: Job) -> tuple[Any, str, str]:
    """(Table 1 row, what was scored, how): runs of one training setting over seeds share a key.

    What was scored is the base, or the scored run's overrides without its seed (and Table 1 row
    selector), or the checkpoint path when that run's job.json is gone; how is the evaluate.py
    overrides that change the probes (e.g. ``eval.probe_images=100``).
    """
    scored = _scored_run(job)
    if job.get("ckpt") in (None, "base"):
        model = "base"
    elif scored is None:
        model = f"ckpt={job.get('ckpt')}"
    else:
        model = Job("", "completed", scored.get("config") or {}, [str(o) for o in scored.get("overrides") or []]).setting
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
        scored = _scored_run(members[0])
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
                row[metric] = pct(mean, std)
                row[f"{metric}_mean_pct"] = None if mean is None else round(100 * mean, 4)
                row[f"{metric}_std_pct"] = None if std is None else round(100 * std, 4)
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
    return "\n".join(["## POPE: object hallucination", "", note, "", f"Source: `{source}`.", "",
                      _md_table(header, lines)]) + "\n"


# --------------------------------------------------------------------------------------------
# Attention analysis (evaluate.py eval=attention)
# --------------------------------------------------------------------------------------------
ATTENTION_PREFIX = "attention/text/layer"
ATTENTION_GROUPS = ("needle", "distractor", "text", "needle_of_image", "lambda", "prompt_rows/needle_of_image")


def attention_layers(job: Job) -> dict[int, dict[str, float]]:
    """``{layer: {group: value}}`` from a completed eval=attention run's per-layer means (heads averaged)."""
    if job.status != "completed":
        return {}
    out: dict[int, dict[str, float]] = {}
    for key, value in job.metrics.items():
        if not key.startswith(ATTENTION_PREFIX) or _finite(value) is None:
            continue
        layer, _, group = key[len(ATTENTION_PREFIX):].partition("/")
        if layer.isdigit() and group in ATTENTION_GROUPS:
            out.setdefault(int(layer), {})[group] = float(value)
    return dict(sorted(out.items()))


def attention_label(job: Job) -> str:
    """What an eval=attention run measured: the base, or the scored run's attention variant, and its run."""
    if job.get("ckpt") in (None, "base"):
        return "base"
    variant = job.metrics.get("attention/variant") or diff_attn_label(job)
    return f"{variant} ({Path(str(job.get('ckpt'))).name})"


def attention_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    """One line per (eval=attention run, text layer), base first."""
    measured = sorted((j for j in jobs if attention_layers(j)), key=lambda j: (j.get("ckpt") not in (None, "base"), j.path))
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
    lines = [[r["model"], r["layer"], pct(r["needle"], r["needle_sem"]), pct(r["distractor"], None), pct(r["text"], None),
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
    return "\n".join(["## Attention on the needle", "", note, "", f"Source: `{source}`.", "",
                      _md_table(header, lines)]) + "\n"


def write_attention(jobs: list[Job], out: Path, source: str) -> dict[str, Path]:
    """attention.md/.csv and attention_layers.png (every eval=attention run's per-layer curves on one plot)."""
    from .analysis.plots import layer_curves

    measured = [j for j in jobs if attention_layers(j)]
    written = {"attention.md": out / "attention.md", "attention.csv": out / "attention.csv"}
    written["attention.md"].write_text(attention_markdown(jobs, source))
    _write_csv(written["attention.csv"], attention_rows(jobs), ATTENTION_CSV_FIELDS)
    runs: dict[str, dict[str, Any]] = {}
    for job in measured:  # two runs of one label (seeds, settings) stay two curves
        label = attention_label(job)
        runs[label if label not in runs else f"{label} [{job.path}]"] = job.metrics
    written["attention_layers.png"] = layer_curves(runs, out / "attention_layers.png", f"eval=attention runs in {source}")
    return written


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})


JOBS_CSV_FIELDS = ["path", "status", "row", "seed", "setting", "score_pct", "error"]


def write_report(jobs: list[Job], out: str | Path, source: str) -> dict[str, Path]:
    """Write table1.md/.csv, jobs.csv (one line per job, failures included) and, when MMNeedle
    results exist, table2.md/.csv into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    groups = group_jobs(jobs)
    written["table1.md"] = out / "table1.md"
    written["table1.md"].write_text(table1_markdown(jobs, source))
    written["table1.csv"] = out / "table1.csv"
    _write_csv(written["table1.csv"], table1_rows(groups), TABLE1_CSV_FIELDS)
    written["jobs.csv"] = out / "jobs.csv"
    _write_csv(written["jobs.csv"], [
        {"path": j.path, "status": j.status, "row": j.table_row, "seed": j.seed, "setting": j.setting,
         "score_pct": None if j.score is None else round(100 * j.score, 4), "error": j.error}
        for j in jobs
    ], JOBS_CSV_FIELDS)
    if any(j.needle for j in jobs):
        cells = needle_cells(jobs)
        written["table2.md"] = out / "table2.md"
        written["table2.md"].write_text(table2_markdown(jobs, source))
        fields = ["row", "diff_attn", "setting", "n", "failed"]
        fields += [f"{m}_{s}_pct" for m in NEEDLE_METRICS for s in ("mean", "std")]
        fields += [f"cell_r{r}_c{c}" for r, c in cells]
        written["table2.csv"] = out / "table2.csv"
        _write_csv(written["table2.csv"], table2_rows(groups, cells), fields)
    if any(attention_layers(j) for j in jobs):
        written.update(write_attention(jobs, out, source))
    if any(pope_scores(j) for j in jobs):
        written["pope.md"] = out / "pope.md"
        written["pope.md"].write_text(pope_markdown(jobs, source))
        written["pope.csv"] = out / "pope.csv"
        _write_csv(written["pope.csv"], pope_rows(jobs), POPE_CSV_FIELDS)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffpali.report",
        description="Table 1 (VQA score, mean ± std over seeds, beside the paper's) and Table 2 (MMNeedle) "
                    "from every job of a sweep directory, failed jobs listed.",
    )
    parser.add_argument("sweep_dir", nargs="?", help="a multirun directory (or any directory of runs)")
    parser.add_argument("--out", help="where to write table1.md/.csv, jobs.csv, table2.* (default: the sweep dir)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online, logged in)")
    parser.add_argument("--group", help="with --wandb: only this W&B group (a sweep's group)")
    args = parser.parse_args(argv)
    if args.wandb:
        jobs = load_wandb_jobs(args.wandb, args.group)
        source = f"wandb:{args.wandb}" + (f" group {args.group}" if args.group else "")
        out = args.out or "."
    else:
        if not args.sweep_dir:
            parser.error("give a sweep directory, or --wandb ENTITY/PROJECT")
        try:
            jobs = load_jobs(args.sweep_dir)
        except FileNotFoundError as err:
            parser.error(str(err))
        source = args.sweep_dir
        out = args.out or args.sweep_dir
    if not jobs:
        print(f"{source}: no runs found (no job.json, metrics.json or failed.json)", file=sys.stderr)
        return 1
    written = write_report(jobs, out, source)
    print(written["table1.md"].read_text())
    if "table2.md" in written:
        print(written["table2.md"].read_text())
    if "pope.md" in written:
        print(written["pope.md"].read_text())
    if "attention.md" in written:
        print(written["attention.md"].read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

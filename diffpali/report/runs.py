"""Reading runs: every job directory under a sweep directory, as :class:`Job` records, and the
:class:`Group` of jobs of one setting over seeds.

A job directory is read through the run-directory contract (``docs/design.md``, "The run directory"):
``job.json`` (status, overrides, the whole validated config), ``metrics.json`` and ``failed.json``.
Status of a job: ``failed`` if failed.json exists; ``incomplete`` if job.json still says running or
there is no metrics.json (a job killed by a time limit cannot write failed.json); else ``completed``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from ..paths import EVALS_DIR, FAILED_FILE, ITEMS_FILE, JOB_FILE, METRICS_FILE, find_in_run
from .stats import finite

#: The headline score of a train.py (or evaluate.py eval=vqa) run: the official VQAv2 accuracy of the test split.
METRIC = "test/vqa_accuracy_official"
#: Settings an evaluate.py run takes from the train.py run it scored (``ckpt``): its config holds none of them.
INHERITED = ("table_row", "attn", "ffn", "lora")


@dataclass
class Job:
    """One run: where it is, how it ended, what it was, what it scored."""

    path: str  #: job directory relative to the sweep directory (or a W&B run path)
    status: str  #: completed | failed | incomplete
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  #: "ErrorType: message" for a failed job
    #: train.py's evaluations after the fit (``evals/<name>/metrics.json``), by name
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    directory: Optional[Path] = None  #: where the job lives (None for a W&B run)

    def items_file(self, evaluation: str) -> Optional[Path]:
        """The ``items.jsonl`` of one of the job's evaluations, when it was written."""
        if self.directory is None:
            return None
        path = self.directory / EVALS_DIR / evaluation / ITEMS_FILE
        return path if path.is_file() else None

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
        return finite(self.metrics.get(METRIC))

    def finite_metrics(self, prefix: str) -> dict[str, float]:
        """A completed job's finite metrics whose keys start with ``prefix`` (none for any other job)."""
        if self.status != "completed":
            return {}
        return {k: float(v) for k, v in self.metrics.items() if k.startswith(prefix) and finite(v) is not None}

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


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def scored_run(ckpt: Any) -> Optional[dict[str, Any]]:
    """The job.json of the train.py run an evaluate.py run scored (its ``ckpt``), when it can be found."""
    record_file = find_in_run(str(ckpt), JOB_FILE) if ckpt else None
    record = read_json(record_file) if record_file else None
    return record if record and record.get("config") else None


def read_job(directory: Path, root: Path) -> Job:
    """The job in ``directory``; its path is given relative to ``root``."""
    job_info = read_json(directory / JOB_FILE) or {}
    metrics = read_json(directory / METRICS_FILE)
    config = job_info.get("config") or {}
    overrides = [str(o) for o in job_info.get("overrides") or []]
    error = None
    if (directory / FAILED_FILE).exists():
        status = "failed"
        failure = read_json(directory / FAILED_FILE) or {}
        error = f"{failure.get('error_type', 'unknown error')}: {failure.get('message', '(failed.json unreadable)')}"
    elif job_info.get("status") == "running" or metrics is None:
        status = "incomplete"
        error = "no metrics.json and no failed.json: still running, or killed (time limit, out of memory)"
    else:
        status = "completed"
    _inherit_from_scored_run(config)
    rel = directory.relative_to(root).as_posix() if directory != root else "."
    evals = {path.parent.name: read_json(path) or {}
             for path in sorted((directory / EVALS_DIR).glob(f"*/{METRICS_FILE}"))}
    return Job(rel, status, config, overrides, metrics or {}, error, evals, directory)


def _inherit_from_scored_run(config: dict[str, Any]) -> None:
    """An evaluate.py run scores a train.py run (``ckpt``): it inherits that run's Table 1 row and
    the method it was trained with (attention, FFN, LoRA), which its own config does not hold."""
    scored = scored_run(config.get("ckpt"))
    if scored is None:
        return
    for key in INHERITED:
        if config.get(key) is None and scored["config"].get(key) is not None:
            config[key] = scored["config"][key]


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (it may itself be one), in a stable order."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: not a directory")
    dirs = {p.parent for name in (JOB_FILE, METRICS_FILE, FAILED_FILE) for p in root.rglob(name)}
    # a train.py run's evaluations (<run>/evals/<name>/) belong to that run, not to the sweep
    dirs = {d for d in dirs if "wandb" not in d.relative_to(root).parts
            and not (d.parent.name == EVALS_DIR and (d.parent.parent / JOB_FILE).is_file())}
    return [read_job(d, root) for d in sorted(dirs, key=_natural_key)]


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


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


def group_jobs(jobs: Iterable[Job]) -> list[Group]:
    """Jobs grouped by Table 1 row and setting (their overrides but the seed), rows first, in order."""
    groups: dict[tuple[Any, str], Group] = {}
    for job in jobs:
        key = (job.table_row, job.setting)
        groups.setdefault(key, Group(job.table_row, job.setting)).jobs.append(job)
    return sorted(groups.values(), key=lambda g: (g.table_row is None, g.table_row or 0, g.setting))

"""The report's sections, in order, and :func:`write_report`, which writes each that has results.

A new evaluation's table is a new file in this package defining a ``SECTION``
(:class:`~diffpali.report.section.Section`), and one entry in :data:`SECTIONS`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from . import attention, pope, scratch, study, table1, table2
from .format import write_csv
from .runs import Job
from .section import Report, Section

#: Every section, in the order they are written and printed.
SECTIONS: tuple[Section, ...] = (table1.SECTION, table2.SECTION, pope.SECTION, attention.SECTION, study.SECTION,
                                 scratch.SECTION)

JOBS_CSV_FIELDS = ["path", "status", "row", "seed", "setting", "score_pct", "error"]


def write_report(jobs: list[Job], out: str | Path, source: str,
                 sections: tuple[Section, ...] = SECTIONS) -> dict[str, Path]:
    """Write ``jobs.csv`` (one line per job, failures included) and every section that has results (Table 1
    always) into ``out``; returns the paths written, by file name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def scored(job: Job) -> bool:
        return any(section.has_results(job) for section in sections)

    report = Report(jobs, out, source, scored)
    written = {"jobs.csv": out / "jobs.csv"}
    write_csv(written["jobs.csv"], [
        {"path": j.path, "status": j.status, "row": j.table_row, "seed": j.seed, "setting": j.setting,
         "score_pct": None if j.score is None else round(100 * j.score, 4), "error": j.error}
        for j in jobs
    ], JOBS_CSV_FIELDS)
    for section in sections:
        if section.always or any(section.has_results(job) for job in jobs):
            written.update(section.write(report))
    return written


def log_report(written: dict[str, Path], jobs: list[Job], out: str | Path) -> str:
    """The report's figures and CSV tables, logged to a W&B run named ``report`` in the group of the sweep's
    jobs (the dashboard then shows the same pictures as the folder). Returns where the run went."""
    import wandb  # deferred: only this option needs W&B

    from ..config import LoggerConfig  # deferred with wandb_mode below
    from ..loggers import wandb_mode  # deferred: the loggers module imports Lightning

    groups = {j.get("logger.group") for j in jobs if j.get("logger.group")}
    group = groups.pop() if len(groups) == 1 else None
    run = wandb.init(project=(jobs[0].get("logger.project") or "diffpali"), group=group, name="report",
                     job_type="report", dir=str(out), mode=wandb_mode(LoggerConfig()))
    try:
        for path in written.values():
            if path.suffix == ".png":
                run.log({f"report/{path.stem}": wandb.Image(str(path))})
            elif path.suffix == ".csv":
                with path.open() as handle:
                    rows = list(csv.reader(handle))
                if rows:
                    run.log({f"report/{path.stem}": wandb.Table(columns=rows[0], data=rows[1:])})
        return f"run {run.id} ({run.settings.mode}) in group {group}"
    finally:
        run.finish()

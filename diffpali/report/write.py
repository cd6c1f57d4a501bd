"""The report's sections, in order, and :func:`write_report`, which writes each that has results.

A new evaluation's table is a new file in this package defining a ``SECTION``
(:class:`~diffpali.report.section.Section`), and one entry in :data:`SECTIONS`.
"""

from __future__ import annotations

from pathlib import Path

from . import attention, pope, study, table1, table2
from .format import write_csv
from .runs import Job
from .section import Report, Section

#: Every section, in the order they are written and printed.
SECTIONS: tuple[Section, ...] = (table1.SECTION, table2.SECTION, pope.SECTION, attention.SECTION, study.SECTION)

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

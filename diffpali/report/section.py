"""What a section of the report is: one table (or figure) of one evaluation, written from the runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .runs import Job


@dataclass(frozen=True)
class Report:
    """What every section writes from: the runs, where the files go, and what the runs were read from."""

    jobs: list[Job]
    out: Path
    source: str  #: the sweep directory (or W&B project) named in every table
    scored: Callable[[Job], bool]  #: whether any section has results from a job (Table 1 lists the others)


@dataclass(frozen=True)
class Section:
    """One part of the report. ``write`` puts its files in ``report.out`` and returns them by name,
    ``<name>.md`` among them (the CLI prints it); a section is written when any job has results for
    it (``has_results``), or always."""

    name: str
    has_results: Callable[[Job], bool]
    write: Callable[[Report], dict[str, Path]]
    always: bool = False

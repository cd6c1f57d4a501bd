"""Markdown and CSV writing: numbers as the paper writes them, percent cells, tables, labels."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from ..config import describe
from .runs import Job


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
    """A fraction in percent, ``60.00 ± 10.00`` (no ± for a single value), or — when there is none."""
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def percent_columns(name: str, mean: Optional[float], std: Optional[float]) -> dict[str, Any]:
    """``{name: "60.00 ± 10.00", name_mean_pct: 60.0, name_std_pct: 10.0}``: the markdown cell and the CSV numbers."""
    return {name: pct(mean, std), f"{name}_mean_pct": None if mean is None else round(100 * mean, 4),
            f"{name}_std_pct": None if std is None else round(100 * std, 4)}


def num(value: Any) -> str:
    """64.0 as ``64``; anything else as it prints."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def md_table(header: list[str], lines: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v if v is not None else "—").replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def md_section(title: str, note: str, source: str, table: str) -> str:
    """``## title``, the note, the source and the table, as every section but Table 1 lays them out."""
    return "\n".join([f"## {title}", "", note, "", f"Source: `{source}`.", "", table]) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})


def diff_attn_label(job: Optional[Job]) -> str:
    """Table 1's "diff attn" column for a job: its variant's label, or what it is when it has none."""
    if job is None:
        return "—"
    variant = job.get("attn.variant")
    if variant is None and job.get("ckpt") == "base":
        return "no (base, no adapter)"
    if variant is None:
        return "—"
    try:
        return describe(job.get("attn") or {"variant": variant}).label
    except ValueError:  # a variant this version does not know: its raw name
        return str(variant)

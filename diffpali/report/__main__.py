"""``python -m diffpali.report <sweep dir> [--out DIR]``: every section of the report, printed and written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .readme import update_readme
from .runs import load_jobs
from .wandb_runs import load_wandb_jobs
from .write import SECTIONS, log_report, write_report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffpali.report",
        description="Table 1 (VQA score, mean ± std over seeds, beside the paper's), Table 2 (MMNeedle), POPE and "
                    "the attention analysis from every job of a sweep directory, failed jobs listed.",
    )
    parser.add_argument("sweep_dir", nargs="?", help="a multirun directory (or any directory of runs)")
    parser.add_argument("--out", help="where to write the tables, jobs.csv and figures (default: the sweep dir)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online, logged in)")
    parser.add_argument("--group", help="with --wandb: only this W&B group (a sweep's group)")
    parser.add_argument("--log-wandb", action="store_true",
                        help="also log the tables and figures to a W&B run 'report' in the sweep's group "
                             "(online when logged in, else offline in <out>/wandb)")
    parser.add_argument("--readme", metavar="FILE", help="also rewrite the study-findings section of FILE (between "
                        "its marker lines) from a study's runs, with the figures copied to --figures")
    parser.add_argument("--figures", metavar="DIR", help="with --readme: where the figures go (default: docs/study "
                        "beside FILE)")
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
    for section in SECTIONS:
        if f"{section.name}.md" in written:
            print(written[f"{section.name}.md"].read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    if args.readme:
        try:
            print("updated: " + update_readme(jobs, written, Path(args.readme), args.figures and Path(args.figures),
                                              source))
        except (OSError, ValueError) as err:
            print(f"--readme: {err}", file=sys.stderr)
            return 1
    if args.log_wandb:
        print(f"W&B: {log_report(written, jobs, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Attention figures from finished runs: several runs' curves, overlays or lambda histories on one PNG.

    python -m diffpali.report.figures curves <evaluate run dir> ... --out curves.png
    python -m diffpali.report.figures overlays <evaluate run dir> ... --out overlays.png [--samples 1] [--rows prompt]
    python -m diffpali.report.figures lambda <train run dir> ... --out lambda.png

The drawing is :mod:`diffpali.evals.attention.plots`'; this module reads the run directories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import describe
from ..evals.attention.plots import (
    OVERLAY_DATA_FILE,
    ROW_SETS,
    lambda_trajectories,
    layer_curves,
    overlay_figure,
    read_overlays,
)
from ..lambda_history import read_history
from ..paths import METRICS_FILE
from .format import diff_attn_label
from .runs import read_job


def run_label(directory: Path) -> str:
    """'<variant> (<run dir name>)' from an evaluate or train run's job.json (attn inherited from its ckpt)."""
    job = read_job(directory, directory)
    if job.get("ckpt") == "base":
        return f"base ({directory.name})"
    variant = job.metrics.get("attention/variant")
    if variant is None and job.get("attn.variant") is not None:
        try:
            variant = describe(job.get("attn")).display
        except ValueError:  # a variant this version does not know: its raw name
            variant = job.get("attn.variant")
    return f"{variant or diff_attn_label(job)} ({directory.name})"


def compare_overlays(runs: Sequence[Path], samples: int, path: Path, title: str = "", rows: str = "answer") -> Path:
    """The first ``samples`` overlay samples of the first run, one row per run that drew them too."""
    loaded = []
    for run in runs:
        data = run / OVERLAY_DATA_FILE
        if not data.is_file():
            raise FileNotFoundError(f"{run}: no {OVERLAY_DATA_FILE} (an eval=attention run with eval.overlays > 0?)")
        grid, items = read_overlays(data)
        loaded.append((run_label(run), {i.sample_id: i for i in items}))
    first = list(loaded[0][1])[:samples]
    picked = []
    for sample in first:
        for label, items in loaded:
            if sample in items:
                items[sample].name = label
                picked.append(items[sample])
    return overlay_figure(picked, grid, path, title or "eval=attention runs", rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffpali.report.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("curves", "overlays", "lambda"),
                        help="curves: eval=attention runs on one plot; overlays: their overlays of the same "
                             "samples, one row per run; lambda: train runs' lambda histories")
    parser.add_argument("--samples", type=int, default=1, help="overlays: how many samples (the first ones)")
    parser.add_argument("--rows", choices=tuple(ROW_SETS), default="answer", help="overlays: whose attention")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        if args.kind == "curves":
            runs = {}
            for run in args.runs:
                metrics_file = run / METRICS_FILE
                if not metrics_file.is_file():
                    raise FileNotFoundError(f"{run}: no {METRICS_FILE} "
                                            "(run python evaluate.py ckpt=... eval=attention first)")
                runs[run_label(run)] = json.loads(metrics_file.read_text())
            written = layer_curves(runs, args.out, args.title)
        elif args.kind == "overlays":
            written = compare_overlays(args.runs, args.samples, args.out, args.title, args.rows)
        else:
            written = lambda_trajectories({run_label(run): read_history(run) for run in args.runs}, args.out)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"written: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

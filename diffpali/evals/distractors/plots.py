"""Accuracy against the number of distractors: one panel per (N, M), one line per model and kind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ..base import pyplot, save_figure

POINT = re.compile(r"^distractors/N(\d+)/M(\d+)/(\w+)/k(\d+)/(\w+)$")
#: (mean, low, high): low/high None for a single run (no band).
Band = tuple[Optional[float], Optional[float], Optional[float]]


def series_of(metrics: dict[str, Any], metric: str = "exact") -> dict[tuple[int, int, str], dict[int, Band]]:
    """{(N, M, kind): {k: (value, None, None)}} from one run's flat metrics; k = 0 joins every kind's line."""
    found: dict[tuple[int, int, str], dict[int, Band]] = {}
    zero: dict[tuple[int, int], Band] = {}
    for key, value in metrics.items():
        match = POINT.match(key)
        if not match or match.group(5) != metric:
            continue
        grid, images, kind, count = int(match.group(1)), int(match.group(2)), match.group(3), int(match.group(4))
        if kind == "none":
            zero[(grid, images)] = (value, None, None)
        else:
            found.setdefault((grid, images, kind), {})[count] = (value, None, None)
    for (grid, images, _), line in found.items():
        if (grid, images) in zero:
            line[0] = zero[(grid, images)]
    return found


def distractor_curves(runs: dict[str, dict[str, Any]], path: Path, title: str = "", metric: str = "exact",
                      bands: Optional[dict[str, dict[tuple[int, int, str], dict[int, Band]]]] = None) -> Path:
    """Draw ``metric`` against k. ``runs``: label -> flat metrics of one run; or ``bands``: label -> the
    series with (mean, CI low, CI high) per point, drawn as a line with a shaded band."""
    plt = pyplot()
    series = bands if bands is not None else {label: series_of(m, metric) for label, m in runs.items()}
    grids = sorted({g for lines in series.values() for (g, _, _) in lines}) or [2]
    image_counts = sorted({m for lines in series.values() for (_, m, _) in lines}) or [1]
    entries = 2 * len(series) + 1  # hard and easy per series, and chance
    columns = min(len(grids) * 2, entries)
    legend_inches = 0.2 * -(-entries // columns) + 0.2  # room under the panels for every legend row
    height = 3.0 * len(image_counts) + 0.5 + legend_inches
    fig, axes = plt.subplots(len(image_counts), len(grids), figsize=(4.0 * len(grids), height), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (row, images), (col, grid) in ((r, c) for r in enumerate(image_counts) for c in enumerate(grids)):
        ax = axes[row][col]
        counts = sorted({k for lines in series.values() for (g, m, _), line in lines.items() if (g, m) == (grid, images)
                         for k in line})
        for index, (label, lines) in enumerate(series.items()):
            for kind, style in (("hard", "-"), ("easy", "--")):
                line = lines.get((grid, images, kind))
                if not line:
                    continue
                ks = sorted(line)
                means = [line[k][0] for k in ks]
                color = colors[index % len(colors)]
                ax.plot(ks, [float("nan") if m is None else m for m in means], style, marker="o", color=color,
                        label=f"{label} ({kind})")
                if all(line[k][1] is not None for k in ks):  # a t interval may pass 0 or 1: drawn inside [0, 1]
                    ax.fill_between(ks, [max(0.0, line[k][1]) for k in ks], [min(1.0, line[k][2]) for k in ks],
                                    color=color, alpha=0.15)
        ax.axhline(1 / (images * grid * grid), color="grey", lw=0.8, ls=":", label="chance (exact)")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(counts or [0])
        ax.set_xticklabels([str(k) for k in counts or [0]])
        ax.set_xlabel("distractors k")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{grid}x{grid} cells, {images} image(s)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1 - 0.3 / height))
    return save_figure(fig, path, dpi=110)

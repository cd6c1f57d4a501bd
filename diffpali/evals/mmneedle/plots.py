"""The per-cell heatmap of exact accuracy (the paper's Figure 2), written as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..base import pyplot, save_figure


def cell_heatmap(cells: dict[tuple[int, int], Optional[float]], grid: int, title: str, path: Path) -> Path:
    """Rows and columns 1-based as in the answers; a cell with no samples is drawn blank ("n/a")."""
    plt = pyplot()
    values = np.full((grid, grid), np.nan)
    for (r, c), value in cells.items():
        if value is not None:
            values[r - 1, c - 1] = 100 * value
    fig, ax = plt.subplots(figsize=(1.2 * grid + 2.0, 1.2 * grid + 1.2))
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    for r in range(grid):
        for c in range(grid):
            text = "n/a" if np.isnan(values[r, c]) else f"{values[r, c]:.0f}%"
            shade = "black" if not np.isnan(values[r, c]) and values[r, c] > 60 else "white"
            ax.text(c, r, text, ha="center", va="center", color=shade, fontsize=11)
    ax.set_xticks(range(grid), [str(c + 1) for c in range(grid)])
    ax.set_yticks(range(grid), [str(r + 1) for r in range(grid)])
    ax.set_xlabel("needle column")
    ax.set_ylabel("needle row")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="exact accuracy (%)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)

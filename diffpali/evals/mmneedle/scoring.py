"""One MMNeedle scorer for every model: a needle counts only when its row AND column are right.

Official mode (the MMNeedle metrics):
- ``existence``: the reply is "-1" exactly when the needle is absent, over all samples;
- ``index``: the image index is right, over positives;
- ``exact``: index, row and column all right, over positives.
Paper mode (M=1, N=2, two questions): ``exact`` needs both the Top/Bottom and the Left/Right
replies right (chance 25%); ``row`` and ``column`` are reported beside it, never instead of it.
``cell_r{r}_c{c}`` is the exact accuracy of the positives whose needle is in that row and column
(1-based, pooled over image indices): the per-cell heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from .answers import NeedleReply
from .haystack import Haystack


@dataclass
class NeedleScores:
    """Fractions in [0, 1] (None where a metric has no samples) and the counts behind them."""

    mode: str
    grid: int
    exact: Optional[float]
    positives: int
    negatives: int
    invalid: int  #: replies that parsed as nothing (a question of the paper mode counts once)
    index: Optional[float] = None
    existence: Optional[float] = None
    row: Optional[float] = None
    column: Optional[float] = None
    cells: dict[tuple[int, int], Optional[float]] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "mmneedle/") -> dict:
        out = {f"{prefix}mode": self.mode, f"{prefix}exact": self.exact, f"{prefix}positives": self.positives,
               f"{prefix}negatives": self.negatives, f"{prefix}invalid": self.invalid}
        for name in ("index", "existence", "row", "column"):
            if getattr(self, name) is not None:
                out[f"{prefix}{name}"] = getattr(self, name)
        for (r, c), value in sorted(self.cells.items()):
            out[f"{prefix}cell_r{r}_c{c}"] = value
        return out


def _mean(flags: Sequence[bool]) -> Optional[float]:
    return sum(flags) / len(flags) if flags else None


def _cells(haystacks: Sequence[Haystack], right: Sequence[bool], grid: int) -> dict[tuple[int, int], Optional[float]]:
    per_cell: dict[tuple[int, int], list[bool]] = {(r, c): [] for r in range(1, grid + 1) for c in range(1, grid + 1)}
    for haystack, ok in zip(haystacks, right):
        if haystack.target is not None:
            per_cell[haystack.target[1:]].append(ok)
    return {cell: _mean(flags) for cell, flags in per_cell.items()}


def score_official(haystacks: Sequence[Haystack], replies: Sequence[NeedleReply], grid: int) -> NeedleScores:
    if len(haystacks) != len(replies):
        raise ValueError(f"{len(haystacks)} haystacks but {len(replies)} replies")
    exists_right, index_right, exact_right = [], [], []
    for haystack, reply in zip(haystacks, replies):
        exists_right.append((reply.kind == "absent") == (haystack.target is None))
        if haystack.target is not None:
            index_right.append(reply.kind == "cell" and reply.cell[0] == haystack.target[0])
            exact_right.append(reply.kind == "cell" and reply.cell == haystack.target)
    positives = [h for h in haystacks if h.target is not None]
    return NeedleScores(
        mode="official",
        grid=grid,
        exact=_mean(exact_right),
        index=_mean(index_right),
        existence=_mean(exists_right),
        positives=len(positives),
        negatives=len(haystacks) - len(positives),
        invalid=sum(r.kind == "invalid" for r in replies),
        cells=_cells(positives, exact_right, grid),
    )


def score_paper(haystacks: Sequence[Haystack], rows: Sequence[Optional[str]],
                columns: Sequence[Optional[str]]) -> NeedleScores:
    """``rows``/``columns``: the parsed "top"/"bottom" and "left"/"right" replies (None: invalid)."""
    if not len(haystacks) == len(rows) == len(columns):
        raise ValueError(f"{len(haystacks)} haystacks, {len(rows)} row and {len(columns)} column replies")
    if any(h.target is None for h in haystacks):
        raise ValueError("paper mode has no negatives: every haystack must hold its needle")
    row_right = [r == ("top", "bottom")[h.target[1] - 1] for h, r in zip(haystacks, rows)]
    col_right = [c == ("left", "right")[h.target[2] - 1] for h, c in zip(haystacks, columns)]
    exact_right = [a and b for a, b in zip(row_right, col_right)]
    return NeedleScores(
        mode="paper",
        grid=2,
        exact=_mean(exact_right),
        row=_mean(row_right),
        column=_mean(col_right),
        positives=len(haystacks),
        negatives=0,
        invalid=sum(r is None for r in rows) + sum(c is None for c in columns),
        cells=_cells(haystacks, exact_right, 2),
    )

"""Lambda at the end of pretraining, from each run's ``base.json`` (the tiny base it started from): per
setting and converted layer, lambda at the start and at the end of the base's build (means over seeds),
the change end - start with its 95% CI over seeds, and whether it moved: ``|mean change| >= MOVED``.

``base.json`` holds ``{"lambda": {"start": {"text/layer0": 0.21, "text/layer0/std": 0.0, ...}, "end": {...}}}``:
keys ``<tower>/layer<depth>``, and for DIFF V2 (whose lambda depends on the token) ``.../std``, the spread
over a probe batch beside the mean. A vanilla base records no lambda.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from ..paths import BASE_RECORD_FILE
from .format import md_table
from .runs import Job, read_json
from .stats import Estimate, mean_ci

#: a layer whose lambda changed by at least this much over pretraining (mean over seeds) has moved
MOVED = 0.05


@dataclass(frozen=True)
class LayerLambda:
    """One converted layer of one setting, over its seeds."""

    layer: str  #: ``text/layer0``
    start: Estimate
    end: Estimate
    change: Estimate  #: end - start, per seed
    seeds_moved: int  #: seeds whose own |end - start| >= MOVED
    end_std: Optional[float]  #: DIFF V2: the spread over tokens at the end (mean over seeds); None otherwise

    @property
    def moved(self) -> bool:
        return self.change.mean is not None and abs(self.change.mean) >= MOVED


def base_lambda(job: Job) -> dict[str, dict[str, float]]:
    """``{"start": {...}, "end": {...}}`` from the job's base.json; empty when there is none (vanilla)."""
    record = read_json(job.directory / BASE_RECORD_FILE) if job.directory is not None else None
    found = (record or {}).get("lambda") or {}
    return {when: found.get(when) or {} for when in ("start", "end")} if found else {}


def _depth(layer: str) -> tuple[str, int]:
    tower, _, depth = layer.partition("/layer")
    return tower, int(depth) if depth.isdigit() else 0


def layer_lambdas(jobs: list[Job]) -> list[LayerLambda]:
    """Every converted layer any of ``jobs`` recorded, towers and depths in order."""
    records = [r for r in (base_lambda(job) for job in jobs) if r]
    # a layer's lambda ("text/layer0"), not its spread ("/std") or learned part ("/learned")
    layers = sorted({k for r in records for k in r["end"] if re.fullmatch(r"\w+/layer\d+", k)}, key=_depth)
    out = []
    for layer in layers:
        pairs = [(r["start"].get(layer), r["end"].get(layer)) for r in records]
        changes = [end - start for start, end in pairs if start is not None and end is not None]
        stds = [r["end"][f"{layer}/std"] for r in records if r["end"].get(f"{layer}/std") is not None]
        out.append(LayerLambda(layer, mean_ci([s for s, _ in pairs]), mean_ci([e for _, e in pairs]),
                               mean_ci(changes), sum(abs(c) >= MOVED for c in changes),
                               sum(stds) / len(stds) if stds else None))
    return out


def lambda_moves(settings: dict[str, list[Job]]) -> dict[str, list[LayerLambda]]:
    """Every setting whose bases recorded lambda, with its layers."""
    found = {name: layer_lambdas(jobs) for name, jobs in settings.items()}
    return {name: layers for name, layers in found.items() if layers}


def _mean(estimate: Estimate) -> str:
    return "—" if estimate.mean is None else f"{estimate.mean:.3f}"


def base_lambda_table(settings: dict[str, list[Job]]) -> tuple[str, list[str], list[dict[str, Any]]]:
    """The table, one summary line per setting (in how many layers lambda moved), and CSV rows (``key``:
    ``base/lambda/text/layer0``, mean and CI of end - start)."""
    moves = lambda_moves(settings)
    lines, summary, rows = [], [], []
    for name, layers in moves.items():
        for layer in layers:
            spread = "" if layer.end_std is None else f"{layer.end_std:.3f}"
            lines.append([name, layer.layer, _mean(layer.start), layer.end.format(), layer.change.format(),
                          spread, "yes" if layer.moved else "no", f"{layer.seeds_moved} of {layer.change.n}"])
            rows.append({"metric": f"lambda {layer.layer}: end - start of pretraining", "evaluation": "base",
                         "key": f"base/lambda/{layer.layer}", "setting": name, "mean": layer.change.mean,
                         "ci_low": layer.change.low, "ci_high": layer.change.high, "n": layer.change.n})
        moved = [layer.layer for layer in layers if layer.moved]
        largest = max(layers, key=lambda layer: abs(layer.change.mean or 0.0))
        summary.append(f"{name}: lambda moved by at least {MOVED} (mean over seeds) in {len(moved)} of {len(layers)} "
                       f"converted layers; the largest change, {largest.layer}: {largest.change.format()}"
                       + ("" if moved else f"; it stayed within {MOVED} of its start in every layer"))
    if not lines:
        return "no base recorded lambda (vanilla bases have none)", summary, rows
    header = ["setting", "layer", "start (mean over seeds)", "end ± 95% CI", "end - start ± 95% CI",
              "end: spread over tokens (V2)", f"moved (size of mean change >= {MOVED})", "seeds moved"]
    return md_table(header, lines), summary, rows

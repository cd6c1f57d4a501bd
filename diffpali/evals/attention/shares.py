"""Shares of attention on the needle cell, the distractor cells and the text, and their aggregation.

For one attention row (a query position, one head) with weights a_k over the keys, the share of a
group G is sum_{k in G} a_k / sum_k a_k. The three groups partition the keys, so the shares sum to 1.
A softmax row sums to 1 already; a differential row (A1 - lambda A2) sums to 1 - lambda and may hold
negative weights, so its shares are of the *net* attention: a distractor share below 0 means the
second map takes more from the distractors than the first gives them. Dividing by the row's sum also
matches what the layer does next: the per-head RMSNorm removes the row's overall scale.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .layout import SampleLayout

GROUPS = ("needle", "distractor", "text")


def row_shares(maps: torch.Tensor, layout: SampleLayout, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(heads, 3) shares on (needle, distractor, text), averaged over ``rows`` (default: the answer rows).

    ``maps`` is one sequence's (heads, queries, keys) attention.
    """
    rows = maps[:, layout.rows if rows is None else rows, :].double()
    masses = torch.stack([rows[..., layout.needle].sum(-1), rows[..., layout.distractor].sum(-1),
                          rows[..., layout.text].sum(-1)], dim=-1)  # (heads, rows, 3)
    total = masses.sum(-1, keepdim=True)
    if bool((total.abs() < 1e-9).any()):
        raise ValueError("an attention row sums to 0 over the keys: its shares are undefined")
    return (masses / total).mean(dim=1).float()


def image_map(maps: torch.Tensor, layout: SampleLayout, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(images * S,) attention on each image token, averaged over heads and ``rows`` (default: the
    answer rows), as a share of the row sum (float64)."""
    rows = maps[:, layout.rows if rows is None else rows, :].double()
    weights = rows[..., layout.image_tokens] / rows.sum(-1, keepdim=True)
    return weights.mean(dim=(0, 1))  # float64: a nearly blind row's image weights underflow float32


@dataclass
class ShareAccumulator:
    """Per-question shares of every layer, reduced to per-layer means (and standard errors) at the end.

    ``add(layer, key, shares, sample)``: key is "" for the layer's effective map on the answer rows
    (with per-head values and standard errors), or a sub-measure reported with its three groups
    only: a branch ("branch1", "branch2") or other rows ("prompt_rows"); ``shares`` is (heads, 3).
    Questions about one haystack (paper mode asks two) are averaged first: they see the same pixels,
    so the standard error is over haystacks, the independent unit.
    """

    per_sample: dict[tuple[int, str], dict[Any, list[torch.Tensor]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    #: per layer, each question's lambda: its mean over the question's answer rows and the heads
    lambdas: dict[int, list[float]] = field(default_factory=dict)

    def add(self, layer: int, key: str, shares: torch.Tensor, sample: Any = None) -> None:
        """``sample``: the haystack the question is about (None: a unit of its own)."""
        questions = self.per_sample[(layer, key)]
        questions[sample if sample is not None else ("question", len(questions))].append(shares.detach().cpu())

    def metrics(self, prefix: str = "attention/text") -> dict[str, Optional[float]]:
        """Flat metrics: ``{prefix}/layer{i}/{group}`` (mean over heads and samples), ``..._sem``,
        ``needle_of_image`` (needle / (needle + distractor)) and its standard error over samples,
        ``head{h}/{group}``, ``branch{b}/{group}``,
        ``lambda``; and ``{prefix}/mean/...`` over layers."""
        out: dict[str, float] = {}
        layers = sorted({layer for layer, _ in self.per_sample})
        for layer in layers:
            base = f"{prefix}/layer{layer}"
            for key in sorted({k for lay, k in self.per_sample if lay == layer}):
                per_sample = self.per_sample[(layer, key)].values()
                stacked = torch.stack([torch.stack(q).mean(0) for q in per_sample])  # (samples, heads, 3)
                name = f"{base}/{key}" if key else base
                per_sample = stacked.mean(dim=1)  # (samples, 3)
                means = per_sample.mean(dim=0)
                for g, group in enumerate(GROUPS):
                    out[f"{name}/{group}"] = float(means[g])
                out[f"{name}/needle_of_image"] = _needle_of_image(means)
                if key:
                    continue
                for g, group in enumerate(GROUPS):
                    out[f"{name}/{group}_sem"] = _sem(per_sample[:, g])
                ratios = [r for r in (_needle_of_image(sample) for sample in per_sample) if r is not None]
                out[f"{name}/needle_of_image_sem"] = _sem(torch.tensor(ratios)) if ratios else None
                for h, head in enumerate(stacked.mean(dim=0)):
                    for g, group in enumerate(GROUPS):
                        out[f"{name}/head{h}/{group}"] = float(head[g])
            if layer in self.lambdas:
                values = torch.tensor(self.lambdas[layer], dtype=torch.float64)
                out[f"{base}/lambda"] = float(values.mean())
                out[f"{base}/lambda_std"] = float(values.std()) if values.numel() > 1 else 0.0
        for group in (*GROUPS, "needle_of_image"):
            values = [out[f"{prefix}/layer{i}/{group}"] for i in layers
                      if out.get(f"{prefix}/layer{i}/{group}") is not None]
            if values:
                out[f"{prefix}/mean/{group}"] = sum(values) / len(values)
        return out


def _sem(values: torch.Tensor) -> float:
    """Standard error of the mean over samples (0 for a single sample)."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0


#: Below this share of attention on the image, needle / image is left undefined (None): a ratio of
#: two masses of 1e-20 is rounding noise, not a preference for a cell.
MIN_IMAGE_SHARE = 1e-6


def _needle_of_image(means: torch.Tensor) -> Optional[float]:
    """needle / (needle + distractor): the needle cell's part of the attention on the image."""
    image = float(means[0] + means[1])
    return float(means[0]) / image if abs(image) >= MIN_IMAGE_SHARE else None

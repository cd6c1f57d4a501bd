"""Pictures of the attention analysis, written as PNGs (matplotlib, no display).

- :func:`overlay_figure`: per sample, the stitched image with the needle cell outlined and, per text
  layer, the answer rows' attention on its image tokens laid over it;
- :func:`layer_curves`: per layer, the needle cell's share vs an average other cell's (answer rows,
  prompt rows), and the needle's part of the image attention, one colour per checkpoint;
- :func:`lambda_trajectories`: every layer's lambda over training, one panel per run and tower.

``python -m diffpali.report.figures`` draws them from finished runs (several runs on one figure).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..base import pyplot, save_figure

#: Key prefix of the text decoder's attention metrics (``attention/text/layer{i}/needle``, ...).
PREFIX = "attention/text"
CURVES_FILE = "attention_layers.png"
OVERLAY_FILE = "attention_overlays.png"
PROMPT_OVERLAY_FILE = "attention_overlays_prompt.png"
OVERLAY_DATA_FILE = "attention_overlays.json"  #: the overlays' data, to draw several runs' together later
LAMBDA_FILE = "lambda_trajectories.png"
MAX_LAYER_PANELS = 6  #: overlay columns beyond the image; deeper models show evenly spaced layers
#: An overlay panel whose rows give the image less than this share is not coloured: scaled per panel,
#: 1e-20 of attention would look as bright as all of it.
MIN_DRAWN_IMAGE_SHARE = 1e-3
ROW_SETS = {"answer": "answer rows", "prompt": "prompt rows (caption, question)"}


@dataclass
class OverlayItem:
    """One sample to draw: the image holding the needle, the 1-based target, per-layer token weights."""

    image: Any  #: PIL image
    caption: str
    target: tuple[int, int, int]
    maps: list[Any]  #: per layer, (S,) weights on this image's tokens in raster order (a tensor or an array)
    image_path: str = ""  #: where the image is (the haystack cache), for redrawing from JSON
    sample_id: int = -1
    name: str = ""  #: shown above the image (e.g. the model, when several are compared)
    prompt_maps: list[Any] = field(default_factory=list)  #: the same for the prompt rows


def write_overlays(path: Path, items: Sequence[OverlayItem], grid: int) -> Path:
    """The overlay data as JSON, so several runs' overlays of one sample can be drawn together later."""
    path.write_text(json.dumps({"grid": grid, "items": [
        {"sample_id": i.sample_id, "caption": i.caption, "target": list(i.target), "image_path": i.image_path,
         "maps": [[float(v) for v in m] for m in i.maps],
         "prompt_maps": [[float(v) for v in m] for m in i.prompt_maps]} for i in items]}))
    return path


def read_overlays(path: Path) -> tuple[int, list[OverlayItem]]:
    """(grid, items) from :func:`write_overlays`' file, images reopened from their paths."""
    data = json.loads(path.read_text())
    items = []
    for raw in data["items"]:
        with Image.open(raw["image_path"]) as im:
            image = im.convert("RGB")
        items.append(OverlayItem(image, raw["caption"], tuple(raw["target"]),
                                 [np.asarray(m, dtype=np.float64) for m in raw["maps"]],
                                 raw["image_path"], int(raw["sample_id"]),
                                 prompt_maps=[np.asarray(m, dtype=np.float64)
                                              for m in raw.get("prompt_maps", [])]))
    return int(data["grid"]), items


def shown_layers(count: int, limit: int = MAX_LAYER_PANELS) -> list[int]:
    """All layers when few, else ``limit`` evenly spaced ones (first and last included)."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def overlay_figure(items: Sequence[OverlayItem], grid: int, path: Path, label: str, rows: str = "answer") -> Path:
    """One row per sample: the image, then one panel per (shown) layer and the mean over layers, for
    the answer rows' maps or the prompt rows' (``rows``).

    Each panel says the rows' share on the image and the needle cell's part of it. Differential maps
    can be negative: those panels use a diverging scale centred on 0.
    """
    if rows not in ROW_SETS:
        raise ValueError(f"rows={rows!r}: must be one of {', '.join(ROW_SETS)}")
    plt = pyplot()
    from matplotlib.patches import Rectangle  # deferred with pyplot: the backend is chosen first

    chosen = [item.maps if rows == "answer" else item.prompt_maps for item in items]
    if not all(chosen):
        raise ValueError(f"no {ROW_SETS[rows]} maps to draw")
    layers = shown_layers(len(chosen[0]))
    columns = 2 + len(layers)
    fig, axes = plt.subplots(len(items), columns, figsize=(1.9 * columns, 2.4 * len(items) + 0.8), squeeze=False)
    for row, (item, maps) in enumerate(zip(items, chosen)):
        width, height = item.image.size
        _, r, c = item.target
        cell_w, cell_h = width / grid, height / grid
        arrays = [np.asarray(m, dtype=np.float64) for m in maps]  # numpy: the report draws these without torch
        panels = [(f"layer {i}", arrays[i]) for i in layers] + [("mean of layers", np.stack(arrays).mean(0))]
        ax = axes[row, 0]
        ax.imshow(item.image)
        ax.set_title((f"{item.name}\n" if item.name else "") + f"{item.caption} (row {r}, col {c})", fontsize=7)
        for ax, (name, weights) in zip(axes[row, 1:], panels):
            side = int(round(weights.size ** 0.5))
            values = weights.reshape(side, side)
            ax.imshow(item.image, alpha=0.45)
            total = float(values.sum())  # the rows' share on the image at all
            if abs(total) < MIN_DRAWN_IMAGE_SHARE:
                ax.set_title(f"{name}\nimage {total:.1g}: not drawn", fontsize=7)
                continue
            low = float(values.min())
            peak = abs(values).max()
            scale = dict(cmap="RdBu_r", vmin=-peak, vmax=peak) if low < 0 else dict(cmap="magma")
            ax.imshow(values, extent=(0, width, height, 0), alpha=0.6, interpolation="nearest", **scale)
            needle = _cell_mask(side, grid, r - 1, c - 1)
            ax.set_title(f"{name}\nimage {total:.2g}, needle {float(values[needle].sum()) / total:.2f}", fontsize=7)
        for ax in axes[row]:
            ax.add_patch(Rectangle(((c - 1) * cell_w, (r - 1) * cell_h), cell_w, cell_h, fill=False,
                                   edgecolor="lime", linewidth=2))
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{label}\n{ROW_SETS[rows]}' attention on the image tokens (text decoder, mean over heads), "
                 f"needle cell outlined\n'image': the rows' share on the image "
                 f"(not drawn below {MIN_DRAWN_IMAGE_SHARE:g}); "
                 f"'needle': the needle cell's part of it (chance {1 / grid ** 2:.2f});\ncolours relative per panel "
                 f"(red-blue: a differential map with negative weights)", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _cell_mask(side: int, grid: int, row: int, col: int) -> Any:
    """Boolean (side, side) mask of the patches whose centre lies in cell (row, col), 0-based."""
    centre = (2 * np.arange(side) + 1) * grid // (2 * side)
    return (centre[:, None] == row) & (centre[None, :] == col)


def _layers(metrics: dict[str, Any]) -> list[int]:
    return sorted(int(k.split("/")[2][len("layer"):]) for k in metrics
                  if k.startswith(f"{PREFIX}/layer") and k.count("/") == 3 and k.endswith("/needle"))


def layer_curves(runs: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Per layer, one colour per run (label -> its eval=attention metrics).

    Left: the answer rows' share on the needle cell (solid, ± standard error) and on an average other
    cell (dashed). Middle: the same for the prompt rows. Right: the needle cell's part of the image
    attention, answer rows (solid) and prompt rows (dotted), with chance.
    """
    plt = pyplot()

    fig, (answer_ax, prompt_ax, ratio_ax) = plt.subplots(1, 3, figsize=(14, 4.2))
    chance = None
    for n, (label, metrics) in enumerate(runs.items()):
        layers = _layers(metrics)
        if not layers:
            raise ValueError(f"{label}: no {PREFIX}/layer*/needle metrics (not an eval=attention run?)")
        color = f"C{n}"
        chance = metrics.get("attention/chance_needle_of_image", chance)
        other_cells = max(1.0, round(1 / chance) - 1) if chance else 1.0
        get = partial(_series, metrics, layers)
        answer_ax.errorbar(layers, get("needle"), yerr=get("needle_sem"), color=color, marker="o", capsize=3,
                           label=f"{label}: needle cell")
        answer_ax.plot(layers, [d / other_cells for d in get("distractor")], color=color, marker="x", linestyle="--",
                       label=f"{label}: mean other cell")
        if any(f"{PREFIX}/layer{i}/prompt_rows/needle" in metrics for i in layers):
            prompt_ax.plot(layers, get("prompt_rows/needle"), color=color, marker="o", label=f"{label}: needle cell")
            prompt_ax.plot(layers, [d / other_cells for d in get("prompt_rows/distractor")], color=color, marker="x",
                           linestyle="--", label=f"{label}: mean other cell")
            ratio_ax.plot(layers, get("prompt_rows/needle_of_image"), color=color, marker="s", linestyle=":",
                          label=f"{label}: prompt rows")
        ratio_ax.plot(layers, get("needle_of_image"), color=color, marker="o", label=f"{label}: answer rows")
    if chance:
        ratio_ax.axhline(chance, color="grey", linestyle="-.", label=f"chance ({chance:.2f})")
    answer_ax.set_title("answer rows: share of net attention", fontsize=9)
    prompt_ax.set_title("prompt rows (caption, question): share of net attention", fontsize=9)
    ratio_ax.set_title("needle cell / all image attention\n(missing: rows give the image < 1e-6)", fontsize=9)
    ticks = sorted({i for m in runs.values() for i in _layers(m)})
    for ax in (answer_ax, prompt_ax, ratio_ax):
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("text decoder layer")
        ax.set_xticks(ticks)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _series(metrics: dict[str, Any], layers: list[int], group: str) -> list[float]:
    """One metric group over ``layers``; a missing or undefined value is NaN (a gap in the plot)."""
    return [_nan(metrics.get(f"{PREFIX}/layer{i}/{group}")) for i in layers]


def _nan(value: Any) -> float:
    """None (an undefined ratio) as NaN, which matplotlib leaves as a gap."""
    return float("nan") if value is None else float(value)


def lambda_trajectories(runs: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """lambda per layer over training steps: one row per run, one column per tower."""
    plt = pyplot()

    towers = sorted({name.split("/")[0] for history in runs.values() for name in history})
    if not towers:
        raise ValueError("no lambda history to draw (vanilla runs have none)")
    fig, axes = plt.subplots(len(runs), len(towers), figsize=(4.5 * len(towers), 2.8 * len(runs)), squeeze=False)
    for row, (label, history) in enumerate(runs.items()):
        for col, tower in enumerate(towers):
            ax = axes[row, col]
            # a layer's lambda ("text/layer0"), not its spread over tokens ("text/layer0/std", DIFF V2)
            layers = {n: int(n.split("layer")[-1]) for n in history if re.fullmatch(rf"{tower}/layer\d+", n)}
            names = sorted(layers, key=layers.get)
            for depth, name in enumerate(names):
                steps, values = zip(*history[name])
                ax.plot(steps, values, color=plt.cm.viridis(depth / max(1, len(names) - 1)), label=name.split("/")[1])
            ax.set_title(f"{label}: {tower} tower", fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel("lambda")
            if names:
                ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)

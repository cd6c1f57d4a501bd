"""Distractor scaling: the scenes say what they claim (hard, easy, absent), are cached exactly, and the
task's per-item scores agree with its metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from diffpali.config import EvalTaskConfig, EvaluateConfig, LoggerConfig
from diffpali.evals.base import read_items
from diffpali.evals.distractors.sets import DistractorPoint, DistractorSetSpec, build_samples, load_or_build, points
from diffpali.scenes.scene import ALL_LABELS


def labels_of(haystack) -> list[tuple[str, str]]:
    """(shape, colour) of every drawn cell: refs read ``drawn:{colour} {shape}``."""
    out = []
    for cells in haystack.cells:
        for ref in cells:
            if ref != "blank":
                color, shape = ref.removeprefix("drawn:").split(" ")
                out.append((shape, color))
    return out


@pytest.mark.parametrize("kind", ["hard", "easy"])
def test_distractors_share_one_attribute_when_hard_and_none_when_easy(kind):
    records, _ = build_samples(DistractorPoint(4, 7, kind), samples=20, negative_fraction=0.25, seed=3, image_size=64)
    for record in records:
        _, color, shape = record.caption.split(" ")
        target = (shape, color)
        labels = labels_of(record)
        present = target in labels
        assert present == (record.target is not None)
        distractors = [label for label in labels if label != target]
        assert len(distractors) == 7
        for d_shape, d_color in distractors:
            shared = (d_shape == shape) + (d_color == color)
            assert shared == (1 if kind == "hard" else 0), (target, (d_shape, d_color))


def test_targets_cycle_through_every_cell_and_k0_has_only_the_target():
    records, _ = build_samples(DistractorPoint(2, 0, "none"), samples=16, negative_fraction=0.0, seed=0, image_size=64)
    assert Counter(r.target for r in records) == Counter({(1, r, c): 4 for r in (1, 2) for c in (1, 2)})
    assert all(len(labels_of(r)) == 1 for r in records)
    two_images, _ = build_samples(DistractorPoint(2, 3, "easy", images=2), samples=8, negative_fraction=0.0, seed=0,
                                  image_size=64)
    assert {r.target[0] for r in two_images} == {1, 2}


def test_points_that_do_not_fit_are_left_out_or_refused():
    names = [p.name for p in points([2, 4], [0, 7, 15], ["hard"], [1])]
    assert names == ["N2/M1/none/k0", "N4/M1/none/k0", "N4/M1/hard/k7", "N4/M1/hard/k15"]
    with pytest.raises(ValueError, match="do not fit"):
        DistractorPoint(2, 4, "hard")
    with pytest.raises(ValueError, match="k = 0 has kind 'none'"):
        DistractorPoint(2, 0, "hard")


def test_a_point_is_drawn_once_and_read_back_identically(tmp_path):
    spec = DistractorSetSpec(DistractorPoint(3, 3, "hard"), samples=6, negative_fraction=0.5, seed=1, image_size=48)
    first = load_or_build(spec, tmp_path)
    again = load_or_build(spec, tmp_path)
    assert first.haystacks == again.haystacks and first.directory == again.directory
    assert [im.tobytes() for h in first.haystacks for im in first.images(h)] == \
           [im.tobytes() for h in again.haystacks for im in again.images(h)]
    assert sum(h.target is None for h in first.haystacks) == 3
    assert len(ALL_LABELS) == 24


def test_the_task_scores_every_item_and_its_metrics_are_their_means(tiny_model, tiny_processor, tmp_path):
    from diffpali.trained_evals import run_task

    cfg = EvaluateConfig(ckpt="base", eval=EvalTaskConfig(task="distractors", samples=6, negative_fraction=0.5,
                                                          distractor_grids=[2], distractor_counts=[0, 1],
                                                          distractor_images=[1], attention_samples=2,
                                                          cache_dir=str(tmp_path / "cache")),
                         logger=LoggerConfig(kind="none"), output_dir=str(tmp_path / "run"))
    cfg.validate()
    torch.manual_seed(0)
    metrics, outcome = run_task(cfg, tiny_model, tiny_processor, "cpu", Path(cfg.output_dir))
    items = read_items(Path(cfg.output_dir) / "items.jsonl")
    for point in ("N2/M1/none/k0", "N2/M1/hard/k1", "N2/M1/easy/k1"):
        key = f"distractors/{point}"
        exact = items[f"{key}/exact"]
        assert len(exact) == metrics[f"{key}/positives"] == 3
        assert metrics[f"{key}/exact"] == pytest.approx(sum(exact.values()) / len(exact))
        assert metrics[f"{key}/existence"] == pytest.approx(sum(items[f"{key}/existence"].values()) / 6)
        assert metrics[f"{key}/attention_samples"] == 2 and 0 <= metrics[f"{key}/needle_of_image"] <= 1
    assert (Path(cfg.output_dir) / "distractor_curves.png").stat().st_size > 0
    assert "N2/M1/hard/k1" in outcome.summary

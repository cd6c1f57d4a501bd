"""MMNeedle: haystacks put the needle where the label says, answers parse exactly, one scorer for all."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from PIL import Image, ImageChops

from diffpali.data.collate import PaliGemmaCollator
from diffpali.evals.mmneedle.answers import NeedleReply, parse_needle_reply, parse_side
from diffpali.evals.mmneedle.haystack import Haystack, HaystackSpec, build_haystacks, load_or_build, render
from diffpali.evals.mmneedle.plots import cell_heatmap
from diffpali.evals.mmneedle.scoring import score_official, score_paper
from diffpali.evals.mmneedle.sources import NeedleItem, coco_items, easy_vqa_items


@pytest.fixture(scope="module")
def test_items():
    return easy_vqa_items("test")


def _crop(image: Image.Image, row: int, col: int, cell: int) -> Image.Image:
    return image.crop(((col - 1) * cell, (row - 1) * cell, col * cell, row * cell))


def test_the_needle_is_where_its_label_says_by_pixel_content(test_items):
    cell = 32
    paths = {i.ref: i.path for i in test_items}
    captions = {i.ref: i.caption for i in test_items}
    haystacks = build_haystacks(test_items, images=2, grid=2, samples=24, negative_fraction=0.25, seed=3)
    for haystack in haystacks:
        stitched = render(haystack, paths, 2, cell)
        if haystack.target is None:
            assert haystack.caption not in {c for image in haystack.captions for c in image}
            continue
        index, row, col = haystack.target
        ref = haystack.cells[index - 1][(row - 1) * 2 + (col - 1)]
        assert captions[ref] == haystack.caption
        with Image.open(paths[ref]) as source:
            expected = source.convert("RGB").resize((cell, cell), Image.BICUBIC)
        # the target cell holds the needle's own pixels, and no other cell does
        assert ImageChops.difference(_crop(stitched[index - 1], row, col, cell), expected).getbbox() is None
        others = [(m, r, c) for m in (1, 2) for r in (1, 2) for c in (1, 2) if (m, r, c) != haystack.target]
        assert all(ImageChops.difference(_crop(stitched[m - 1], r, c, cell), expected).getbbox() is not None
                   for m, r, c in others if haystack.captions[m - 1][(r - 1) * 2 + (c - 1)] != haystack.caption)


def test_paper_mode_spreads_needles_evenly_over_the_cells(test_items):
    haystacks = build_haystacks(test_items, images=1, grid=2, samples=200, negative_fraction=0.0, seed=0)
    assert Counter(h.target for h in haystacks) == {(1, 1, 1): 50, (1, 1, 2): 50, (1, 2, 1): 50, (1, 2, 2): 50}


def test_official_mode_balances_cells_and_keeps_negatives_out(test_items):
    haystacks = build_haystacks(test_items, images=2, grid=2, samples=100, negative_fraction=0.5, seed=1)
    counts = Counter(h.target for h in haystacks if h.target is not None)
    assert sum(counts.values()) == 50 and len(counts) == 8
    assert max(counts.values()) - min(counts.values()) <= 1
    for haystack in haystacks:
        flat = [c for image in haystack.captions for c in image]
        assert len(flat) == len(set(flat)) == 8  # no caption twice within a haystack
        assert (haystack.caption in flat) == (haystack.target is not None)


def test_haystacks_are_fixed_by_the_seed(test_items):
    one = build_haystacks(test_items, images=1, grid=2, samples=20, negative_fraction=0.5, seed=7)
    assert one == build_haystacks(test_items, images=1, grid=2, samples=20, negative_fraction=0.5, seed=7)
    assert one != build_haystacks(test_items, images=1, grid=2, samples=20, negative_fraction=0.5, seed=8)


def test_too_few_distinct_captions_is_a_clear_error(tmp_path):
    items = [NeedleItem(f"x/{k}", f"caption {k % 3}", str(tmp_path / f"{k}.png")) for k in range(9)]
    with pytest.raises(ValueError, match="needs 5 distinct captions .* the source has 3"):
        build_haystacks(items, images=1, grid=2, samples=4, negative_fraction=0.5, seed=0)


def test_the_cache_serves_the_same_pixels_and_refuses_a_foreign_manifest(test_items, tmp_path):
    spec = HaystackSpec("easy_vqa/test", images=1, grid=2, cell_size=16, samples=8, negative_fraction=0.5, seed=0)
    built = load_or_build(spec, test_items, tmp_path)
    png = built.image_paths(built.haystacks[0])[0]
    stamp = png.stat().st_mtime_ns
    again = load_or_build(spec, [], tmp_path)  # no items needed: nothing is rebuilt
    assert again.haystacks == built.haystacks and png.stat().st_mtime_ns == stamp
    assert again.images(again.haystacks[0])[0].size == (32, 32)
    manifest = built.directory / "haystacks.json"
    data = json.loads(manifest.read_text())
    data["spec"]["seed"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="delete the folder"):
        load_or_build(spec, test_items, tmp_path)


def test_coco_source_takes_the_first_caption_and_names_a_missing_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg", format="JPEG")
    captions = {"images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"id": 9, "image_id": 1, "caption": "A  dog."},
                                {"id": 3, "image_id": 1, "caption": "A cat. "}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(captions))
    assert coco_items(path, tmp_path) == [NeedleItem("coco/val2014/1", "A cat.", str(tmp_path / "a.jpg"))]
    captions["images"].append({"id": 2, "file_name": "missing.jpg"})
    captions["annotations"].append({"id": 4, "image_id": 2, "caption": "x"})
    path.write_text(json.dumps(captions))
    with pytest.raises(FileNotFoundError, match="image_id=2: .*missing.jpg is missing"):
        coco_items(path, tmp_path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        coco_items(path, tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("1, 2, 1", NeedleReply("cell", (1, 2, 1))),
    ("1,2,1.", NeedleReply("cell", (1, 2, 1))),
    (" (2, 1, 2) ", NeedleReply("cell", (2, 1, 2))),
    ("1 2 2", NeedleReply("cell", (1, 2, 2))),
    ("-1", NeedleReply("absent")),
    ("-1.", NeedleReply("absent")),
    ("1, 2", NeedleReply("invalid")),
    ("-1, 1, 1", NeedleReply("invalid")),
    ("1, 2, 1, 1", NeedleReply("invalid")),
    ("the top left", NeedleReply("invalid")),
    ("", NeedleReply("invalid")),
    ("yes", NeedleReply("invalid")),
])
def test_needle_replies_parse_exactly(text, expected):
    assert parse_needle_reply(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("top.", "top"), ("Bottom", "bottom"), (" TOP ", "top"), ("the bottom", "bottom"),
    ("top left", None), ("bottom half", None), ("left", None), ("", None), ("topp", None),
])
def test_side_replies_parse_exactly(text, expected):
    assert parse_side(text, ("top", "bottom")) == expected


def _stack(target, caption="c"):
    return Haystack(0, (("a", "b", "c", "d"),), (("a", "b", "c", "d"),), caption, target)


def test_official_scores_equal_hand_computed_values():
    haystacks = [_stack((1, 1, 1)), _stack((1, 2, 2)), _stack((1, 1, 2)), _stack(None, "z"), _stack(None, "z")]
    replies = [NeedleReply("cell", (1, 1, 1)),  # exact
               NeedleReply("cell", (1, 2, 1)),  # index right, cell wrong
               NeedleReply("absent"),           # says absent on a positive
               NeedleReply("absent"),           # right negative
               NeedleReply("invalid")]          # garbage on a negative: not "-1", so existence wrong
    s = score_official(haystacks, replies, grid=2)
    assert (s.exact, s.index, s.existence) == (pytest.approx(1 / 3), pytest.approx(2 / 3), pytest.approx(3 / 5))
    assert (s.positives, s.negatives, s.invalid) == (3, 2, 1)
    assert s.cells == {(1, 1): 1.0, (1, 2): 0.0, (2, 1): None, (2, 2): 0.0}


def test_paper_mode_counts_a_cell_only_when_row_and_column_are_right():
    haystacks = [_stack((1, 1, 1)), _stack((1, 1, 2)), _stack((1, 2, 1)), _stack((1, 2, 2))]
    rows = ["top", "top", "top", None]       # third row wrong, fourth unparseable
    cols = ["left", "left", "left", "right"]  # second column wrong
    s = score_paper(haystacks, rows, cols)
    assert s.exact == 0.25 and s.row == 0.5 and s.column == 0.75 and s.invalid == 1
    assert s.cells == {(1, 1): 1.0, (1, 2): 0.0, (2, 1): 0.0, (2, 2): 0.0}
    metrics = s.as_metrics()
    assert metrics["mmneedle/exact"] == 0.25 and metrics["mmneedle/cell_r1_c1"] == 1.0
    assert "mmneedle/index" not in metrics


def test_heatmap_png_is_written_and_not_blank(tmp_path):
    path = cell_heatmap({(1, 1): 1.0, (1, 2): 0.0, (2, 1): None, (2, 2): 0.5}, 2, "t", tmp_path / "h.png")
    with Image.open(path) as im:
        assert im.width > 100 and len(set(im.convert("RGB").getdata())) > 20


def test_several_images_per_sample_reach_the_model_as_several_image_blocks(tiny_processor):
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    batch = PaliGemmaCollator(tiny_processor, train=False)([{"images": images, "prefix": "where?"},
                                                            {"images": images[::-1], "prefix": "where is it?"}])
    image_id = tiny_processor.tokenizer.convert_tokens_to_ids(tiny_processor.image_token)
    per_image = tiny_processor.image_processor.image_seq_length
    assert batch["pixel_values"].shape[0] == 4
    assert ((batch["input_ids"] == image_id).sum(dim=1) == 2 * per_image).all()
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])

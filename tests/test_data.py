"""easy-vqa in the VQAv2 schema, the collate that feeds PaliGemma, and bad-record errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffpali.data import easy_vqa
from diffpali.data.collate import IGNORE_INDEX, PaliGemmaCollator, load_rgb
from diffpali.data.schema import NUM_ANSWERS, BadRecordError, RecordRef, check_records, training_target


def test_easy_vqa_has_the_vqav2_schema():
    ds = easy_vqa.load_easy_vqa("test", limit=50)
    assert len(ds) == 50
    row = ds[0]
    assert set(row) >= {"image", "question", "answers", "answer_type", "category", "question_id"}
    assert len(row["answers"]) == NUM_ANSWERS and len(set(row["answers"])) == 1
    assert row["answer_type"] in ("yes/no", "other") and row["category"] in ("yes/no", "color", "shape")
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64)


def test_validation_is_carved_from_train_by_image_and_never_touches_test():
    train, val = set(easy_vqa.split_image_ids("train")), set(easy_vqa.split_image_ids("validation"))
    assert not train & val and len(val) == 400 and len(train) == 3600
    val_ds = easy_vqa.load_easy_vqa("validation")
    assert set(val_ds["image_id"]) <= val
    # validation images are train images: their files are the train split's
    undecoded = val_ds.select(range(5)).cast_column("image", val_ds.features["image"].__class__(decode=False))
    assert all("train" in image["path"] for image in undecoded["image"])


def test_question_categories_cover_every_answer():
    for answer, kind in [("yes", "yes/no"), ("teal", "color"), ("triangle", "shape")]:
        assert easy_vqa.question_category(answer) == kind
    with pytest.raises(ValueError, match="unknown easy-vqa answer 'maybe'"):
        easy_vqa.question_category("maybe")


def test_collate_masks_the_prefix_and_keeps_token_type_ids(tiny_processor, tiny_batch):
    ids, types, labels, mask = (tiny_batch[k] for k in ("input_ids", "token_type_ids", "labels", "attention_mask"))
    assert ids.shape == types.shape == labels.shape == mask.shape
    # labels exist exactly on the suffix (token type 1); prefix and padding are ignored
    assert torch.equal(labels != IGNORE_INDEX, (types == 1) & (mask == 1))
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    # every row carries image_seq_length image tokens; padding is on the left (for generation)
    image_tokens = (ids == tiny_processor.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [tiny_processor.image_seq_length] * 3
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    # the suffix ends with <eos>
    last = ids[:, -1]
    assert (last == tiny_processor.tokenizer.eos_token_id).all()


def test_generation_collate_has_no_labels_and_ends_at_the_prompt(tiny_processor):
    examples = [{"image": Image.new("RGB", (8, 8)), "prefix": "caption en"}]
    batch = PaliGemmaCollator(tiny_processor, train=False)(examples)
    assert "labels" not in batch and (batch["token_type_ids"] == 0).all()
    tokenizer = tiny_processor.tokenizer
    newline = tokenizer.convert_tokens_to_ids("\n") if "\n" in tokenizer.get_vocab() else None
    decoded = tiny_processor.tokenizer.decode(batch["input_ids"][0, -3:])
    assert decoded.endswith("\n") or batch["input_ids"][0, -1].item() == newline


def test_training_target_is_the_most_frequent_answer_first_on_ties():
    assert training_target(["2", "two", "2", " two ", "3"]) == "2"
    assert training_target(["no", "yes"]) == "no"


def test_bad_records_are_named_or_skipped_and_counted(tmp_path):
    image = tmp_path / "ok.png"
    Image.new("RGB", (4, 4)).save(image)
    rows = [("what?", ["a"], str(image)), ("", ["a"], str(image)), ("why?", [], str(image)),
            ("how?", ["b"], str(tmp_path / "gone.png"))]
    with pytest.raises(BadRecordError, match=r"^easy_vqa\[train\] record 1: empty question"):
        check_records(rows, "easy_vqa", "train", "error")
    keep, skipped = check_records(rows, "easy_vqa", "train", "skip")
    assert keep == [0]
    assert [s.split(": ", 1)[1] for s in skipped] == ["empty question", "no answers",
                                                      f"image file not found: {tmp_path / 'gone.png'}"]


def test_an_unreadable_image_names_its_record(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ref = RecordRef("vqav2", "validation", 7, question_id=123)
    with pytest.raises(ValueError, match=r"vqav2\[validation\] record 7, question_id=123: unreadable image"):
        load_rgb(str(broken), ref)


def _vqav2_train(path, image_ids):
    """A local VQAv2-schema train split: two questions per image id, in the given row order."""
    import io

    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    ids = [i for i in image_ids for _ in range(2)]
    features = Features({"question_id": Value("int64"), "image_id": Value("int64"), "image": ImageFeature(),
                         "question": Value("string"), "answers": Sequence(Value("string")),
                         "answer_type": Value("string")})
    rows = {"question_id": [10 * i + k % 2 for k, i in enumerate(ids)], "image_id": ids,
            "image": [{"bytes": buffer.getvalue(), "path": None}] * len(ids), "question": ["what color?"] * len(ids),
            "answers": [["red"] * 10] * len(ids), "answer_type": ["other"] * len(ids)}
    Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def test_vqav2_minival_is_a_fixed_slice_of_train_images_held_out_of_training(tmp_path):
    from diffpali.config import DataConfig
    from diffpali.data.datamodule import load_split

    image_ids = list(range(300))
    shuffled = image_ids[::-1]
    sets = []
    for name, order in (("a", image_ids), ("b", shuffled)):
        cfg = DataConfig(name="vqav2", path=str(_vqav2_train(tmp_path / name, order)), val_split="minival",
                         test_split="validation", minival_fraction=0.1, check_images=False)
        minival = set(load_split(cfg, "validation", None)["image_id"])
        train = set(load_split(cfg, "train", None)["image_id"])
        assert minival and train and not minival & train and minival | train == set(image_ids)
        assert 10 <= len(minival) <= 50  # about 10% of 300 images
        sets.append(minival)
    assert sets[0] == sets[1]  # membership follows the image id, not the row order


def test_vqav2_validation_equal_to_the_reported_split_is_refused():
    from diffpali.config import ConfigError, DataConfig

    with pytest.raises(ConfigError, match="data.val_split='validation': is also test_split"):
        DataConfig(name="vqav2", path="some/hub-id", val_split="validation", test_split="validation").validate()
    DataConfig(name="vqav2", path="some/hub-id", val_split="minival", test_split="validation").validate()

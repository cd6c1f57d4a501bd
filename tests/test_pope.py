"""POPE: probe construction, yes/no parsing, the five metrics, caching, ``evaluate.py eval=pope``, the report."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from diffpali.config import ConfigError, EvaluateConfig, register_configs, to_typed
from diffpali.evals.pope.probes import SETTINGS, ObjectStats, build_probes, draw_absent, load_or_build
from diffpali.evals.pope.scoring import METRICS, PopeScores, parse_yes_no, score_pope
from diffpali.evals.pope.sources import LabelledImage, ObjectSource, coco_source, easy_vqa_source

ROOT = Path(__file__).resolve().parents[1]
COLORS, SHAPES = ("red", "green", "blue", "black"), ("circle", "square", "triangle")


# --------------------------------------------------------------------------------------------
# parsing and metrics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, parsed", [
    ("yes", "yes"), ("Yes.", "yes"), ("YES!", "yes"), (" no", "no"), ("no.", "no"), ("No\n", "no"),
    ("\tyes ", "yes"), ("yes?", "yes"),
    ("yes, there is", "other"), ("yes no", "other"), ("nope", "other"), ("", "other"), ("   ", "other"),
    ("yess", "other"), ("y", "other"), ("not", "other"), ("yes.no", "other"), ("red", "other"),
])
def test_yes_no_parsing_is_exact(reply, parsed):
    assert parse_yes_no(reply) == parsed


def test_metrics_equal_hand_computed_values():
    truths = ["yes"] * 5 + ["no"] * 5
    replies = ["yes", "Yes.", "no", "maybe", "YES", "yes", "no", "No.", "no", ""]
    s = score_pope(truths, replies)
    # present: 3 yes (tp), 1 no + 1 other (fn); absent: 1 yes (fp), 3 no (tn), 1 other
    assert (s.tp, s.fn, s.fp, s.tn, s.other, s.probes, s.present, s.absent) == (3, 2, 1, 3, 2, 10, 5, 5)
    assert s.accuracy == pytest.approx(6 / 10)
    assert s.precision == pytest.approx(3 / 4)
    assert s.recall == pytest.approx(3 / 5)
    assert s.f1 == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert s.yes_ratio == pytest.approx(4 / 10)
    m = s.as_metrics("pope/random/")
    assert [m[f"pope/random/{k}"] for k in METRICS] == [s.accuracy, s.precision, s.recall, s.f1, s.yes_ratio]
    assert m["pope/random/other"] == 2


def test_zero_division_gives_zero_and_bad_inputs_are_named():
    never_yes = score_pope(["yes", "no", "yes", "no"], ["no", "no", "other", "no"])
    assert (never_yes.precision, never_yes.recall, never_yes.f1, never_yes.yes_ratio) == (0.0, 0.0, 0.0, 0.0)
    assert never_yes.accuracy == 0.5
    empty = score_pope([], [])
    assert [getattr(empty, k) for k in METRICS] == [0.0] * 5
    only_absent = score_pope(["no", "no"], ["yes", "no"])  # no present object: recall 0 by definition
    assert (only_absent.recall, only_absent.precision, only_absent.accuracy) == (0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="2 truths but 1 replies"):
        score_pope(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="truth 'maybe': must be 'yes'"):
        score_pope(["maybe"], ["yes"])


def test_all_yes_is_perfect_recall_and_half_precision():
    s = score_pope(["yes", "no"] * 3, ["yes"] * 6)
    assert (s.recall, s.precision, s.yes_ratio, s.accuracy) == (1.0, 0.5, 1.0, 0.5)
    assert s == PopeScores(tp=3, fp=3, tn=0, fn=0)


# --------------------------------------------------------------------------------------------
# probes on hand-built labels
# --------------------------------------------------------------------------------------------
def img(ref: str, *objects: str) -> LabelledImage:
    return LabelledImage(ref, f"/nowhere/{ref}.png", frozenset(objects))


def hand_source(probed: list[LabelledImage], counted: list[LabelledImage], per_kind: int = 1) -> ObjectSource:
    kinds = {**dict.fromkeys(COLORS, "color"), **dict.fromkeys(SHAPES, "shape")}
    questions = {"color": "is there a {object} shape in the image?", "shape": "is there a {object} in the image?"}
    return ObjectSource("hand", probed, counted, kinds, questions, per_kind)


#: Training labels built so that the settings disagree. Frequencies: blue 5, green 4, black 3, red 2;
#: circle 6, square 5, triangle 3. Circles are mostly black, squares mostly green, triangles mostly red.
COUNTED = (
    [img(f"t{i}", "blue", "square") for i in (0, 1)] + [img(f"t{i}", "blue", "circle") for i in (2, 3)]
    + [img("t4", "blue", "triangle")] + [img(f"t{i}", "green", "square") for i in (5, 6, 7)]
    + [img("t8", "green", "circle")] + [img(f"t{i}", "black", "circle") for i in (9, 10, 11)]
    + [img(f"t{i}", "red", "triangle") for i in (12, 13)]
)


def test_object_statistics_count_images():
    stats = ObjectStats.count(COUNTED)
    assert [stats.frequency[c] for c in COLORS] == [2, 4, 5, 3]
    assert [stats.frequency[s] for s in SHAPES] == [6, 5, 3]
    assert stats.cooccurrence[("circle", "black")] == stats.cooccurrence[("black", "circle")] == 3
    assert stats.cooccurrence[("circle", "blue")] == 2 and stats.cooccurrence[("red", "circle")] == 0
    # one colour per image
    assert stats.cooccurrence[("red", "triangle")] == 2 and stats.cooccurrence[("red", "blue")] == 0


def test_popular_and_adversarial_follow_the_frequencies():
    stats = ObjectStats.count(COUNTED)
    rng = random.Random(0)
    # popular: the most frequent absent object of the kind
    assert draw_absent("popular", frozenset({"red", "triangle"}), COLORS, 1, stats, rng) == ["blue"]
    assert draw_absent("popular", frozenset({"blue", "triangle"}), COLORS, 1, stats, rng) == ["green"]
    assert draw_absent("popular", frozenset({"red", "triangle"}), COLORS, 3, stats, rng) == ["blue", "green", "black"]
    assert draw_absent("popular", frozenset({"red", "circle"}), SHAPES, 1, stats, rng) == ["square"]
    # adversarial: the absent object co-occurring most with the present ones, not the most frequent
    assert draw_absent("adversarial", frozenset({"red", "circle"}), COLORS, 1, stats, rng) == ["black"]
    assert draw_absent("adversarial", frozenset({"blue", "circle"}), COLORS, 1, stats, rng) == ["black"]
    assert draw_absent("adversarial", frozenset({"red", "square"}), COLORS, 1, stats, rng) == ["green"]
    assert draw_absent("adversarial", frozenset({"black", "triangle"}), COLORS, 1, stats, rng) == ["red"]
    assert draw_absent("adversarial", frozenset({"red", "circle"}), SHAPES, 1, stats, rng) == ["triangle"]
    # a tie in co-occurrence (red and black: 0 with a blue square) goes to the more frequent: black
    assert draw_absent("adversarial", frozenset({"blue", "square"}), COLORS, 2, stats, rng) == ["green", "black"]
    with pytest.raises(ValueError, match="must be one of random, popular, adversarial"):
        draw_absent("sneaky", frozenset(), COLORS, 1, stats, rng)
    with pytest.raises(ValueError, match="2 absent objects wanted but only 1"):
        draw_absent("random", frozenset({"circle", "square"}), SHAPES, 2, stats, rng)


def test_ties_go_to_the_source_order():
    flat = ObjectStats(Counter({"red": 1, "green": 1, "blue": 1, "black": 1}), Counter())
    assert draw_absent("popular", frozenset({"red"}), COLORS, 2, flat, random.Random(0)) == ["green", "blue"]
    assert draw_absent("adversarial", frozenset({"green"}), COLORS, 1, flat, random.Random(0)) == ["red"]


def test_random_draws_cover_every_absent_object_and_never_a_present_one():
    stats = ObjectStats.count(COUNTED)
    rng = random.Random(1)
    drawn = Counter(draw_absent("random", frozenset({"red", "circle"}), COLORS, 1, stats, rng)[0] for _ in range(3000))
    assert set(drawn) == {"green", "blue", "black"}
    assert all(850 < n < 1150 for n in drawn.values()), drawn  # uniform: 1000 each


def probed_images(n: int = 24) -> list[LabelledImage]:
    return [img(f"p{i}", COLORS[i % 4], SHAPES[i % 3]) for i in range(n)]


def test_probes_are_balanced_and_agree_with_the_labels():
    source = hand_source(probed_images(), COUNTED)
    probes = build_probes(source, images=10, seed=3)
    labels = {image.ref: image.objects for image in source.probed}
    images = [p.image for p in probes["random"][::4]]
    assert len(set(images)) == 10
    for setting in SETTINGS:
        items = probes[setting]
        assert len(items) == 40  # 10 images x 2 kinds x (present, absent)
        for n in range(0, len(items) + 1, 2):  # every even prefix is half present (eval.limit keeps balance)
            assert sum(p.truth == "yes" for p in items[:n]) == n // 2
        for p in items:
            assert (p.object in labels[p.image]) == (p.truth == "yes"), p  # never a present object as absent
            assert p.question == source.question(p.object)
        for kind in ("color", "shape"):
            truths = Counter(p.truth for p in items if p.kind == kind)
            assert truths["yes"] == truths["no"] == 10
        # the same images and present questions in every setting: only the absent half differs
        assert [p for p in items if p.truth == "yes"] == [p for p in probes["random"] if p.truth == "yes"]
    popular_colors = {p.object for p in probes["popular"] if p.truth == "no" and p.kind == "color"}
    assert popular_colors == {"blue", "green"}  # blue, or green when blue is present


def test_probes_are_fixed_by_the_seed_and_nested_by_size():
    source = hand_source(probed_images(), COUNTED)
    assert build_probes(source, 10, seed=3) == build_probes(source, 10, seed=3)
    assert build_probes(source, 10, seed=3)["random"] != build_probes(source, 10, seed=4)["random"]
    small, large = build_probes(source, 4, seed=3), build_probes(source, 10, seed=3)
    for setting in SETTINGS:
        assert large[setting][: len(small[setting])] == small[setting]
    assert len(build_probes(source, 1000, seed=0)["random"]) == 4 * 24  # all images when fewer exist


def test_several_objects_per_image_single_kind():
    objects = ["cat", "dog", "car", "bus", "cup", "tv"]
    probed = [LabelledImage(f"c{i}", f"/x/{i}.jpg", frozenset(objects[i % 3: i % 3 + 3])) for i in range(6)]
    source = ObjectSource("coco-like", probed, probed, dict.fromkeys(objects, "object"),
                          {"object": "Is there a {object} in the image?"}, per_kind=2)
    probes = build_probes(source, 6, seed=0)
    for setting in SETTINGS:
        assert len(probes[setting]) == 6 * 4
        for p in probes[setting]:
            assert (p.object in source.probed[int(p.image[1:])].objects) == (p.truth == "yes")
        for image in {p.image for p in probes[setting]}:
            mine = [p for p in probes[setting] if p.image == image]
            assert len({p.object for p in mine}) == 4  # no object asked twice about one image


# --------------------------------------------------------------------------------------------
# cache and sources
# --------------------------------------------------------------------------------------------
def png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return str(path)


def test_cache_is_reused_and_rechecked_against_the_labels(tmp_path):
    probed = [LabelledImage(i.ref, png(tmp_path / "im" / f"{i.ref}.png"), i.objects) for i in probed_images(6)]
    source = hand_source(probed, COUNTED)
    first = load_or_build(source, 6, 0, tmp_path / "cache")
    assert first.path.is_file() and first.probes == build_probes(source, 6, 0)
    again = load_or_build(source, 6, 0, tmp_path / "cache")
    assert again.path == first.path and again.probes == first.probes
    # other labels under the same source name never reuse the file
    relabelled = hand_source([LabelledImage(i.ref, i.path, frozenset({"blue", "circle"})) for i in probed], COUNTED)
    assert load_or_build(relabelled, 6, 0, tmp_path / "cache").path != first.path
    # a tampered cache that asks about a present object as absent is refused, naming the probe
    data = json.loads(first.path.read_text())
    absent = next(p for p in data["probes"]["popular"] if p["truth"] == "no")
    absent["object"] = next(iter(source.probed[[i.ref for i in probed].index(absent["image"])].objects & set(COLORS)))
    first.path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"POPE probe \(popular\) about '.*' in p\d+ says truth='no'"):
        load_or_build(source, 6, 0, tmp_path / "cache")


def test_a_missing_image_fails_before_any_model_runs(tmp_path):
    probed = [LabelledImage(i.ref, png(tmp_path / f"{i.ref}.png"), i.objects) for i in probed_images(3)]
    probed.append(img("gone", "red", "circle"))
    with pytest.raises(FileNotFoundError, match="gone: image file /nowhere/gone.png is missing"):
        load_or_build(hand_source(probed, COUNTED), 4, 0, tmp_path / "cache")


def write_instances(tmp_path: Path, drop: str | None = None) -> tuple[Path, Path]:
    images_dir = tmp_path / "val2014"
    names = ["person", "dog", "car", "cup", "chair", "bus", "tv", "book"]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    contents = {10: [1, 2, 3], 11: [1, 4, 5, 5], 12: [2]}  # image 12 has too few objects to be probed
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in contents]
    annotations = [{"id": 100 * i + k, "image_id": i, "category_id": c}
                   for i, cs in contents.items() for k, c in enumerate(cs)]
    for im in images:
        png(images_dir / im["file_name"])
    if drop:
        del annotations[0][drop]
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path, images_dir


def test_coco_instances_give_labelled_images(tmp_path):
    instances, images_dir = write_instances(tmp_path)
    source = coco_source(instances, images_dir, per_image=3)
    assert [i.ref for i in source.probed] == ["coco/val2014/10", "coco/val2014/11"]
    assert source.probed[1].objects == {"person", "cup", "chair"} and len(source.counted) == 3
    assert source.question("dog") == "Is there a dog in the image?"
    probes = load_or_build(source, 2, 0, tmp_path / "cache").probes
    for setting in SETTINGS:
        truths = Counter(p.truth for p in probes[setting])
        assert truths == {"yes": 6, "no": 6}
    # adversarial for image 10 (person, dog, car): cup and chair co-occur with person (once each), then
    # the never-seen bus, tv and book tie and the first in category order is taken
    for setting in ("adversarial", "popular"):
        absent = {p.object for p in probes[setting] if p.image.endswith("/10") and p.truth == "no"}
        assert absent == {"cup", "chair", "bus"}, setting


def test_coco_errors_name_what_is_wrong(tmp_path):
    instances, images_dir = write_instances(tmp_path, drop="category_id")
    with pytest.raises(ValueError, match="lacks the field 'category_id'"):
        coco_source(instances, images_dir)
    instances.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="it needs a list 'categories'"):
        coco_source(instances, images_dir)
    instances, images_dir = write_instances(tmp_path / "b")
    (images_dir / "COCO_val2014_000000000011.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="coco/val2014/11: image file .*000000000011.jpg is missing"):
        load_or_build(coco_source(instances, images_dir), 2, 0, tmp_path / "cache")


def test_easy_vqa_probes_use_train_frequencies_and_test_images():
    from diffpali.data import easy_vqa

    source = easy_vqa_source("test")
    test_labels = easy_vqa.image_labels("test")
    train_ids = set(easy_vqa.split_image_ids("train"))
    assert all(i.ref.startswith("easy_vqa/test/") for i in source.probed)
    assert {int(i.ref.rsplit("/", 1)[1]) for i in source.counted} <= train_ids  # validation images excluded
    probes = build_probes(source, 40, seed=0)
    stats = ObjectStats.count(source.counted)
    top_color = max(easy_vqa.COLORS, key=lambda c: (stats.frequency[c], -easy_vqa.COLORS.index(c)))
    for setting in SETTINGS:
        assert Counter(p.truth for p in probes[setting]) == {"yes": 80, "no": 80}
        for p in probes[setting]:
            assert (p.object in test_labels[int(p.image.rsplit("/", 1)[1])]) == (p.truth == "yes")
    for p in probes["popular"]:
        if p.truth == "no" and p.kind == "color":
            present = test_labels[int(p.image.rsplit("/", 1)[1])][0]
            assert p.object == top_color or present == top_color


# --------------------------------------------------------------------------------------------
# config and evaluate.py
# --------------------------------------------------------------------------------------------
def compose_eval(*overrides: str) -> EvaluateConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = compose(config_name="evaluate", overrides=["output_dir=.", "eval=pope", *overrides])
        return to_typed(composed, EvaluateConfig)


def test_eval_pope_config_and_its_rules():
    cfg = compose_eval()
    assert (cfg.eval.task, cfg.eval.setting, cfg.eval.source, cfg.eval.split) == ("pope", "all", "easy_vqa", "test")
    with pytest.raises(ConfigError, match="eval.setting='sometimes': must be one of random, popular, adversarial, all"):
        compose_eval("eval.setting=sometimes")
    with pytest.raises(ConfigError, match="eval.probe_objects=0: must be > 0"):
        compose_eval("eval.probe_objects=0")
    with pytest.raises(ConfigError, match="eval.coco_instances='': source=coco needs an existing path for eval=pope"):
        compose_eval("eval.source=coco")


def test_run_pope_scores_what_the_model_replied(tmp_path, tiny_model, tiny_processor):
    from diffpali.evals.pope.task import REPLIES_FILE, run_pope

    cfg = compose_eval("eval.setting=popular", "eval.probe_images=3", f"eval.cache_dir={tmp_path / 'cache'}",
                       "data.eval_batch_size=4", "data.max_new_tokens=2")
    outcome = run_pope(cfg, tiny_model, tiny_processor, "cpu", tmp_path)
    m = outcome.metrics
    assert m["pope/popular/probes"] == 12 and "pope/random/accuracy" not in m
    assert m["pope"]["seed"] == 0 and m["pope"]["images"] == 3 and m["pope/images"] == 3
    lines = [json.loads(line) for line in (tmp_path / REPLIES_FILE).read_text().splitlines()]
    rescored = score_pope([r["truth"] for r in lines], [r["reply"] for r in lines])
    assert [m[f"pope/popular/{k}"] for k in METRICS] == [getattr(rescored, k) for k in METRICS]
    wrong = outcome.tables["pope/wrong_answers"]
    assert len(wrong.rows) == sum(r["parsed"] != r["truth"] for r in lines)
    assert all(isinstance(row[1], Image.Image) for row in wrong.rows)
    assert "popular" in outcome.summary and "yes-ratio" in outcome.summary


@pytest.mark.slow
def test_evaluate_py_eval_pope_writes_all_five_metrics_per_setting(tmp_path):
    from helpers import smoke_model

    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "ckpt=base", "eval=pope", "eval.probe_images=4", "logger=none",
         f"eval.cache_dir={tmp_path / 'cache'}", *smoke_model(tmp_path / "models"),
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for setting in SETTINGS:
        for name in METRICS:
            assert 0.0 <= metrics[f"pope/{setting}/{name}"] <= 1.0
        assert metrics[f"pope/{setting}/probes"] == 16 and metrics[f"pope/{setting}/present"] == 8
    assert metrics["task"] == "pope" and metrics["pope"]["seed"] == 0
    assert "POPE (easy_vqa/test, 4 images, seed 0" in proc.stdout


# --------------------------------------------------------------------------------------------
# python -m diffpali.report
# --------------------------------------------------------------------------------------------
def write_run(directory: Path, config: dict, overrides: list[str], metrics: dict | None) -> Path:
    directory.mkdir(parents=True)
    status = "completed" if metrics is not None else "running"
    (directory / "job.json").write_text(json.dumps({"status": status, "overrides": overrides, "config": config}))
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def pope_metrics(accuracy: float, yes_ratio: float, settings=SETTINGS) -> dict:
    out = {"task": "pope", "seed": 0}
    for k, setting in enumerate(settings):
        values = {"accuracy": accuracy - 0.1 * k, "precision": 0.8, "recall": 0.9, "f1": 0.85, "yes_ratio": yes_ratio,
                  "other": k}
        out.update({f"pope/{setting}/{name}": v for name, v in values.items()})
    return out


def test_report_pope_table_over_seeds_beside_the_base(tmp_path, capsys):
    import csv
    import statistics

    from diffpali.report.__main__ import main

    train, evals = tmp_path / "train", tmp_path / "evals"
    runs = {}
    for name, row, seed, attn in (("v1", 1, 1, "vanilla"), ("v2", 1, 2, "vanilla"), ("d1", 2, 1, "diff_dup")):
        config = {"table_row": row, "seed": seed, "attn": {"variant": attn, "dup_mode": "separate"}}
        runs[name] = write_run(train / name, config, [f"+experiment/table1=row{row}", f"seed={seed}"],
                               {"test/vqa_accuracy_official": 0.9})
    write_run(evals / "base", {"ckpt": "base", "seed": 0}, ["ckpt=base", "eval=pope"], pope_metrics(0.70, 0.62))
    write_run(evals / "v1", {"ckpt": str(runs["v1"]), "seed": 0}, [f"ckpt={runs['v1']}", "eval=pope"],
              pope_metrics(0.80, 0.50))
    write_run(evals / "v2", {"ckpt": str(runs["v2"]), "seed": 0}, [f"ckpt={runs['v2']}", "eval=pope", "logger=none"],
              pope_metrics(0.90, 0.54))
    write_run(evals / "d1", {"ckpt": str(runs["d1"]), "seed": 0},
              [f"ckpt={runs['d1']}", "eval=pope", "eval.setting=popular"],
              pope_metrics(0.85, 0.40, settings=("popular",)))
    write_run(evals / "d1_small", {"ckpt": str(runs["d1"]), "seed": 0},
              [f"ckpt={runs['d1']}", "eval=pope", "eval.probe_images=10"], pope_metrics(0.60, 0.70))
    write_run(evals / "killed", {"ckpt": str(runs["v1"]), "seed": 0}, [f"ckpt={runs['v1']}", "eval=pope"], None)

    out = tmp_path / "report"
    assert main([str(evals), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "pope.md").read_text()
    assert md in printed and "## POPE: object hallucination" in md and "yes-ratio (%)" in md
    with (out / "pope.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    base = [r for r in rows if r["model"] == "base (no adapter)"]
    assert [r["pope_setting"] for r in base] == list(SETTINGS)
    assert float(base[0]["accuracy_mean_pct"]) == pytest.approx(70.0)
    assert float(base[2]["accuracy_mean_pct"]) == pytest.approx(50.0)
    # both vanilla seeds of row 1 form one line per setting (logger=none does not split them)
    vanilla = [r for r in rows if r["row"] == "1"]
    assert [(r["pope_setting"], r["n"], r["model"]) for r in vanilla] == [(s, "2", "no") for s in SETTINGS]
    assert float(vanilla[0]["accuracy_mean_pct"]) == pytest.approx(85.0)
    assert float(vanilla[0]["accuracy_std_pct"]) == pytest.approx(100 * statistics.stdev([0.8, 0.9]), abs=1e-3)
    assert float(vanilla[0]["yes_ratio_mean_pct"]) == pytest.approx(52.0) and float(vanilla[1]["other"]) == 1.0
    # diff_dup: the popular-only run (the same probes as a full run) and the 10-image run (other probes) kept apart
    dup = [r for r in rows if r["row"] == "2"]
    assert [(r["pope_setting"], r["eval_setting"]) for r in dup] == [
        ("random", "eval.probe_images=10,eval=pope"), ("popular", "eval.probe_images=10,eval=pope"),
        ("adversarial", "eval.probe_images=10,eval=pope"), ("popular", "eval=pope")]
    assert all(r["model"] == "yes (dup, separate)" for r in dup)
    assert "**incomplete** `killed`" in (out / "table1.md").read_text()  # still listed, never averaged in
    assert "`v1` (" not in (out / "table1.md").read_text()  # a POPE-scored run is not "without a score"

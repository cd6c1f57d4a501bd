"""The VQA accuracy, hand-checked against vqaEval.py's rules, and its torchmetrics wrapper."""

from __future__ import annotations

import copy

import pytest
import torch

from diffpali.metrics import VQAAccuracy, normalize_answer, vqa_accuracy


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_official_closed_form_over_leave_one_out_subsets(matches, expected):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_simple_convention_is_min_n_over_3():
    answers = ["cat"] * 2 + ["dog"] * 8
    assert vqa_accuracy("cat", answers, convention="simple") == pytest.approx(2 / 3)
    assert vqa_accuracy("cat", answers) == pytest.approx(0.6)  # the two conventions differ


def test_unanimous_answers_are_not_normalised():
    # vqaEval.py normalises only when the ten answers disagree: "Two." vs "2" then fails.
    assert vqa_accuracy("2", ["Two."] * 10) == 0.0
    assert vqa_accuracy("2", ["Two."] * 9 + ["two"]) == pytest.approx(1.0)
    # surrounding whitespace, newlines and tabs are always stripped
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("The cat", "cat"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("yes.", "yes"),
        ("3.5", "3.5"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation removed, not replaced by a space
        ("red, white", "red white"),
        ("black/white", "black white"),
        ("t-shirt", "t shirt"),
        ("YES!", "yes"),
    ],
)
def test_normalisation_rules(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_scoring_never_mutates_the_callers_answers():
    answers = [" Two.", "2", "two", "2 ", "none", "Yes", "yes", "a cat", "the dog", "1,000"]
    before = copy.deepcopy(answers)
    vqa_accuracy("2", answers)
    vqa_accuracy("2", answers, convention="simple")
    assert answers == before


def test_bad_convention_and_empty_answers_are_refused():
    with pytest.raises(ValueError, match="convention='vqa': must be one of official, simple"):
        vqa_accuracy("a", ["a"], convention="vqa")
    with pytest.raises(ValueError, match="answers is empty"):
        vqa_accuracy("a", [])


def test_metric_breaks_down_by_answer_type_and_reports_empty_types_as_nan():
    metric = VQAAccuracy(answer_types=("yes/no", "number", "other"))
    metric.update(["yes", "2", "cat"], [["yes"] * 10, ["3"] * 10, ["cat"] * 3 + ["dog"] * 7],
                  ["yes/no", "number", "yes/no"])
    values = metric.compute()
    assert values["overall"].item() == pytest.approx((1.0 + 0.0 + 0.9) / 3)
    assert values["yes/no"].item() == pytest.approx(0.95) and values["number"].item() == 0.0
    assert torch.isnan(values["other"]) and values["count"].item() == 3
    with pytest.raises(ValueError, match="answer type 'colour'"):
        metric.update(["x"], [["x"]], ["colour"])

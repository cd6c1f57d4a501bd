"""Confidence intervals and paired comparisons against hand-computed and simulated cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffpali.report.stats import format_p, mean_ci, paired_bootstrap
from diffpali.report.study import findings


def test_mean_ci_is_the_t_interval():
    est = mean_ci([0.5, 0.7, 0.6])
    sd = np.std([0.5, 0.7, 0.6], ddof=1)
    assert est.mean == pytest.approx(0.6) and est.n == 3
    assert est.high - est.mean == pytest.approx(4.303 * sd / math.sqrt(3))
    assert mean_ci([0.4]).low is None and mean_ci([None, 0.4]).n == 1 and mean_ci([]).mean is None


def test_a_real_difference_is_found_and_no_difference_is_called_so():
    rng = np.random.default_rng(1)
    base = [rng.random(400) < 0.6 for _ in range(5)]
    better = [np.where(rng.random(400) < 0.2, True, b) for b in base]  # right on 20% more items, paired
    found = paired_bootstrap(better, base, replicates=500)
    assert found.difference > 0.05 and found.low > 0 and found.significant and found.p_value < 0.01
    same = [np.where(rng.random(400) < 0.5, b, rng.random(400) < 0.6) for b in base]  # noise, same rate
    null = paired_bootstrap(same, base, replicates=500)
    assert null.low < 0 < null.high and not null.significant and "no significant difference" in null.format()


def test_the_interval_widens_when_seeds_disagree():
    rng = np.random.default_rng(2)
    base = [rng.random(300) < 0.5 for _ in range(4)]
    steady = [np.where(rng.random(300) < 0.1, True, b) for b in base]
    erratic = [np.where(rng.random(300) < (0.3 if s % 2 else 0.0), True, b) for s, b in enumerate(base)]
    assert (paired_bootstrap(erratic, base, replicates=400).high - paired_bootstrap(erratic, base, replicates=400).low
            > paired_bootstrap(steady, base, replicates=400).high - paired_bootstrap(steady, base, replicates=400).low)


def test_runs_that_do_not_pair_are_refused():
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap([[1, 0]], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([[1, 0, 1]], [[1, 0]])


def test_an_interval_of_a_fraction_stays_within_zero_and_one():
    est = mean_ci([0.0, 1.0], (0.0, 1.0))
    assert est.low == 0.0 and est.high == 1.0 and est.mean == 0.5
    assert mean_ci([0.0, 1.0]).low < 0  # unbounded: the plain t interval


def test_findings_count_each_settings_figures_and_name_its_largest_gap():
    rows = [
        {"setting": "diff_split", "metric": "VQA", "diff": -0.10, "diff_low": -0.15, "diff_high": -0.05,
         "p_value": 0.0},
        {"setting": "diff_split", "metric": "POPE", "diff": 0.01, "diff_low": -0.02, "diff_high": 0.04, "p_value": 0.4},
        {"setting": "diff_v2", "metric": "VQA", "diff": 0.02, "diff_low": 0.01, "diff_high": 0.03, "p_value": 0.01},
        {"setting": "vanilla", "metric": "VQA", "diff": None},
    ]
    split, v2 = findings(rows)
    assert split.startswith("diff_split: below vanilla on 1 of 2 figures, above on 0, no significant difference on 1")
    assert "largest gap: VQA, -0.100 [-0.150, -0.050], p<0.0005" in split
    assert v2.startswith("diff_v2: below vanilla on 0 of 1 figures, above on 1") and "p=0.010" in v2
    assert format_p(0.0004, 2000) == "p<0.0005" and format_p(0.25, 2000) == "p=0.250"


def test_a_gap_made_of_replies_out_of_format_says_so():
    rows = [{"setting": "diff_dup_separate", "metric": "MMNeedle 2x2 exact", "diff": -0.94, "diff_low": -0.97,
             "diff_high": -0.92, "p_value": 0.0, "invalid": 1.0},
            {"setting": "diff_split", "metric": "MMNeedle 2x2 exact", "diff": -0.5, "diff_low": -0.6,
             "diff_high": -0.4, "p_value": 0.0, "invalid": 0.0}]
    dup, split = findings(rows)
    assert "where 1.00 of its replies were out of format (they named no cell" in dup
    assert "out of format" not in split  # its misses named wrong cells

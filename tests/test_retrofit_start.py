"""The retrofit's step 0 on the shipped tiny base, measured as benchmarks/retrofit_start.py measures it: the fair
starts are the pretrained model, diff_split (whose halves are not the pretrained heads) is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffpali.config import ConfigError
from diffpali.evals.retrofit import SETTINGS, compose, start_distances

CONF = Path(__file__).resolve().parents[1] / "conf"
EXACT = ("vanilla", "diff_dup shared, fair start", "diff_dup separate, fair start", "diff_v2 exact",
         "diff_v2 plain, fair start")
MOVED = ("diff_split (paper)", "diff_split, fair-start knobs", "diff_dup separate (paper)", "diff_v2 plain (paper)")
UNTIED = "diff_dup separate, warm-up, indep."


@pytest.fixture(scope="module")
def distances(tmp_path_factory):
    configs = {label: compose(CONF, "train", SETTINGS[label]) for label in (*EXACT, *MOVED, UNTIED)}
    cache = tmp_path_factory.mktemp("haystacks")
    data = compose(CONF, "evaluate", ["eval=mmneedle", "eval.samples=4", f"eval.cache_dir={cache}"])
    return start_distances(configs["vanilla"], configs, data, questions=4, batch_size=8)


def test_the_fair_starts_are_the_pretrained_model(distances):
    for label in EXACT:
        result = distances[label]
        assert len(result.kl) == 4 + 2 * 4 and set(result.sources) == {"easy_vqa", "mmneedle"}
        assert max(result.kl) < 1e-6, label
        assert min(result.agreement) == 1.0, label


def test_diff_split_and_the_paper_settings_start_elsewhere(distances):
    for label in MOVED:
        kl = distances[label].kl
        assert sum(kl) / len(kl) > 1e-2, label  # diff_split's fair-start knobs too: its halves are not the heads


def test_the_fair_start_needs_tied_lambda_pairs(distances):
    """Independent pairs leave exp(lq1 . lk1) - exp(lq2 . lk2) away from 0: lambda is not 0 at step 0."""
    assert max(distances[UNTIED].kl) > 1e-4


def test_a_setting_is_checked_as_on_the_command_line():
    with pytest.raises(ConfigError, match="attn.lambda_warmup_steps=100: needs attn.v2_lambda_init=plain"):
        compose(CONF, "train", ["attn=diff_v2", "attn.lambda_warmup_steps=100"])

"""The distractor curves are sized to show a trend: every point's 95% interval, as the report computes it, is at
most ±0.08 at the sizes the sweeps are configured with, and the report flags the points that are wider."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the sweeper `-m` uses
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from diffpali.config import TrainConfig, register_configs, to_typed
from diffpali.evals.distractors.sets import positives_per_point
from diffpali.report.curve_bands import (
    MAX_HALF_WIDTH,
    band_table,
    half_width,
    point_bands,
    scene_count,
    scenes_needed,
    wilson,
)
from diffpali.report.runs import Job

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


@pytest.fixture(scope="module")
def loader():
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def sweep_jobs(loader, *arguments: str) -> list[TrainConfig]:
    """The configs of the jobs `python train.py -m <arguments>` launches (the sweeper params, expanded by Hydra)."""
    hydra_cfg = compose(config_name="train", overrides=list(arguments), return_hydra_config=True).hydra
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.params or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *arguments])
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return [to_typed(compose(config_name="train", overrides=["output_dir=.", *job]), TrainConfig) for job in jobs]


def configured_scenes(configs: list[TrainConfig]) -> int:
    """N of every curve point when each job scores all of its positives: the report's own count."""
    return scene_count((c.evals["distractors"].haystack_seed,
                        positives_per_point(c.evals["distractors"].samples, c.evals["distractors"].negative_fraction))
                       for c in configs)


@pytest.mark.parametrize("experiment", ["study", "scratch"])
@pytest.mark.parametrize("scale", [None, "study_full"])
def test_the_configured_sweep_bounds_every_point_at_p_one_half(loader, experiment, scale):
    configs = sweep_jobs(loader, f"experiment={experiment}", *([f"scale={scale}"] if scale else []))
    seeds = {c.seed for c in configs}
    assert len(seeds) == {"study": 5, "scratch": 3}[experiment]
    # each seed its own scenes, the same for every setting of the seed (comparisons stay paired)
    scene_seeds = {c.seed: {x.evals["distractors"].haystack_seed for x in configs if x.seed == c.seed}
                   for c in configs}
    assert all(len(found) == 1 for found in scene_seeds.values())
    assert len({next(iter(found)) for found in scene_seeds.values()}) == len(seeds)
    scenes = configured_scenes(configs)
    assert scenes >= scenes_needed() and half_width(0.5, scenes) <= MAX_HALF_WIDTH
    # the study's earlier size (24 samples a point) would not hold it
    smaller = positives_per_point(24, configs[0].evals["distractors"].negative_fraction) * len(seeds)
    assert half_width(0.5, smaller) > MAX_HALF_WIDTH


def test_smoke_keeps_the_distractor_sets_tiny(loader):
    configs = sweep_jobs(loader, "experiment=study", "scale=cpu_smoke")
    assert {c.evals["distractors"].samples for c in configs} == {8}
    assert configs[0].eval_limit == 8


def test_wilson_interval_and_the_scenes_it_needs():
    assert wilson(0.0, 10)[1] == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2))  # x = 0: z^2 / (n + z^2)
    low, high = wilson(0.5, 100)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(2 * 1.959964 / (2 * 103.84 ** 0.5),
                                                                                 rel=1e-4)
    assert max(half_width(p / 20, 147) for p in range(21)) == half_width(0.5, 147)  # p = 0.5 is the worst case
    assert scenes_needed() == 147
    assert half_width(0.5, 147) <= MAX_HALF_WIDTH < half_width(0.5, 146)
    with pytest.raises(ValueError, match="n > 0"):
        wilson(0.5, 0)


def test_runs_that_share_scenes_count_them_once():
    assert scene_count([(1, 30), (2, 30), (3, 30)]) == 90
    assert scene_count([(0, 30), (0, 30), (0, 30)]) == 30  # the same scenes: N is one run's
    assert scene_count([(None, 30), (None, 28)]) == 28  # no scene seed recorded: taken as shared
    assert scene_count([(1, None)]) is None


def job(seed: int, scene_seed: int, exact: float, positives: int = 30) -> Job:
    """A completed study job whose distractor evaluation scored a 2x2 grid at k = 0 and 1 (hard)."""
    evals = {"distractors/setting": {"seed": scene_seed}}
    for point in ("N2/M1/none/k0", "N2/M1/hard/k1"):
        evals.update({f"distractors/{point}/exact": exact, f"distractors/{point}/positives": positives})
    return Job(f"job{seed}", "completed", {"seed": seed}, [f"seed={seed}"], {"seed": seed}, None,
               {"distractors": evals})


def test_the_report_prints_every_points_half_width_and_flags_the_wide_ones():
    settings = {
        "vanilla": [job(s, s, 0.5) for s in range(1, 6)],  # 150 scenes: ±0.079
        "diff_split": [job(s, s, 0.5) for s in range(1, 4)],  # 3 seeds: 90 scenes
        "diff_dup": [job(s, 0, 0.5) for s in range(1, 6)],  # one scene set for every seed: 30 scenes
    }
    bands = point_bands(settings["vanilla"])
    assert list(bands) == ["N2/M1/none/k0", "N2/M1/hard/k1"]
    assert bands["N2/M1/hard/k1"].scenes == 150 and not bands["N2/M1/hard/k1"].too_wide
    assert point_bands(settings["diff_split"])["N2/M1/hard/k1"].half == pytest.approx(half_width(0.5, 90))
    table, notes = band_table(settings)
    assert "| point (N, M, kind, k) | vanilla | diff_split | diff_dup |" in table
    row = next(line for line in table.splitlines() if line.startswith("| N2/M1/hard/k1 "))
    assert row == (f"| N2/M1/hard/k1 | 0.500 ± {half_width(0.5, 150):.3f} (N=150) "
                   f"| 0.500 ± {half_width(0.5, 90):.3f} (N=90) ⚠ | 0.500 ± {half_width(0.5, 30):.3f} (N=30) ⚠ |")
    assert notes[0].startswith("vanilla: 0 of 2 points wider than ±0.08; widest ±0.079")
    assert notes[1].startswith("diff_split: 2 of 2 points wider than ±0.08 (N2/M1/none/k0, N2/M1/hard/k1)")

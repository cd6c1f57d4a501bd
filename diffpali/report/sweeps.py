"""The sweeps the report tabulates setting by setting over seeds: what names a job's setting (its
``+experiment/<sweep>=<setting>`` override) and what the sweep's files are called.

- ``study``: LoRA retrofits of the embedded base (``experiment=study``): ``results.md``, ``study.csv``;
- ``scratch``: tiny bases pretrained from scratch with each attention, then the same fine-tune and
  evaluations (``experiment=scratch``): ``scratch.md``, ``scratch.csv``, ``scratch_*.png``.

In both the baseline of every paired comparison is the setting ``vanilla`` of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .runs import Job

BASELINE = "vanilla"


@dataclass(frozen=True)
class Sweep:
    """One kind of sweep: how its jobs are recognised and where its report goes."""

    name: str  #: study | scratch
    override: str  #: the config group whose option is a job's setting (``experiment/study``)
    markdown: str  #: the section's tables (its stem is the section's name, printed by the CLI)
    csv: str  #: every figure with its interval and n
    figure_prefix: str  #: before every figure's file name
    title: str  #: the markdown's first line
    runs: str  #: what each run is, for the opening paragraph
    command: str  #: what runs the sweep


STUDY = Sweep("study", "experiment/study", "results.md", "study.csv", "",
              "# The study: differential attention against distractors",
              "each a LoRA fine-tune of the embedded base on easy-vqa, then every evaluation of the trained model",
              "python train.py -m experiment=study")
SCRATCH = Sweep("scratch", "experiment/scratch", "scratch.md", "scratch.csv", "scratch_",
                "# From scratch: tiny bases pretrained with each attention, against distractors",
                "each a tiny base pretrained from the random initialisation with its arm's attention (the base's "
                "seed is the run's), a LoRA fine-tune on easy-vqa, then every evaluation of the trained model",
                "python train.py -m experiment=scratch")
SWEEPS = (STUDY, SCRATCH)


def setting_of(job: Job, sweep: Sweep) -> Optional[str]:
    """The job's setting in ``sweep``: the value of its ``+<sweep.override>=<setting>`` override, else None."""
    for item in job.overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == sweep.override:
            return value
    return None


def any_setting(job: Job) -> Optional[str]:
    """The job's setting in whichever sweep it belongs to (None for a job of none)."""
    return next((s for s in (setting_of(job, sweep) for sweep in SWEEPS) if s is not None), None)


def settings_of(jobs: list[Job], sweep: Sweep) -> dict[str, list[Job]]:
    """The completed jobs of ``sweep`` (with evaluations) by setting, vanilla first."""
    found: dict[str, list[Job]] = {}
    for job in jobs:
        setting = setting_of(job, sweep)
        if setting is not None and job.status == "completed" and job.evals:
            found.setdefault(setting, []).append(job)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])))


@dataclass(frozen=True)
class Arm:
    """One arm of ``experiment=study``: its settings are named ``<prefix><setting>``, and each is compared with
    the arm's own ``<prefix>vanilla``."""

    name: str  #: paper | fair | scratch
    prefix: str  #: of its settings' names (the paper arm's have none)
    title: str  #: what the arm is, for its sections' titles


ARMS = (
    Arm("paper", "", "retrofit as the paper does it"),
    Arm("fair", "fair_", "fair retrofit"),
    Arm("scratch", "scratch_", "from scratch"),
)


def arm_of(setting: str) -> Arm:
    """The arm a study setting belongs to: the one whose prefix it has, else the paper's."""
    return next((arm for arm in ARMS if arm.prefix and setting.startswith(arm.prefix)), ARMS[0])


def by_arm(settings: dict[str, list[Job]]) -> dict[Arm, dict[str, list[Job]]]:
    """The settings of each arm that has any, their names without the arm's prefix (so each arm's ``vanilla``
    is its baseline), vanilla first, arms in :data:`ARMS` order."""
    arms: dict[Arm, dict[str, list[Job]]] = {}
    for name, jobs in settings.items():
        arm = arm_of(name)
        arms.setdefault(arm, {})[name.removeprefix(arm.prefix)] = jobs
    return {arm: dict(sorted(arms[arm].items(), key=lambda kv: (kv[0] != BASELINE, kv[0])))
            for arm in ARMS if arm in arms}

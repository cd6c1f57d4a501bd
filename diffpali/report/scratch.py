"""The from-scratch arm (``experiment=scratch``): tiny bases pretrained with each attention from the random
initialisation, each then fine-tuned and scored as the study's runs are. Its section is the study's
(:func:`.study.write_sweep`) with its own files: ``scratch.md``, ``scratch.csv``, ``scratch_*.png``; with
lambda at the end of pretraining from every run's ``base.json``.

    python -m diffpali.report multirun/scratch/default
"""

from __future__ import annotations

from .section import Section
from .study import has_results_in, write_sweep
from .sweeps import SCRATCH

SECTION = Section("scratch", has_results_in(SCRATCH), lambda report: write_sweep(report, SCRATCH))

"""The paper's tables and the evaluations' summaries from the runs of a sweep: no W&B account needed.

    python -m diffpali.report multirun/table1/2025-01-31_12-00-00             # prints; writes table1.md/.csv there
    python -m diffpali.report multirun/table1/2025-01-31_12-00-00 --out reports/
    python -m diffpali.report --wandb ENTITY/PROJECT [--group GROUP] --out reports/   # the same from W&B
    python -m diffpali.report multirun/study/default --readme README.md      # and the README's findings
    python -m diffpali.report multirun/scratch/default                      # the from-scratch arm: scratch.md
    python -m diffpali.report.figures curves|overlays|lambda <run dirs> --out x.png  # attention figures

Every job directory under the sweep directory (found at any depth) is read through the run-directory
contract (``docs/design.md``, "The run directory"); nothing is dropped: a job that failed, or never
finished, is listed as such beside Table 1. Each row reports mean ± sample standard deviation over
seeds, with n, in percent.

- :mod:`.runs` reads runs (and :mod:`.wandb_runs` from W&B), :mod:`.stats` holds the statistics,
  :mod:`.format` the markdown and CSV writing;
- one file per section: :mod:`.table1` (VQA score), :mod:`.table2` (MMNeedle), :mod:`.pope`,
  :mod:`.attention`, :mod:`.study` and :mod:`.scratch` (one code for both sweeps, :mod:`.sweeps`; tables in
  :mod:`.sweep_tables`, :mod:`.slopes`, :mod:`.base_lambda`, figures in :mod:`.study_figures`); :mod:`.write` lists them
  (:data:`~diffpali.report.write.SECTIONS`) and writes them; :mod:`.readme` writes the study's findings
  into the README (``--readme``);
- :mod:`.figures`: attention figures of several finished runs.
"""

"""``evaluate.py``'s tasks: each scores a loaded model (base or adapter) and returns an outcome.

- :mod:`.base`: the outcome and table types, batching settings, sample cache, replies and figures
  (imports no task);
- :mod:`.vqa`: the VQA score (also the scoring loop of ``train.py``'s test);
- :mod:`.mmneedle`: MMNeedle haystacks, reply parsing, scoring, heatmap;
- :mod:`.pope`: POPE probes, yes/no parsing, the five metrics;
- :mod:`.attention`: where the answer tokens look on MMNeedle's haystacks (recorder, shares, plots);
- :mod:`.retrofit`: how far each attention setting starts from the pretrained model (no task: a benchmark's);
- :mod:`.tasks`: the table ``eval.task`` -> task function that ``evaluate.py``'s runner reads.

A new evaluation is a module (or sub-package) with a task function, one entry in :data:`.tasks.TASKS`,
its name in ``diffpali.config.EVAL_TASKS`` and a ``conf/eval/*.yaml``; its report section, if any, is
a file in ``diffpali/report/`` (see ``docs/design.md``).
"""

"""The task table: ``eval.task`` -> the function that runs it (``evaluate.py``'s runner reads it)."""

from __future__ import annotations

from ..config import EVAL_TASKS
from .attention.task import run_attention
from .base import Task
from .distractors.task import run_distractors
from .mmneedle.task import run_mmneedle
from .pope.task import run_pope
from .vqa import run_vqa

TASKS: dict[str, Task] = {"vqa": run_vqa, "mmneedle": run_mmneedle, "pope": run_pope, "attention": run_attention,
                          "distractors": run_distractors}

if set(TASKS) != set(EVAL_TASKS):  # the config's choices and this table name the same tasks
    raise RuntimeError(f"diffpali.evals.tasks.TASKS {sorted(TASKS)} and diffpali.config.EVAL_TASKS "
                       f"{sorted(EVAL_TASKS)} differ: add the task to both")


def task_runner(name: str) -> Task:
    """The function that runs ``eval.task=name``."""
    if name not in TASKS:
        raise ValueError(f"eval.task={name!r}: unknown task; one of {', '.join(TASKS)}")
    return TASKS[name]

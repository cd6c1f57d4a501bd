"""Reading runs from a W&B project instead of a sweep directory (``python -m diffpali.report --wandb``)."""

from __future__ import annotations

from typing import Optional

from .runs import Job

#: W&B run states -> job status (any other state: incomplete).
STATES = {"finished": "completed", "failed": "failed", "crashed": "failed"}


def load_wandb_jobs(project: str, group: Optional[str] = None) -> list[Job]:
    """The same records from a W&B project through the public API (needs network and a login).

    A run's name is its job's overrides, its config the validated config and its summary the metrics.
    """
    import wandb  # deferred: slow to import, and needed only with --wandb

    try:
        api = wandb.Api()
        runs = list(api.runs(project, filters={"group": group} if group else None))
    except Exception as err:
        raise SystemExit(f"--wandb {project}: could not read the project through the W&B API "
                         f"(online and logged in? `wandb login`): {type(err).__name__}: {err}") from err
    jobs = []
    for run in runs:
        state = getattr(run, "state", "unknown")
        status = STATES.get(state, "incomplete")
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        name = run.name or ""
        jobs.append(Job(
            path="/".join(run.path) if isinstance(run.path, (list, tuple)) else str(run.path),
            status=status,
            config=dict(run.config),
            overrides=[] if name in ("", "default") else name.split(","),
            metrics=summary,
            error=None if status == "completed" else f"W&B run state: {state}",
        ))
    return jobs

"""What ``train.py`` and ``evaluate.py`` share: validate the composed config, name the run, run it."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from omegaconf import DictConfig

from .config import ConfigError, to_typed

log = logging.getLogger("diffpali")


def run_name() -> str:
    """The job's overrides (``attn=diff_dup,lora.rank=32``), or ``default`` when there are none."""
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().job.override_dirname
    return overrides or "default"


def run_job(cfg: DictConfig, schema: type, job: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
    """Check every value against ``schema`` (nothing heavy is loaded before), then run ``job``.

    A bad value exits with status 2 and one line naming the key, the value and what is allowed.
    """
    _route_lightning_logs_through_hydra()
    try:
        typed = to_typed(cfg, schema)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    return job(typed, run_name())


def _route_lightning_logs_through_hydra() -> None:
    """Lightning adds its own console handler; Hydra's root handlers already print and write the
    job's log file, so each line would appear twice."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

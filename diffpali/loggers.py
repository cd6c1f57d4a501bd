"""Experiment loggers: W&B (online with a login, offline without), CSV, or none."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from .config import LoggerConfig

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when an API key is available (environment or ~/.netrc), without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: LoggerConfig) -> str:
    """The environment's WANDB_MODE wins (tests set it to disabled); then the config; auto decides by login."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if wandb_logged_in() else "offline"


def variant_tags(config: dict[str, Any]) -> list[str]:
    """W&B tags naming what a run varies: ``attn=diff_dup``, ``ffn=swiglu``, ``lora_r=32``, ``table1_row=2``."""
    tags = []
    attn = config.get("attn") or {}
    if attn.get("variant"):
        from .attention import variant_for  # torch: loaded by now in every job that logs

        tags += variant_for(attn).tags()
    if (config.get("ffn") or {}).get("variant"):
        tags.append(f"ffn={config['ffn']['variant']}")
    if (config.get("lora") or {}).get("rank") is not None:
        tags.append(f"lora_r={config['lora']['rank']}")
    if config.get("table_row") is not None:
        tags.append(f"table1_row={config['table_row']}")
    return tags


def make_logger(cfg: LoggerConfig, save_dir: str | Path, name: str, group: str, config: dict[str, Any]) -> Logger | None:
    """Build the configured logger and record the fully resolved config in it.

    A W&B run is named by the job's overrides, grouped by experiment (a multirun job: experiment and
    sweep, set by :func:`diffpali.cli.run_job`), and tagged with ``cfg.tags`` plus :func:`variant_tags`.
    """
    if cfg.kind == "none":
        return None
    if cfg.kind == "csv":
        logger: Logger = CSVLogger(save_dir=str(save_dir), name="csv", version="")
    else:
        mode = wandb_mode(cfg)
        if mode == "offline":
            log.info("W&B: no login found, logging offline; sync later with `wandb sync %s/wandb/offline-run-*`", save_dir)
        logger = WandbLogger(
            project=cfg.project,
            entity=cfg.entity,
            name=name,
            group=group,
            tags=list(dict.fromkeys([*cfg.tags, *variant_tags(config)])),
            save_dir=str(save_dir),
            mode=mode,
        )
    logger.log_hyperparams(config)
    return logger


def finish(logger: Logger | None) -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if isinstance(logger, WandbLogger):
        import wandb

        wandb.finish()


def finish_failed() -> None:
    """Mark the open W&B run (if any) as failed and close it, so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")  # never import W&B just to find that no run is open
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)

"""Experiment loggers: W&B (online with a login, offline without), CSV, or none; W&B tables and pictures."""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from PIL import Image

from .config import LoggerConfig, describe
from .console import is_rank_zero
from .jsonio import write_json_atomic
from .paths import WANDB_RUN_FILE

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
        tags += describe(attn).tags
    if (config.get("ffn") or {}).get("variant"):
        tags.append(f"ffn={config['ffn']['variant']}")
    if (config.get("lora") or {}).get("rank") is not None:
        tags.append(f"lora_r={config['lora']['rank']}")
    if config.get("table_row") is not None:
        tags.append(f"table1_row={config['table_row']}")
    return tags


def saved_run_id(run_dir: str | Path) -> str | None:
    """The W&B run id recorded in ``run_dir`` by an earlier start of the same run, if any."""
    path = Path(run_dir) / WANDB_RUN_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["id"])
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; the resumed run opens a new W&B run", path)
        return None


def new_run_id() -> str:
    """A W&B run id (8 lowercase letters and digits), chosen here so it can be recorded before the run starts."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _quiet_wandb() -> None:
    """W&B's own info lines off (diffpali logs one line per run instead); its warnings and errors stay on."""
    import wandb  # deferred: slow to import, and needed only with logger=wandb

    wandb.setup(wandb.Settings(show_info=False))


def make_logger(cfg: LoggerConfig, save_dir: str | Path, name: str, group: str, config: dict[str, Any],
                resume_id: str | None = None) -> Logger | None:
    """Build the configured logger and record the fully resolved config in it.

    A W&B run is named by the job's overrides, grouped by experiment (a multirun job: experiment and
    sweep, set by :func:`diffpali.jobs.run_job`), and tagged with ``cfg.tags`` plus :func:`variant_tags`.
    Its id is written to ``<save_dir>/wandb_run.json``; ``resume_id`` continues that run (a resumed
    training run) instead of opening a new one.
    """
    if cfg.kind == "none":
        return None
    if cfg.kind == "csv":
        logger: Logger = CSVLogger(save_dir=str(save_dir), name="csv", version="")
    else:
        mode = wandb_mode(cfg)
        _quiet_wandb()
        run_id = resume_id or new_run_id()
        logger = WandbLogger(
            project=cfg.project,
            entity=cfg.entity,
            name=name,
            group=group,
            tags=list(dict.fromkeys([*cfg.tags, *variant_tags(config)])),
            save_dir=str(save_dir),
            mode=mode,
            id=run_id,
        )
        # Lightning always passes anonymous=None, which W&B >= 0.19 answers with a deprecation line.
        logger._wandb_init.pop("anonymous", None)
        _record_run(logger, Path(save_dir), run_id, mode, resumed=resume_id is not None)
    logger.log_hyperparams(config)
    return logger


def _record_run(logger: WandbLogger, save_dir: Path, run_id: str, mode: str, resumed: bool) -> None:
    """Write the run's id to the run directory and say in one line where the run is (rank zero only)."""
    if not is_rank_zero() or mode == "disabled":
        return
    run = logger.experiment  # starts the W&B run
    write_json_atomic(save_dir / WANDB_RUN_FILE, {"id": run_id, "project": run.project, "mode": mode})
    what = f"continuing run {run_id}" if resumed else f"run {run_id}"
    if mode == "offline":
        log.info("W&B: offline, %s in %s; sync later with `wandb sync %s`", what, run.settings.sync_dir,
                 run.settings.sync_dir)
    else:
        log.info("W&B: %s at %s", what, getattr(run, "url", None) or "(no URL)")


def finish(logger: Logger | None) -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if isinstance(logger, WandbLogger):
        import wandb  # deferred: slow to import; loaded already when a W&B logger exists

        wandb.finish()


def log_table(logger: Any, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A W&B table (PIL images become ``wandb.Image``); other loggers have no tables and skip it."""
    if not isinstance(logger, WandbLogger) or not rows:
        return
    import wandb  # deferred: slow to import; loaded already when a W&B logger exists

    data = [[wandb.Image(v) if isinstance(v, Image.Image) else v for v in row] for row in rows]
    payload: dict[str, Any] = {key: wandb.Table(columns=columns, data=data)}
    # An offline run stores a table's images as the word "Image" (wandb/wandb#4611); the same images
    # as a captioned list survive offline and a later `wandb sync`.
    gallery = []
    for row in rows:
        caption = ", ".join(f"{c}={v}" for c, v in zip(columns, row) if not isinstance(v, Image.Image))
        gallery += [wandb.Image(v, caption=caption) for v in row if isinstance(v, Image.Image)]
    if gallery:
        payload[f"{key}_images"] = gallery
    logger.experiment.log(payload)


def log_pictures(logger: Any, pictures: dict[str, Path]) -> None:
    """PNGs already written in the run directory, logged to W&B under their keys."""
    if isinstance(logger, WandbLogger) and pictures:
        import wandb  # deferred: slow to import; loaded already when a W&B logger exists

        logger.experiment.log({key: wandb.Image(str(path)) for key, path in pictures.items()})

"""What ``python train.py`` and ``python evaluate.py`` print, and what they leave to the log file.

- **Each line once.** Hydra's root handlers print the console and write ``<run dir>/<job>.log``;
  Lightning's own console handler is removed, so its lines are not printed a second time.
- **Console: our lines and every warning.** The console shows diffpali's INFO lines (phase
  summaries, progress; rank 0's only under DDP) and WARNING or worse from everyone; other
  libraries' INFO lines ("GPU available: False", "Seed set to 0") go to the log file only. Python
  warnings are routed through logging, so they reach both, once (conf/hydra/job_logging/diffpali.yaml).
- **Noise filtered at its source**, each filter naming one message: Lightning's advertisements
  (the litlogger and litmodels tips), and deprecation warnings raised inside third-party code that
  a user cannot act on. Anything else, every warning that could matter to a user included, is kept.
- **Our progress bar** (:class:`diffpali.progress.ConsoleProgress`): one redrawn line on a
  terminal, a log line every tenth of the run otherwise; and one line per phase (validation,
  training, test).
"""

from __future__ import annotations

import logging
import os
import warnings

#: (message regex, category, why it is safe to hide): deprecations inside third-party code.
KNOWN_NOISE: tuple[tuple[str, type[Warning], str], ...] = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning,
     "peft probes this transformers attribute when it wraps a model: nothing a user can change"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning,
     "torch deprecation hit inside lightning.pytorch.utilities._pytree"),
    (r"You're resuming from a checkpoint that ended before the epoch ended", Warning,
     "diffpali's datamodule resumes its sampler mid-epoch, which Lightning cannot see"),
)
#: Lightning INFO lines that advertise products rather than report on the run.
ADVERTISEMENTS = ("💡 Tip:",)
#: Loggers through which Lightning's rank_zero_info() and rank_zero_warn() speak.
LIGHTNING_RANK_ZERO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


#: ``log.error(..., extra={FILE_ONLY: True})``: for the log file only.
FILE_ONLY = "diffpali_file_only"


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTISEMENTS)


class ConsoleFilter(logging.Filter):
    """For the console handler: diffpali's INFO lines, and WARNING or worse from any logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FILE_ONLY, False):  # said on the console another way (a one-line error)
            return False
        if record.levelno >= logging.WARNING:
            return True
        if not is_rank_zero():  # under DDP every rank runs the same job: its INFO lines once, from rank 0
            return False
        return record.name == "diffpali" or record.name.startswith("diffpali.")


def is_rank_zero() -> bool:
    """Rank from the environment, as Lightning reads it (DDP children get LOCAL_RANK; SLURM tasks SLURM_PROCID)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            return value.strip() == "0"
    return True


class ConsoleFormatter(logging.Formatter):
    """``[12:00:01] message``; warnings and errors also say their level and where they come from."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, self.datefmt)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            source = "" if record.name.startswith("diffpali") else f" ({record.name})"
            return f"[{stamp}] {record.levelname}{source}: {message.rstrip()}"
        return f"[{stamp}] {message}"


def filter_known_noise() -> None:
    """Warnings filters for :data:`KNOWN_NOISE`; cheap, so it runs before anything heavy is imported."""
    for pattern, category, _why in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)


def configure_console() -> None:
    """Apply the rules of the module doc; call once Hydra has set up logging, before the job's work."""
    filter_known_noise()
    logging.captureWarnings(True)  # warnings reach the console and the log file through logging, once
    # Deferred (heavy, and console rules load before the config is checked); importing it adds
    # the console handler removed here.
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for name in LIGHTNING_RANK_ZERO:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
            logger.addFilter(_DropAdvertisements())
    from transformers.utils import logging as hf_logging  # deferred: heavy, as lightning above

    hf_logging.disable_progress_bar()  # "Loading weights" bars; our own lines say what is loaded

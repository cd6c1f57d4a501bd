"""Where diffpali keeps things: the cache root, the shipped tiny base, and the files of a run directory.

One home for each name and each lookup. Nothing here imports torch, peft or transformers, so finding
a folder stays cheap for the config checks, the job records and the report. The run-directory
contract these names make up is described in ``docs/design.md`` ("The run directory").
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import UnreadableFileError

#: The tiny base shipped inside the package (built by ``python -m diffpali.zoo.build``).
SHIPPED_TINY_DIR = Path(__file__).parent / "zoo" / "tiny_paligemma"
#: Environment variable that moves the cache root (built tiny bases, haystacks, probes).
CACHE_ENV = "DIFFPALI_CACHE"

# Files of a run directory (train.py writes all of them; evaluate.py the job records and metrics).
JOB_FILE = "job.json"  #: status, overrides and the whole validated config (diffpali.jobs)
FAILED_FILE = "failed.json"  #: error type, message and traceback tail of a job that raised
METRICS_FILE = "metrics.json"  #: the scores, each named with its convention
ITEMS_FILE = "items.jsonl"  #: every scored item's score, per metric (paired comparisons resample them)
EVALS_DIR = "evals"  #: train.py's evaluations after the fit, one folder each (``evals/<name>/metrics.json``)
ADAPTER_DIR = "adapter"  #: the saved adapter (train.py)
CHECKPOINT_DIR = "checkpoints"  #: Lightning checkpoints (train.py)
LAST_CHECKPOINT = "last.ckpt"  #: the checkpoint a resume starts from, inside CHECKPOINT_DIR
LAMBDA_HISTORY_FILE = "lambda_history.jsonl"  #: every layer's lambda over training (differential runs)
WANDB_RUN_FILE = "wandb_run.json"  #: the W&B run of the directory, so a resume continues it

# Files of an adapter directory.
ADAPTER_CONFIG_FILE = "adapter_config.json"  #: peft's
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  #: peft's, the trained tensors
VARIANTS_FILE = "diffpali.json"  #: the settings that rebuild the variants (attn, ffn, lora, model)
#: Frozen tensors a variant created (a second branch: a noisy copy of Q or K). peft saves only what trains,
#: and rebuilding them from the RNG would tie a saved adapter to the run's seed.
VARIANT_WEIGHTS_FILE = "variant_weights.safetensors"

# Files of a base directory pretrained with a differential attention (diffpali.zoo.variant_base).
BASE_ATTENTION_FILE = "base_attention.json"  #: the settings of the attention the base was pretrained with
VARIANT_MODEL_FILE = "diffpali_model.safetensors"  #: every tensor of such a base, by the converted model's names
BASE_RECORD_FILE = "base.json"  #: in a run directory: the tiny base it started from (key, attention, lambda)


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir`` when given, else ``$DIFFPALI_CACHE``, else ``~/.cache/diffpali``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "diffpali"))


def run_dirs_of(ckpt: str) -> tuple[Path, ...]:
    """Where the files of the train.py run that ``ckpt`` names can be: ``ckpt`` itself (a run directory)
    and its parent (``ckpt`` is the run's ``adapter/``); none for ``base``."""
    if not ckpt or ckpt == "base":
        return ()
    path = Path(ckpt).expanduser()
    return (path, path.parent)


def find_in_run(ckpt: str, name: str) -> Path | None:
    """The file ``name`` of the run that ``ckpt`` names (see :func:`run_dirs_of`), or None."""
    return next((run / name for run in run_dirs_of(ckpt) if (run / name).is_file()), None)


def adapter_dir_of(ckpt: str) -> Path | None:
    """The adapter directory ``ckpt`` names: itself, or its ``adapter/``; None for ``base``.

    Raises :class:`~diffpali.files.UnreadableFileError` naming what is missing when it is neither.
    """
    if ckpt == "base":
        return None
    path = Path(ckpt).expanduser()
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / ADAPTER_CONFIG_FILE).is_file():
            return candidate
    raise UnreadableFileError(path / ADAPTER_DIR / ADAPTER_CONFIG_FILE, "the file is missing (and so is "
                              f"{path / ADAPTER_CONFIG_FILE})", "Give ckpt= a train.py run directory, an adapter "
                              "directory or base")

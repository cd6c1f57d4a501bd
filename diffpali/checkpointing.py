"""Checkpoints a killed run can resume from exactly, and refuses to load into the wrong model.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same directory,
  flushes it to disk and renames it over the old one: a kill during a save leaves the previous
  checkpoint whole. It loads with ``torch.load(weights_only=True)``: tensors and plain containers,
  no pickled code.
- :class:`RNGState` keeps the global random generators (every rank's) in every checkpoint and puts them
  back just before the first batch after a resume (LoRA dropout draws from them).
- :func:`run_signature` names what fixes the model's shape (base, variants, LoRA); every checkpoint
  carries it, and :func:`check_checkpoint` refuses one written for another model, naming each field
  that differs, before the model is even loaded.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from .files import UnreadableFileError, describe_error
from .paths import CHECKPOINT_DIR, LAST_CHECKPOINT
from .zoo.tiny import spec_key

PARTIAL_SUFFIX = ".partial"
SIGNATURE_KEY = "diffpali_signature"


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for a model other than the one configured; names the fields that differ."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: all-or-nothing writes, ``weights_only`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)  # atomic on POSIX: readers see the old file or the new one
        finally:
            partial.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut could otherwise forget it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete temporary files left by a save that was killed; returns what was removed."""
    removed = sorted(Path(directory).glob(f".*{PARTIAL_SUFFIX}")) if Path(directory).is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def resolve_resume(ckpt_path: Optional[str], output_dir: Path) -> Optional[Path]:
    """The checkpoint file to resume from: a path, ``last`` (must exist), ``auto`` (if it exists), or None."""
    if ckpt_path is None:
        return None
    last = Path(output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
    if ckpt_path == "auto":
        return last if last.is_file() else None
    path = last if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return path


#: diffpali writes checkpoints atomically (AtomicCheckpointIO), so a damaged one was damaged afterwards.
CHECKPOINT_REMEDY = ("Restore it from a copy, or start the run afresh without resuming (ckpt_path=null, "
                     "or delete the file with ckpt_path=auto); the steps it held are then trained again")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only``); an unreadable file is named with what to do, not a bare error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = found.group(1) if found else str(err).splitlines()[0]
        raise UnreadableFileError(path, f"it holds a pickled object ({what}), and diffpali loads checkpoints with "
                                  "weights_only=True (tensors and plain data only)",
                                  "Resume from a checkpoint written by diffpali's train.py") from err
    except Exception as err:  # truncated or not a checkpoint at all
        raise UnreadableFileError(path, f"truncated or corrupt ({describe_error(err)})", CHECKPOINT_REMEDY) from err


# ------------------------------------------------------------------------------------ signature
def run_signature(model: Any, attn: Any, ffn: Any, lora: Any) -> dict[str, Any]:
    """Flat ``{"attn.variant": ..., "lora.rank": ...}`` of every setting that shapes the trained model."""
    signature: dict[str, Any] = {"model.source": model.source}
    if model.source == "zoo":
        signature["model.tiny"] = spec_key(model.tiny)  # hash of the whole tiny spec
    else:
        signature["model.name_or_path"] = model.name_or_path
        signature["model.revision"] = model.revision
    for group, value in (("attn", attn), ("ffn", ffn), ("lora", lora)):
        signature.update({f"{group}.{k}": v for k, v in asdict(value).items()})
    del signature["lora.dropout"]  # a training setting: the saved tensors fit a model with any dropout
    return signature


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint <a>, this run <b>`` for every key whose values differ.

    An ``attn.*`` knob this run's variant lacks is not compared: checkpoints from before per-variant
    settings recorded every attn field, read or not (``attn.variant`` still tells variants apart).
    """
    keys = sorted(k for k in set(saved) | set(current) if k in current or not k.startswith("attn."))
    return [f"{k}: checkpoint {saved.get(k, '<unset>')!r}, this run {current.get(k, '<unset>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


def check_signature(checkpoint: dict[str, Any], current: dict[str, Any], path: Any) -> None:
    """Raise :class:`CheckpointMismatchError` when ``checkpoint`` was written for another model."""
    saved = checkpoint.get(SIGNATURE_KEY)
    if saved is None:
        raise CheckpointMismatchError(f"checkpoint {path} records no model settings ({SIGNATURE_KEY}); "
                                      "it was not written by diffpali's train.py")
    differences = signature_differences(saved, current)
    if differences:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written for another model; differing settings: " + "; ".join(differences)
        )


def check_checkpoint(path: Path, current: dict[str, Any]) -> dict[str, Any]:
    """Read ``path`` safely and check its signature; cheap (trainable tensors only), so it runs before the
    model loads."""
    checkpoint = read_checkpoint(path)
    check_signature(checkpoint, current, path)
    return checkpoint


# ------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict[str, Any]:
    """The global generators' states in ``weights_only``-loadable form (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                         saved["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _world_size() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


class RNGState(Callback):
    """Saves the RNG states with each checkpoint; restores them before the first batch after a resume.

    Restoring at ``on_train_batch_start`` rather than at load time skips whatever Lightning draws
    while it sets up, so the next batch sees the generators exactly as the uninterrupted run did.
    """

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        """One process: its generators. Several (DDP, FSDP): every rank's, gathered, since each rank draws its
        own LoRA dropout masks and rank 0 alone writes the checkpoint. Lightning builds the checkpoint's
        contents in every rank, so every rank takes part in the gather."""
        state = capture_rng()
        world = _world_size()
        if world == 1:
            return state
        states: list[Any] = [None] * world
        torch.distributed.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ranks" in state_dict:  # the checkpoint's world size equals this run's (VQADataModule checks it)
            state_dict = state_dict["ranks"][torch.distributed.get_rank() if _world_size() > 1 else 0]
        self._pending = state_dict

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None

"""Running a job and writing its records: what ``train.py`` and ``evaluate.py`` share. Validate the
composed config, name the run, run it, and leave a record of the job in its directory.

Files :func:`run_job` writes into the job's directory (``output_dir``), on rank 0 only:

- ``job.json``: written before the job starts and rewritten when it ends: ``status`` (running |
  completed | failed), ``run_name``, ``overrides`` (the job's command-line overrides), ``job_num`` and
  ``sweep_dir`` in a multirun, times, and ``config`` (the whole validated config, e.g.
  ``config.table_row``). ``python -m diffpali.report`` reads it next to ``metrics.json``.
- ``failed.json``, only when the job raised: ``error_type``, ``message``, ``traceback`` (its tail).
  A job that is killed (SLURM time limit, OOM killer) cannot write it; its ``job.json`` then stays
  ``running`` and the report lists it as incomplete.

Failures. A job that raises is recorded (``failed.json``, its W&B run finished with exit code 1) and
the exception is re-raised to Hydra. Hydra's basic sweeper catches it, runs the remaining jobs of the
batch (all jobs, unless ``hydra.sweeper.max_batch_size`` is set), then re-raises the first failure:
every job gets its chance, and the sweep still exits with a non-zero status. A bad config value
exits a single run with status 2 and one line naming the key; in a multirun it fails that job only.
A bad data record, a checkpoint written for another model, a damaged file (adapter, checkpoint,
base model) or a non-finite loss ends a single run with status 1 and one line naming the record,
the differing fields, the file or the step, and what to do (``docs/design.md``, "Reliability
guarantees"); ``failed.json`` holds the traceback, and ``HYDRA_FULL_ERROR=1`` prints it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, settings_from_record, to_typed
from .console import FILE_ONLY, configure_console, filter_known_noise, is_rank_zero
from .files import UnreadableFileError
from .jsonio import write_json_atomic
from .paths import FAILED_FILE, JOB_FILE, METRICS_FILE
from .plan.report import check_memory
from .plan.report import render as render_plan

log = logging.getLogger("diffpali")

SCALING_DOC = "docs/scaling.md"


def path_safe(text: str, limit: int = 160) -> str:
    """One directory name from a job's overrides: '/' becomes '-' (``+experiment/table1=row2`` or a
    path value would otherwise nest directories) and a long name is cut, with a hash of the whole
    kept, under the file-system limit of 255 bytes. The full overrides are in the job's job.json."""
    name = str(text).replace("/", "-")
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[:limit].decode(errors="ignore") + f"...{digest}"


# `${path_safe:...}` in conf/train.yaml's hydra.sweep.subdir. Registered at import, which train.py
# and evaluate.py do before Hydra resolves anything.
OmegaConf.register_new_resolver("path_safe", path_safe, replace=True)


def run_name() -> str:
    """The job's overrides (``attn=diff_dup,lora.rank=32``), or ``default`` when there are none."""
    overrides = HydraConfig.get().job.override_dirname
    return overrides or "default"


def run_job(cfg: DictConfig, schema: type, job: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
    """Check every value against ``schema`` (nothing heavy is loaded before), then run ``job``.

    A bad value exits a single run with status 2 and one line naming the key, the value and what is
    allowed. Any failure is written to ``failed.json`` in the job's directory (see the module doc).
    """
    filter_known_noise()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    record = _JobRecord(hydra_cfg, schema)
    try:
        typed = to_typed(cfg, schema)
        check_launch(typed, hydra_cfg)
        check_memory(typed)  # a train run whose memory plan exceeds the device stops here, before anything loads
        if getattr(typed, "plan", False):  # plan=true: print it; no console set-up, no run record, nothing loads
            print(render_plan(typed))
            return {}
    except ConfigError as err:
        if not multirun:
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
        record.failed(Path(hydra_cfg.runtime.output_dir), err, _plain(cfg))
        raise
    arm_seeds = getattr(typed, "arm_seeds", None)
    if arm_seeds is not None and typed.seed is not None and typed.seed > arm_seeds:
        print(f"seed {typed.seed}: beyond this arm's {arm_seeds} seeds (arm_seeds): nothing to run, no record")
        return {}
    if multirun and hasattr(typed, "logger") and typed.logger.group is None:
        typed.logger.group = sweep_group(getattr(typed, "experiment_name", "sweep"), hydra_cfg.sweep.dir)
    configure_console()  # once the config is valid: it imports Lightning, which a config error need not wait for
    out = Path(getattr(typed, "output_dir", None) or hydra_cfg.runtime.output_dir)
    done = finished_run(out, typed) if getattr(typed, "skip_if_done", False) else None
    if done is not None:
        log.info("%s: already completed with this very config; its metrics are kept (skip_if_done)", out)
        return done
    record.started(out, typed)
    try:
        metrics = job(typed, run_name())
    except BaseException as err:  # KeyboardInterrupt too: the job did not finish, say so
        one_line = not multirun and isinstance(err, reported_errors()) and os.environ.get("HYDRA_FULL_ERROR") != "1"
        record.failed(out, err, typed, console=not one_line)
        finish_failed_wandb_run()
        if one_line:
            # The message already names the record, file, checkpoint field or step and what to do: a
            # traceback adds nothing (HYDRA_FULL_ERROR=1 still shows it; failed.json keeps its tail).
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
            sys.exit(1)
        raise
    record.completed(out, typed)
    return metrics


def finished_run(out: Path, typed: Any) -> dict[str, Any] | None:
    """The metrics of a completed job of exactly this config in ``out``, else None."""
    job, metrics = out / JOB_FILE, out / METRICS_FILE
    if not (job.is_file() and metrics.is_file()):
        return None
    try:
        record = json.loads(job.read_text())
        config = record.get("config") or {}
        if isinstance(config.get("attn"), dict):  # a record from before per-variant settings held every attn field
            config["attn"] = asdict(settings_from_record(config["attn"]))
        if record.get("status") != "completed" or config != json.loads(json.dumps(asdict(typed))):
            return None
        return json.loads(metrics.read_text())
    except (OSError, ValueError):  # a damaged record: run the job again
        return None


def reported_errors() -> tuple[type[BaseException], ...]:
    """Failures whose message says everything (what, where, what to do): printed as one line, exit status 1."""
    # Deferred: their modules import torch, lightning or datasets, which a job that fails its config check
    # must not wait for; these are needed only once a job has raised.
    from .checkpointing import CheckpointMismatchError
    from .data.schema import BadRecordError
    from .nonfinite import NonFiniteError

    return (BadRecordError, CheckpointMismatchError, NonFiniteError, UnreadableFileError)


def sweep_group(experiment_name: str, sweep_dir: str) -> str:
    """W&B group of a multirun job: the experiment and the sweep (``table1-2025-01-31_12-00-00``)."""
    name = Path(str(sweep_dir)).name
    return name if name.startswith(experiment_name) else f"{experiment_name}-{name}"


def check_launch(typed: Any, hydra_cfg: Any) -> None:
    """Refuse launches that would silently do the wrong thing (see docs/scaling.md).

    - A config that carries ``hydra.sweeper.params`` (``experiment=table1``) names a grid; without
      ``-m`` Hydra would ignore the grid and run one job of defaults.
    - Hydra multirun on the basic (in-process) launcher with a Trainer that starts more than one
      process: Lightning's DDP relaunches ``sys.argv`` (``-m`` and all) in every extra rank, so each
      rank would run the whole sweep.
    """
    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None)
    if hydra_cfg.mode == RunMode.RUN and params:
        grid = " ".join(f"{k}={v}" for k, v in params.items())
        raise ConfigError(f"this config is a sweep ({grid}): run it with -m, "
                          f"e.g. python train.py -m {' '.join(hydra_cfg.overrides.task)}")
    trainer = getattr(typed, "trainer", None)
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default=""))
    if hydra_cfg.mode == RunMode.MULTIRUN and trainer is not None and launcher.endswith("BasicLauncher"):
        if relaunches_script(trainer) and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
            raise ConfigError(
                f"trainer.strategy={trainer.strategy!r} trainer.devices={trainer.devices!r} "
                f"trainer.num_nodes={trainer.num_nodes}: Lightning would relaunch this whole multirun in every "
                f"extra rank; use hydra/launcher=slurm (one job per node), or single runs (see {SCALING_DOC})"
            )


def relaunches_script(trainer: Any) -> bool:
    """Whether Lightning would start extra processes by re-running the command line (DDP subprocess launcher)."""
    strategy = str(trainer.strategy)
    if any(word in strategy for word in ("spawn", "fork", "notebook")):
        return False  # multiprocessing: children do not re-run the command line
    if trainer.num_nodes > 1:
        return True
    return _device_count(trainer.accelerator, trainer.devices) > 1


def _device_count(accelerator: str, devices: Any) -> int:
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text in ("auto", "-1"):
        if accelerator == "cpu":
            return 1 if text == "auto" else (os.cpu_count() or 1)
        import torch  # deferred: heavy, and only a GPU count needs it

        return max(1, torch.cuda.device_count())
    try:
        return int(text)
    except ValueError:
        return 1


def finish_failed_wandb_run() -> None:
    """Mark the open W&B run (if any) as failed and close it, so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")  # never import W&B just to find that no run is open
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


class _JobRecord:
    """job.json and failed.json of one job."""

    def __init__(self, hydra_cfg: Any, schema: type) -> None:
        self.multirun = hydra_cfg.mode == RunMode.MULTIRUN
        self.base: dict[str, Any] = {
            "run_name": hydra_cfg.job.override_dirname or "default",
            "overrides": list(hydra_cfg.overrides.task),
            "job_num": OmegaConf.select(hydra_cfg, "job.num") if self.multirun else None,
            "sweep_dir": str(hydra_cfg.sweep.dir) if self.multirun else None,
            "schema": schema.__name__,
            "host": socket.gethostname(),
        }
        self.t0 = time.time()

    def _payload(self, status: str, typed: Any) -> dict[str, Any]:
        payload = {"status": status, **self.base, "started": _stamp(self.t0)}
        if status != "running":
            payload["finished"] = _stamp(time.time())
            payload["seconds"] = round(time.time() - self.t0, 1)
        if typed is not None:
            payload["config"] = asdict(typed) if is_dataclass(typed) else typed
        return payload

    def started(self, out: Path, typed: Any) -> None:
        if not is_rank_zero():
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / FAILED_FILE).unlink(missing_ok=True)  # a re-run in the same directory starts clean
        write_json_atomic(out / JOB_FILE, self._payload("running", typed))

    def completed(self, out: Path, typed: Any) -> None:
        if is_rank_zero():
            write_json_atomic(out / JOB_FILE, self._payload("completed", typed))

    def failed(self, out: Path, err: BaseException, typed: Any, console: bool = True) -> None:
        if not is_rank_zero():
            return
        try:
            out.mkdir(parents=True, exist_ok=True)
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            failure = {
                "error_type": type(err).__name__,
                "message": str(err),
                "traceback": tb[-4000:],
                "run_name": self.base["run_name"],
                "overrides": self.base["overrides"],
                "job_num": self.base["job_num"],
                "time": _stamp(time.time()),
            }
            write_json_atomic(out / FAILED_FILE, failure)
            write_json_atomic(out / JOB_FILE, self._payload("failed", typed))
            log.error("job failed: %s: %s (recorded in %s)", type(err).__name__, err, out / FAILED_FILE,
                      extra={FILE_ONLY: not console})
        except OSError as io_err:  # never hide the job's own error behind a bookkeeping one
            log.error("could not record the failure in %s: %s", out, io_err)


def _plain(cfg: DictConfig) -> dict[str, Any] | None:
    """The composed (not validated) config, for the record of a job whose config was refused."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return None


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))

"""Steps per second of the tiny base's two build stages, at the default batch sizes, on a short recipe.

    OMP_NUM_THREADS=1 python benchmarks/build_speed.py [--steps 60] [--workers N] [--device cpu] [--set KEY=VALUE ...]

Builds a throwaway base of the default architecture with ``--steps`` steps per stage (and as many
opening steps of stage 1 as a tenth of them) and prints each stage's steps/s: by the wall clock
(``train_seconds``: drawing the batches included, probes excluded) and by this process's CPU time
over the same steps, which other jobs on the machine disturb far less. ``--workers``: scene-drawing
DataLoader workers (omitted: the build's default for the device; with workers, their CPU time is not
this process's).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffpali.config import TinySpec  # noqa: E402
from diffpali.zoo.build import apply_overrides, build_base  # noqa: E402
from diffpali.zoo.stages import StageRunner  # noqa: E402

CPU_SECONDS: dict[str, float] = {}


def timed(run):
    """StageRunner.run, adding up this process's CPU seconds per stage."""

    def wrapper(self, *args, **kwargs):
        started = time.process_time()
        try:
            return run(self, *args, **kwargs)
        finally:
            CPU_SECONDS[self.name] = CPU_SECONDS.get(self.name, 0.0) + time.process_time() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    spec = apply_overrides(TinySpec(), [f"stage0.steps={args.steps}", f"stage1.steps={args.steps}",
                                        f"stage1.opening_steps={args.steps // 10}", *args.set])
    StageRunner.run = timed(StageRunner.run)
    extra = {"workers": args.workers} if "workers" in inspect.signature(build_base).parameters else {}
    with tempfile.TemporaryDirectory() as tmp:
        info = build_base(spec, Path(tmp) / "base", args.device, Path(tmp) / "work", progress=False, probe_every=0,
                          **extra)
    rates = {stage: round(info[stage]["steps"] / info[stage]["train_seconds"], 2) for stage in ("stage0", "stage1")}
    cpu = {stage: round(info[stage]["steps"] / CPU_SECONDS[f"stage {stage[-1]}"], 2) for stage in ("stage0", "stage1")}
    print(json.dumps({"device": args.device, "workers": extra.get("workers", "n/a"), "steps": args.steps,
                      "threads": torch.get_num_threads(), "steps_per_s": rates, "steps_per_cpu_s": cpu}))


if __name__ == "__main__":
    main()

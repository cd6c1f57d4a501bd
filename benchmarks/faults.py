"""Fault injection: kill real training runs with SIGKILL at random points, resume them, compare.

    python benchmarks/faults.py [--kills N] [--seed S] [extra train.py overrides ...]

1. Runs ``python train.py`` to the end once (the reference): the shipped tiny PaliGemma with
   differential attention (diff_dup), LoRA with dropout (so the RNG state matters), two epochs of
   a small easy-vqa slice with validation at each epoch end, a checkpoint after every step.
2. N times: starts the same run in a fresh directory, waits until its first checkpoint exists,
   sleeps a random part of the reference's training time, kills the whole process group with
   SIGKILL (which may land mid-step, mid-validation or mid-save), then restarts it with
   ``ckpt_path=last`` in the same directory and lets it finish.
3. Compares every tensor of each resumed run's adapter (LoRA, lambda, head norms) and variant
   weights with the reference's, bit for bit, and prints how many resumes reproduced them exactly.

Exit status 0 only when all of them did.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "attn=diff_dup", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1",
    "data.train_limit=64", "data.val_limit=8", "data.batch_size=8", "data.eval_batch_size=8",
    "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "ckpt_every_n_steps=1", "test_after_fit=false", "logger=none", "optim.warmup_steps=2",
]
WEIGHT_FILES = ("adapter_model.safetensors", "variant_weights.safetensors")


def start(run_dir: Path, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1", OMP_NUM_THREADS="1")
    # A new session, so the kill reaches the run and any process it started, and nothing else.
    return subprocess.Popen([sys.executable, "train.py", *RUN, *extra, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{err[-3000:]}")


def weights(run_dir: Path) -> dict:
    tensors = {}
    for name in WEIGHT_FILES:
        path = run_dir / "adapter" / name
        if path.is_file():
            tensors.update({f"{name}:{k}": v for k, v in load_file(str(path)).items()})
    return tensors


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].equal(b[k]) for k in a)


def trial(run_dir: Path, extra: list[str], window: float, rng: random.Random) -> dict:
    """One killed-and-resumed run; returns where it was killed and how it ended."""
    proc = start(run_dir, extra)
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.05)
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    if proc.poll() is not None:
        finish(proc, "run")
        return {"killed": False, "delay_s": round(delay, 2)}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(json.dumps(_step_of(last)))
    finish(start(run_dir, [*extra, "ckpt_path=last"]), "resumed run")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"killed": True, "delay_s": round(delay, 2), "resumed_at_step": step, "final_step": metrics["train_steps"]}


def _step_of(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="killed-and-resumed runs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args, extra = parser.parse_known_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="diffpali-faults-") as tmp:
        started = time.time()
        finish(start(Path(tmp) / "reference", extra), "reference run")
        reference = json.loads((Path(tmp) / "reference" / "metrics.json").read_text())
        expected = weights(Path(tmp) / "reference")
        window = reference["fit_seconds"]
        print(f"reference: {reference['train_steps']} steps, fit {window:.1f} s, {len(expected)} tensors "
              f"(total {time.time() - started:.0f} s)", flush=True)
        exact = killed = 0
        for k in range(args.kills):
            for attempt in range(3):  # a run that finished before its kill time is tried again, killed sooner
                outcome = trial(Path(tmp) / f"trial{k}-{attempt}", extra, window / 2**attempt, rng)
                if outcome["killed"]:
                    break
            same = identical(weights(Path(tmp) / f"trial{k}-{attempt}"), expected)
            killed += outcome["killed"]
            exact += same and outcome["killed"]
            print(f"trial {k}: {outcome} -> weights {'identical' if same else 'DIFFER'}", flush=True)
    print(f"{exact}/{killed} resumes reproduced the weights exactly "
          f"({args.kills - killed} trial(s) finished before every kill time; {time.time() - started:.0f} s)")
    sys.exit(0 if exact == killed and killed > 0 else 1)


if __name__ == "__main__":
    main()

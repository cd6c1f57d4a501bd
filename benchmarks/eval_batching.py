"""Batched VQA generation: samples/s at batch 1 and batch 16, measured in one run.

    python benchmarks/eval_batching.py [--questions 64] [--rounds 3] [--device cpu|cuda]

Scores the same easy-vqa test questions with the shipped tiny base through the one scoring path
every model uses (``diffpali.evals.vqa.score_vqa``: greedy, left padding, KV cache). Batch sizes
alternate round after round, so a slow moment of the machine hits both alike; each figure is the
median over rounds after one warm-up. The answers must be identical at both batch sizes (padding
must not change a prediction); the script checks that before it prints a speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from diffpali.config import ModelConfig
    from diffpali.data.easy_vqa import load_easy_vqa
    from diffpali.evals.vqa import score_vqa
    from diffpali.model import load_base

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_base(ModelConfig())
    model.to(device)
    dataset = load_easy_vqa("test", limit=args.questions)

    def run(batch_size: int, keep: int = 0):
        return score_vqa(model, processor, dataset, dataset_name="easy_vqa", split="test",
                         prompt="answer en {question}", batch_size=batch_size, max_new_tokens=8, device=device,
                         keep_predictions=keep)

    # the first run of each batch size is the warm-up
    answers = {b: [p["prediction"] for p in run(b, keep=args.questions).predictions] for b in args.batch_sizes}
    reference = answers[args.batch_sizes[0]]
    for b, got in answers.items():
        mismatched = sum(x != y for x, y in zip(reference, got))
        if mismatched:
            raise SystemExit(f"batch {b}: {mismatched} of {len(got)} answers differ from batch {args.batch_sizes[0]}")
    seconds: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for _ in range(args.rounds):
        for b in args.batch_sizes:
            started = time.perf_counter()
            run(b)
            seconds[b].append(time.perf_counter() - started)
    base = args.batch_sizes[0]
    rate = {b: args.questions / statistics.median(s) for b, s in seconds.items()}
    print(f"VQA generation, tiny base, {args.questions} easy-vqa test questions, {device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.rounds} rounds; "
          "answers identical at every batch size")
    print(f"{'batch':>5}  {'samples/s':>9}  {'vs batch ' + str(base):>12}")
    for b in args.batch_sizes:
        print(f"{b:>5}  {rate[b]:>9.1f}  {rate[b] / rate[base]:>11.2f}x")


if __name__ == "__main__":
    main()

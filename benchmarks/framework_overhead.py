"""What the framework costs: train.py's Lightning training step against a hand-written PyTorch + peft loop.

    python benchmarks/framework_overhead.py [--blocks 10] [--block 20] [--batch-size 32] [--attn vanilla] [--control]

Both sides train the same model (the shipped tiny base with the configured variant and LoRA, two
copies from one seed) on the same easy-vqa batch, with the same AdamW, warm-up/cosine schedule and
gradient clipping at 1.0. The Lightning side is what ``python train.py`` runs per step: Trainer +
DiffPaliModule (its non-finite guard, the schedule, train/loss and train/lr logging, lambda every
``log_every_n_steps``), with RNGState, LambdaHistory and the progress lines; no logger and no
checkpoint writes (those are I/O, not framework). The hand-written side iterates its own DataLoader
of the same batch: forward, backward, clip, step, schedule, zero_grad.

They run in one process and take turns: a block of Lightning steps (timed from the end of the
previous hand-written block, so the data fetch and every hook between steps count), then a block of
hand-written steps, and so on; the first pair warms up. Per-step medians over the blocks; the ratio
is Lightning / hand-written, with 1.05 as the target. ``--control`` runs the hand-written loop
against a second copy of itself the same way: its ratio is the noise floor of the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 1.05


def build(attn: str, batch_size: int, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, processor, one training batch) exactly as train.py builds them for the embedded default."""
    import torch

    from diffpali.config import DataConfig, FfnConfig, LoraConfig, ModelConfig, attn_settings
    from diffpali.data.collate import PaliGemmaCollator
    from diffpali.data.datamodule import VQADataModule
    from diffpali.model import build_model

    torch.manual_seed(seed)
    model, processor = build_model(ModelConfig(), attn_settings({"variant": attn}), FfnConfig(),
                                   LoraConfig(rank=16, alpha=32))
    data_cfg = DataConfig(train_limit=batch_size, val_limit=8, test_limit=8, batch_size=batch_size)
    data = VQADataModule(data_cfg, processor)
    data.setup("fit")
    train = data.datasets["train"]
    batch = PaliGemmaCollator(processor, train=True)([train[i] for i in range(batch_size)])
    return model.train(), processor, batch


def hand_written(model: Any, loader: Any, total_steps: int) -> Callable[[int], float]:
    """A minimal loop over a DataLoader: returns ``run(n)``, which takes n steps and gives the seconds per step."""
    import torch

    from diffpali.config import OptimConfig
    from diffpali.data.collate import model_inputs
    from diffpali.lightning_module import warmup_cosine

    o = OptimConfig()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, o.warmup_steps, o.schedule))
    batches = iter(loader)

    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            loss = model(**model_inputs(next(batches))).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / n

    return run


def _as_is(batch: Any) -> Any:
    """The batch is collated already (DataLoader would otherwise walk it with default_convert)."""
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks per side (after one warm-up pair)")
    parser.add_argument("--block", type=int, default=20, help="steps per block")
    parser.add_argument("--batch-size", type=int, default=32, help="train.py's default for easy-vqa")
    parser.add_argument("--attn", default="vanilla", help="vanilla (train.py's default) | diff_dup | diff_split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--control", action="store_true", help="hand-written loop against itself (noise floor)")
    args = parser.parse_args()

    import lightning as L
    import torch

    from diffpali.checkpointing import RNGState
    from diffpali.config import OptimConfig
    from diffpali.console import configure_console
    from diffpali.data.datamodule import VQADataModule
    from diffpali.lambda_callback import LambdaHistory
    from diffpali.lightning_module import DiffPaliModule
    from diffpali.progress import ConsoleProgress

    torch.set_num_threads(args.threads)
    configure_console()
    total = args.block * (args.blocks + 1)
    lightning_model, processor, batch = build(args.attn, args.batch_size)
    plain_model, _, _ = build(args.attn, args.batch_size)  # the same weights: same seed, same build

    class SameBatch(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return total

        def __getitem__(self, index: int) -> dict[str, Any]:
            return batch

    def loader() -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(SameBatch(), batch_size=None, collate_fn=_as_is)

    class SameBatches(L.LightningDataModule):
        """What train.py's datamodule hands Lightning: the batch, moved by its own transfer hook."""

        transfer_batch_to_device = VQADataModule.transfer_batch_to_device

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return loader()

    hand = hand_written(plain_model, loader(), total)
    times: dict[str, list[float]] = {"lightning": [], "hand": []}
    if args.control:
        other = hand_written(lightning_model, loader(), total)
        for _ in range(args.blocks + 1):
            times["lightning"].append(other(args.block))
            times["hand"].append(hand(args.block))
        first, second = statistics.median(times["lightning"][1:]), statistics.median(times["hand"][1:])
        print(f"control: hand-written loop against itself, batch {args.batch_size}, {args.threads} thread(s); "
              f"median of {args.blocks} interleaved blocks of {args.block} steps")
        print(f"  first {1000 * first:.2f} ms/step, second {1000 * second:.2f} ms/step, ratio {first / second:.3f}x")
        return

    class Interleave(L.Callback):
        """Ends a Lightning block every ``block`` steps, runs a hand-written block, restarts the clock."""

        def __init__(self) -> None:
            self.steps = 0
            self.resumed = 0.0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.resumed = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.steps += 1
            if self.steps % args.block:
                return
            times["lightning"].append((time.perf_counter() - self.resumed) / args.block)
            times["hand"].append(hand(args.block))
            self.resumed = time.perf_counter()

    module = DiffPaliModule(lightning_model, processor, OptimConfig())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=total, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                            log_every_n_steps=10, num_sanity_val_steps=0, limit_val_batches=0,
                            callbacks=[RNGState(), LambdaHistory(tmp), ConsoleProgress(interactive=False),
                                       Interleave()],
                            default_root_dir=tmp)
        trainer.fit(module, datamodule=SameBatches())
    lightning, plain = statistics.median(times["lightning"][1:]), statistics.median(times["hand"][1:])
    ratio = lightning / plain
    print(f"LoRA training step, embedded default (shipped tiny base, attn={args.attn}, LoRA r16), "
          f"batch {args.batch_size}, "
          f"cpu, {args.threads} thread(s); median of {args.blocks} interleaved blocks of {args.block} steps")
    print(f"  hand-written PyTorch + peft loop   {1000 * plain:8.2f} ms/step")
    print(f"  Lightning (train.py's module)      {1000 * lightning:8.2f} ms/step")
    verdict = "within" if ratio <= TARGET else "over"
    print(f"  ratio Lightning / hand-written     {ratio:8.3f}x  ({verdict} the {TARGET:.2f}x target)")


if __name__ == "__main__":
    main()

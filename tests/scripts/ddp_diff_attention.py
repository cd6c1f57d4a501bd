"""Two-process DDP (gloo, CPU) training of a diff_dup tiny PaliGemma; run by tests/test_ddp.py.

Each rank writes its final trainable tensors and lambda values to OUT_DIR/rank{r}.pt. Lightning's
DDP launcher re-runs this file for rank 1, so rank 1 builds its model in a fresh process: the
attention functions must be registered there too, or it would fail or silently differ.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import diff_dup_lora_model  # noqa: E402

from diffpali.config import (  # noqa: E402
    OptimConfig,
)
from diffpali.data.collate import PaliGemmaCollator  # noqa: E402
from diffpali.lightning_module import DiffPaliModule  # noqa: E402
from diffpali.surgery import lambda_values  # noqa: E402


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    model, processor = diff_dup_lora_model()
    examples = [{"image": Image.new("RGB", (32, 32), (40 * k, 0, 200)), "prefix": "caption en",
                 "suffix": "a red circle",
                 "answers": ["a red circle"] * 10, "category": "other"} for k in range(8)]
    loader = torch.utils.data.DataLoader(examples, batch_size=2, collate_fn=PaliGemmaCollator(processor, train=True))
    optim = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant")
    module = DiffPaliModule(model, processor, optim, dataset_name="vqav2")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    before = lambda_values(model)
    trainer.fit(module, train_dataloaders=loader)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"params": trainable, "lambda": lambda_values(model), "lambda_before": before,
                "step": trainer.global_step, "implementation": model.config.text_config._attn_implementation},
               out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

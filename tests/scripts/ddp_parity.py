"""One training run of a diff_dup tiny PaliGemma on easy-vqa, on 1 or 2 CPU processes; run by tests/test_ddp.py.

    python ddp_parity.py OUT_DIR DEVICES

The global batch is 4 either way (4 per process, or 2 in each of 2 gloo processes), and the data
comes from the real VQADataModule, whose sampler shards training data across ranks and leaves the
validation split unpadded. Each rank writes OUT_DIR/rank{r}.pt: its per-step losses, the question
ids it scored in validation, the validation count after the metric's cross-rank sync, and lambda.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import diff_dup_lora_model  # noqa: E402

from diffpali.config import DataConfig, OptimConfig  # noqa: E402
from diffpali.data.datamodule import VQADataModule  # noqa: E402
from diffpali.lightning_module import DiffPaliModule  # noqa: E402
from diffpali.surgery import lambda_values  # noqa: E402

GLOBAL_BATCH = 4
VAL_RECORDS = 7  # odd on purpose: a padding sampler would score one question twice on 2 ranks


class Probe(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.val_ids: list[int] = []
        self.val_count = -1.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_ids.extend(m["question_id"] for m in batch["meta"])

    def on_validation_epoch_end(self, trainer, pl_module):  # runs before the module computes and resets
        with pl_module.val_metric.sync_context(should_sync=True):
            self.val_count = float(pl_module.val_metric.count)


def main(out_dir: Path, devices: int) -> None:
    torch.set_num_threads(1)
    model, processor = diff_dup_lora_model(1)
    data = VQADataModule(DataConfig(train_limit=16, val_limit=VAL_RECORDS, test_limit=4,
                                    batch_size=GLOBAL_BATCH // devices, eval_batch_size=2, max_new_tokens=2),
                         processor, seed=0)
    module = DiffPaliModule(model.train(), processor, OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant"),
                            max_new_tokens=2)
    probe = Probe()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[probe])
    trainer.fit(module, datamodule=data)
    torch.save({"losses": probe.losses, "val_ids": probe.val_ids, "val_count": probe.val_count,
                "lambda": lambda_values(model), "step": trainer.global_step,
                "implementation": model.config.text_config._attn_implementation},
               out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))

"""Two CPU processes (gloo) train a diff_dup tiny PaliGemma with FSDP2 or DDP; run by tests/test_ddp.py.

    python fsdp2_cpu.py OUT_DIR fsdp2|ddp

FSDP2 is torch's ``fully_shard`` through Lightning's ``ModelParallelStrategy``: each decoder and
encoder layer, then the whole model, is sharded over the two ranks, so every parameter (LoRA,
lambda, the diff_dup branches) lives as a DTensor, half in each rank. Lightning's ``strategy=fsdp``
(FSDP1) cannot run here: Lightning refuses it without CUDA and torch's FSDP1 needs an accelerator.
Each rank writes OUT_DIR/rank{r}.pt: its per-step losses and the full (gathered) trainable tensors.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import diff_dup_lora_model  # noqa: E402

from diffpali.config import OptimConfig  # noqa: E402
from diffpali.data.collate import PaliGemmaCollator  # noqa: E402
from diffpali.lightning_module import DiffPaliModule  # noqa: E402


class ShardedModule(DiffPaliModule):
    """FSDP2: Lightning calls configure_model once the process group and device mesh exist."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for name, module in self.model.named_modules():
            if name.rsplit(".", 1)[-1].isdigit() and name.rsplit(".", 2)[-2] == "layers":  # one unit per layer
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)


class Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main(out_dir: Path, strategy: str) -> None:
    torch.set_num_threads(1)
    model, processor = diff_dup_lora_model(1)
    examples = [{"image": Image.new("RGB", (32, 32), (30 * k, 0, 200)), "prefix": "caption en",
                 "suffix": "a red circle",
                 "answers": ["a red circle"] * 10, "category": "other", "question_id": k} for k in range(8)]
    loader = torch.utils.data.DataLoader(examples, batch_size=2, collate_fn=PaliGemmaCollator(processor, train=True))
    cls = ShardedModule if strategy == "fsdp2" else DiffPaliModule
    optim = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant")
    module = cls(model.train(), processor, optim, dataset_name="vqav2")
    parallel = (ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo")
                if strategy == "fsdp2" else "ddp")
    probe = Losses()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=parallel, max_steps=3, logger=False, callbacks=[probe],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    full, sharded = {}, 0
    for name, p in module.model.named_parameters():
        if p.requires_grad:
            if hasattr(p, "full_tensor"):  # a DTensor: gather the shards (a collective, so every rank runs it)
                sharded += 1
                full[name] = p.full_tensor().detach().clone()
            else:
                full[name] = p.detach().clone()
    torch.save({"losses": probe.losses, "params": full, "sharded": sharded, "step": trainer.global_step},
               out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

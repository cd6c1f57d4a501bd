"""Two-process DDP (gloo, CPU) where one rank's batch is wholly unreadable; run by tests/test_ddp.py.

    python ddp_bad_batch.py OUT_DIR

8 examples, batch 1 per rank, on_bad_record=skip: rank 0 reads examples 0, 2, 4, 6 and rank 1
reads 1, 3, 5, 7, and example 3's image is not an image. At the second step rank 1 has nothing to
train on; both ranks must skip that step together (a rank stepping alone would wait forever for the
other's gradients). Each rank writes OUT_DIR/rank{r}.pt: its step count, the updates AdamW applied,
the schedule's step, skipped records and trainable tensors.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import CORPUS, small_spec  # noqa: E402

from diffpali.config import FfnConfig, LoraConfig, OptimConfig, VanillaSettings  # noqa: E402
from diffpali.data.collate import PaliGemmaCollator  # noqa: E402
from diffpali.lightning_module import DiffPaliModule  # noqa: E402
from diffpali.model import apply_variants, wrap_lora  # noqa: E402
from diffpali.zoo.tiny import build_config, build_processor, train_tokenizer  # noqa: E402

BAD = 3


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    spec = small_spec(layers=1)
    processor = build_processor(train_tokenizer(CORPUS, spec.text.vocab_size), spec)
    torch.manual_seed(0)
    from transformers import PaliGemmaForConditionalGeneration

    model = PaliGemmaForConditionalGeneration(build_config(spec, processor))
    model = wrap_lora(model, LoraConfig(rank=4, alpha=8), apply_variants(model, VanillaSettings(), FfnConfig()))
    examples = [{"image": Image.new("RGB", (32, 32), (30 * k, 0, 200)), "prefix": "caption en",
                 "suffix": "a red circle",
                 "answers": ["a red circle"] * 10, "category": "other", "question_id": k} for k in range(8)]
    examples[BAD]["image"] = b"not an image"  # as a truncated download leaves it
    collate = PaliGemmaCollator(processor, train=True, on_bad_record="skip")
    loader = torch.utils.data.DataLoader(examples, batch_size=1, collate_fn=collate)
    module = DiffPaliModule(model.train(), processor, OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant"),
                            dataset_name="vqav2")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    adam_steps = {int(state["step"]) for state in trainer.optimizers[0].state_dict()["state"].values()}
    torch.save({"params": trainable, "step": trainer.global_step, "skipped_records": module.skipped_records,
                "updates": adam_steps, "schedule_steps": trainer.lr_scheduler_configs[0].scheduler.last_epoch},
               out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

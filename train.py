"""LoRA-fine-tune a (differential) PaliGemma, then score it on the test split.

    python train.py                                   # embedded default: tiny PaliGemma on easy-vqa, CPU
    python train.py attn=diff_dup ffn=swiglu          # one variant
    python train.py -m lora.rank=16,32                # a Hydra multirun sweep
    python train.py model=paligemma2_3b_224 plan=true # the memory plan, without loading anything

Every key is type-checked against ``diffpali.config.TrainConfig`` before anything loads.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from diffpali.config import TrainConfig, check_command_line, register_configs
from diffpali.jobs import run_job

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_job(cfg, TrainConfig, _train)
    return metrics.get("test/vqa_accuracy_official") if metrics else None


def _train(cfg: TrainConfig, run_name: str) -> dict:
    from diffpali.runner import train  # torch and transformers load only once the config is valid

    return train(cfg, run_name)


if __name__ == "__main__":
    check_command_line(Path(__file__).resolve().parent / "conf", "train")  # a bad key or option: one line, exit 2
    main()

"""Score the base model or a trained adapter, the same way for every variant.

    python evaluate.py ckpt=<run dir | adapter dir | base> [eval=vqa] [eval.convention=simple]

Every key is type-checked against ``diffpali.config.EvaluateConfig`` before anything loads.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from diffpali.config import EvaluateConfig, check_command_line, register_configs
from diffpali.jobs import run_job

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_job(cfg, EvaluateConfig, _evaluate)


def _evaluate(cfg: EvaluateConfig, run_name: str) -> dict:
    from diffpali.runner import evaluate  # torch and transformers load only once the config is valid

    return evaluate(cfg, run_name)


if __name__ == "__main__":
    check_command_line(Path(__file__).resolve().parent / "conf", "evaluate")  # a bad key or option: one line, exit 2
    main()

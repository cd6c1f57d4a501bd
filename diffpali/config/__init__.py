"""Typed configuration schemas.

Every Hydra config group is backed by a dataclass registered in Hydra's ConfigStore, so a misspelt
key or a value of the wrong type fails at composition time. Value rules (ranges, choices, paths)
live in ``validate`` methods and run in :func:`to_typed`, before any model or dataset is loaded,
with messages of the form ``lora.rank=0: must be > 0``.

- :mod:`.rules`: :class:`ConfigError` and the checks every rule uses;
- :mod:`.specs`: the tiny zoo model's architecture and pretraining recipe (``model.tiny``);
- :mod:`.groups`: one schema per group (model, data, attn, ffn, lora, optim, trainer, logger);
- :mod:`.commands`: ``train.py``'s and ``evaluate.py``'s top-level schemas, Hydra registration, :func:`to_typed`.

The names below are the package's public surface; each is defined once, in the module named above.
"""

from .commands import EVAL_TASKS, EvalTaskConfig, EvaluateConfig, TrainConfig, register_configs, to_typed
from .groups import (
    FFN_VARIANTS,
    AttnConfig,
    DataConfig,
    FfnConfig,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
)
from .rules import TOWERS, ConfigError
from .specs import STAGE1_TASKS, Stage0Spec, Stage1Spec, TextSpec, TinySpec, VisionSpec

__all__ = [
    "EVAL_TASKS", "FFN_VARIANTS", "STAGE1_TASKS", "TOWERS",
    "AttnConfig", "ConfigError", "DataConfig", "EvalTaskConfig", "EvaluateConfig", "FfnConfig", "LoggerConfig",
    "LoraConfig", "ModelConfig", "OptimConfig", "Stage0Spec", "Stage1Spec", "TextSpec", "TinySpec", "TrainConfig",
    "TrainerConfig", "VisionSpec", "register_configs", "to_typed",
]

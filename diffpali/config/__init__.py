"""Typed configuration schemas.

Every Hydra config group is backed by a dataclass registered in Hydra's ConfigStore, so a misspelt
key or a value of the wrong type fails at composition time. Value rules (ranges, choices, paths)
live in ``validate`` methods and run in :func:`to_typed`, before any model or dataset is loaded,
with messages of the form ``lora.rank=0: must be > 0``. Nothing here imports torch.

- :mod:`.rules`: :class:`ConfigError` and the checks every rule uses (one towers check among them);
- :mod:`.specs`: the tiny zoo model's architecture and pretraining recipe (``model.tiny``);
- :mod:`.attn`: one settings dataclass per attention variant (the options of the ``attn`` group);
- :mod:`.groups`: one schema per other group (model, data, ffn, lora, optim, trainer, logger);
- :mod:`.commands`: ``train.py``'s and ``evaluate.py``'s top-level schemas, Hydra registration, :func:`to_typed`;
- :mod:`.errors`: OmegaConf's and Hydra's errors as one line; :mod:`.cli`: the command line checked before Hydra.

The names below are the package's public surface; each is defined once, in the module named above.
"""

from .attn import (
    ATTN_SETTINGS,
    AttnSettings,
    DiffDupSettings,
    DiffSplitSettings,
    DiffV2Settings,
    LambdaSettings,
    VanillaSettings,
    VariantInfo,
    attn_settings,
    describe,
    register_settings,
    settings_for,
    settings_from_record,
)
from .cli import check_command_line
from .commands import EVAL_TASKS, EvalTaskConfig, EvaluateConfig, TrainConfig, register_configs, to_typed
from .groups import (
    FFN_VARIANTS,
    DataConfig,
    FfnConfig,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
)
from .rules import TOWERS, ConfigError, check_towers
from .specs import STAGE1_TASKS, STAGE1_VAL_FRACTION, Stage0Spec, Stage1Spec, TextSpec, TinySpec, VisionSpec

__all__ = [
    "ATTN_SETTINGS", "EVAL_TASKS", "FFN_VARIANTS", "STAGE1_TASKS", "STAGE1_VAL_FRACTION", "TOWERS",
    "AttnSettings", "ConfigError", "DataConfig", "DiffDupSettings", "DiffSplitSettings", "DiffV2Settings",
    "EvalTaskConfig", "EvaluateConfig", "FfnConfig", "LambdaSettings", "LoggerConfig", "LoraConfig", "ModelConfig",
    "OptimConfig", "Stage0Spec", "Stage1Spec", "TextSpec", "TinySpec", "TrainConfig", "TrainerConfig",
    "VanillaSettings", "VariantInfo", "VisionSpec", "attn_settings", "check_command_line", "check_towers",
    "describe", "register_configs", "register_settings", "settings_for", "settings_from_record", "to_typed",
]

"""Each attention variant's settings: one typed dataclass per option of the ``attn`` group, free of torch.

An option (``conf/attn/<name>.yaml``) starts from its schema, ``<name>_schema`` in Hydra's ConfigStore,
so a knob the chosen variant does not read is refused at composition (``attn=diff_v2
attn.head_norm=false``), and :func:`attn_settings` refuses it the same way for a plain dict. The
variant classes (``diffpali.attention``) each name their settings type; ``diffpali.attention`` checks
at import that the two tables agree. :func:`describe` gives a recorded run's labels and tags without
loading a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .rules import TOWERS, check_towers, choice, fail

DUP_MODES = ("shared", "separate")
SCHEMA_SUFFIX = "_schema"  #: ``<option>_schema``: an option's typed schema in the ConfigStore, not an option to pick


@dataclass(frozen=True)
class VariantInfo:
    """What reports, plots and W&B call a run's attention variant."""

    name: str  #: the variant's id and kernel name: ``diff_dup_separate``
    label: str  #: Table 1's "diff attn" column: ``yes (dup, separate)``
    display: str  #: plots and tables: ``diff_dup (separate)``
    tags: tuple[str, ...]  #: W&B tags: ``attn=diff_dup``, ``dup_mode=separate``


@dataclass
class AttnSettings:
    """What every variant has: its option name and the towers it converts."""

    variant: str = "vanilla"  #: the option of the attn group (conf/attn/<variant>.yaml)
    towers: list[str] = field(default_factory=lambda: list(TOWERS))  #: which towers get the variant

    #: Table 1's "diff attn" column, by variant name (an option with modes has one per mode)
    labels: ClassVar[dict[str, str]] = {}

    def name(self) -> str:
        """The id of the variant class these settings select (``diff_dup_separate``)."""
        return self.variant

    def modes(self) -> dict[str, str]:
        """The knobs beyond the option that pick the class, e.g. {"dup_mode": "separate"}."""
        return {}

    def info(self) -> VariantInfo:
        modes = self.modes()
        display = self.variant + (f" ({', '.join(modes.values())})" if modes else "")
        tags = (f"attn={self.variant}", *(f"{k}={v}" for k, v in modes.items()))
        return VariantInfo(self.name(), self.labels[self.name()], display, tags)

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """The keys a user may set under ``attn.`` for this option."""
        return tuple(f.name for f in fields(cls) if f.name != "variant")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every variant name these settings can select."""
        return tuple(cls.labels)

    @classmethod
    def selecting(cls, name: str) -> AttnSettings:
        """The default settings that select the variant ``name`` (one of :meth:`names`)."""
        return cls()

    def validate(self, key: str = "attn") -> None:
        option = type(self).__dataclass_fields__["variant"].default
        choice(f"{key}.variant", self.variant, tuple(sorted(ATTN_SETTINGS)))
        if self.variant != option:
            fail(f"{key}.variant", self.variant, f"choose a variant with its option, attn={self.variant}; "
                 f"these settings are attn={option}'s")
        check_towers(f"{key}.towers", self.towers)


@dataclass
class VanillaSettings(AttnSettings):
    """The pretrained attention, untouched."""

    variant: str = "vanilla"  #: the option of the attn group
    labels: ClassVar[dict[str, str]] = {"vanilla": "no"}


@dataclass
class LambdaSettings(AttnSettings):
    """The scalar lambda of the Differential Transformer (eqs. 3-4) and its per-head norm (eq. 6).

    With ``lambda_schedule=constant lambda_init=0 lambda_pairs=tied head_norm=false`` a variant computes
    exactly the pretrained attention at init (lambda = 0, no norm) and still trains.
    """

    head_norm: bool = True  #: per-head RMSNorm (fp32) scaled by (1 - lambda_init)
    lambda_schedule: str = "layer"  #: layer: 0.8 - 0.6 exp(-0.3 (l - 1)); constant: lambda_init everywhere
    lambda_init: float = 0.8  #: the constant, for lambda_schedule=constant
    layer_index_base: int = 1  #: index l of a tower's first layer in the schedule: 1 (paper) or 0
    lambda_std: float = 0.1  #: init std of the lambda vectors lq1, lk1, lq2, lk2 (0: lambda = lambda_init, frozen)
    #: independent: four independent draws (the paper); tied: lq2 = lq1 and lk2 = lk1 at init, so
    #: lambda starts at exactly lambda_init yet has a gradient (std 0 would leave it stuck there)
    lambda_pairs: str = "independent"
    #: steps over which lambda_init is ramped in from 0 (0: no warm-up). With lambda_pairs=tied and
    #: head_norm=false the layer then starts as exactly the pretrained attention, lambda's learned part free
    lambda_warmup_steps: int = 0

    def validate(self, key: str = "attn") -> None:
        super().validate(key)
        check_warmup(f"{key}.lambda_warmup_steps", self.lambda_warmup_steps)
        choice(f"{key}.lambda_schedule", self.lambda_schedule, ("layer", "constant"))
        choice(f"{key}.layer_index_base", self.layer_index_base, (0, 1))
        choice(f"{key}.lambda_pairs", self.lambda_pairs, ("independent", "tied"))
        if not 0.0 <= self.lambda_init < 1.0:
            fail(f"{key}.lambda_init", self.lambda_init, "must be in [0, 1)")
        if self.lambda_std < 0:
            fail(f"{key}.lambda_std", self.lambda_std, "must be >= 0")


def check_warmup(key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(key, value, "must be a whole number of steps >= 0")


def check_branch_noise(key: str, value: float) -> None:
    if value < 0:
        fail(key, value, "must be >= 0")


@dataclass
class DiffSplitSettings(LambdaSettings):
    """The original Differential Transformer (eq. 2): each head splits into two halves."""

    variant: str = "diff_split"  #: the option of the attn group
    labels: ClassVar[dict[str, str]] = {"diff_split": "yes (original)"}


@dataclass
class DiffDupSettings(LambdaSettings):
    """The paper's duplicated QK (eq. 5)."""

    variant: str = "diff_dup"  #: the option of the attn group
    #: shared: Q2,K2 are Q1,K1 (the paper's code, inert); separate: own noisy copies with their own LoRA
    dup_mode: str = "separate"
    branch_noise: float = 1e-3  #: dup_mode=separate: relative std of noise on the copied branch (breaks symmetry)
    labels: ClassVar[dict[str, str]] = {"diff_dup_shared": "yes (dup, shared)",
                                        "diff_dup_separate": "yes (dup, separate)"}

    def name(self) -> str:
        return f"{self.variant}_{self.dup_mode}"

    def modes(self) -> dict[str, str]:
        return {"dup_mode": self.dup_mode}

    @classmethod
    def selecting(cls, name: str) -> AttnSettings:
        return cls(dup_mode=name.removeprefix(f"{cls.variant}_"))

    def validate(self, key: str = "attn") -> None:
        super().validate(key)
        choice(f"{key}.dup_mode", self.dup_mode, DUP_MODES)
        check_branch_noise(f"{key}.branch_noise", self.branch_noise)


@dataclass
class DiffV2Settings(AttnSettings):
    """Differential Transformer V2: doubled query heads and a per-token lambda; no head norm, no schedule."""

    variant: str = "diff_v2"  #: the option of the attn group
    branch_noise: float = 1e-3  #: relative std of noise on the copied query heads (breaks symmetry)
    #: exact (lambda's per-head gate starts at 0: the pretrained model at init, with gradients) |
    #: plain (the authors' lambda projection: sigmoid(0) = 0.5 everywhere at init)
    v2_lambda_init: str = "exact"
    #: steps over which the plain init's gate of 1 is ramped in from 0 (0: no warm-up); needs
    #: v2_lambda_init=plain. lambda = sigmoid(x W + b) (g + ramp), g learned from 0: the pretrained layer at step 0
    lambda_warmup_steps: int = 0
    labels: ClassVar[dict[str, str]] = {"diff_v2": "yes (V2)"}

    def validate(self, key: str = "attn") -> None:
        super().validate(key)
        choice(f"{key}.v2_lambda_init", self.v2_lambda_init, ("exact", "plain"))
        check_warmup(f"{key}.lambda_warmup_steps", self.lambda_warmup_steps)
        if self.lambda_warmup_steps and self.v2_lambda_init == "exact":
            fail(f"{key}.lambda_warmup_steps", self.lambda_warmup_steps,
                 "needs attn.v2_lambda_init=plain: the exact init's lambda has no target to ramp to (its gate starts "
                 "at 0 and is learned)")
        check_branch_noise(f"{key}.branch_noise", self.branch_noise)


#: Every option of the attn group, by name. ``register_settings`` adds one.
ATTN_SETTINGS: dict[str, type[AttnSettings]] = {
    cls.variant: cls for cls in (VanillaSettings, DiffSplitSettings, DiffDupSettings, DiffV2Settings)
}


def register_settings(cls: type[AttnSettings]) -> type[AttnSettings]:
    """Add an option to the attn group (its schema reaches Hydra at the next ``register_configs``)."""
    ATTN_SETTINGS[cls.variant] = cls
    return cls


def knob_error(variant: str, key: str, value: Any, prefix: str = "attn") -> None:
    """Refuse a knob the chosen variant does not have, listing the ones it has."""
    knobs = ATTN_SETTINGS[variant].knobs()
    fail(f"{prefix}.{key}", value, f"attn={variant} has no such knob; its knobs: {', '.join(knobs)}")


def attn_settings(values: Mapping[str, Any], key: str = "attn") -> AttnSettings:
    """The typed settings of a plain ``attn`` dict, refusing an unknown variant or a knob it lacks."""
    variant = values.get("variant", "vanilla")
    choice(f"{key}.variant", variant, tuple(sorted(ATTN_SETTINGS)))
    cls = ATTN_SETTINGS[variant]
    for name, value in values.items():
        if name != "variant" and name not in cls.knobs():
            knob_error(variant, name, value, key)
    return cls(**values)


def settings_from_record(values: Mapping[str, Any]) -> AttnSettings:
    """The settings a run recorded (``diffpali.json``, ``job.json``): fields its variant does not have are
    dropped, so a record from before per-variant settings (every field flat) still loads as it ran."""
    variant = values.get("variant", "vanilla")
    if variant not in ATTN_SETTINGS:
        raise ValueError(f"attn.variant={variant!r}: not a variant of this version; "
                         f"known: {', '.join(sorted(ATTN_SETTINGS))}")
    cls = ATTN_SETTINGS[variant]
    return cls(**{k: v for k, v in values.items() if k == "variant" or k in cls.knobs()})


def settings_for(name: str, **knobs: Any) -> AttnSettings:
    """The settings that select the variant ``name`` (``diff_dup_shared``), with ``knobs`` set."""
    for cls in ATTN_SETTINGS.values():
        if name in cls.names():
            settings = cls.selecting(name)
            return attn_settings({**{f.name: getattr(settings, f.name) for f in fields(settings)}, **knobs})
    raise ValueError(f"no attn option selects the variant {name!r}")


def describe(values: Mapping[str, Any]) -> VariantInfo:
    """Name, label, display name and tags of a run's recorded ``attn`` settings (old flat records too)."""
    return settings_from_record(values).info()

"""The rules every config value is checked by, and the error that names a refused value.

Value rules (ranges, choices, paths) live in the schemas' ``validate`` methods and run in
:func:`diffpali.config.to_typed`, before any model or dataset is loaded, with messages of the form
``lora.rank=0: must be > 0``.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is not allowed. The message names the key, the value and the rule."""


def fail(key: str, value: Any, rule: str) -> None:
    raise ConfigError(f"{key}={value!r}: {rule}")


def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        fail(key, value, f"must be one of {', '.join(allowed)}")


def positive(key: str, value: float | int) -> None:
    if not value > 0:
        fail(key, value, "must be > 0")


#: The two towers of PaliGemma that variants and LoRA can target (their modules: ``diffpali.towers``).
TOWERS = ("vision", "text")


def check_towers(key: str, towers: list[str]) -> None:
    """A non-empty list of known towers: the one rule every ``*.towers`` key follows."""
    if not towers:
        fail(key, towers, f"must name at least one of {', '.join(TOWERS)}")
    for tower in towers:
        choice(key, tower, TOWERS)

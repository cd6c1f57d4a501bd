"""Every config error in one line: OmegaConf's type and key errors and Hydra's missing options become a
:class:`ConfigError` of the project's form, ``key=value: what is allowed``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import is_dataclass
from typing import Any

from .attn import ATTN_SETTINGS, SCHEMA_SUFFIX, AttnSettings
from .rules import ConfigError

_MISSING = object()


def one_line(err: BaseException, overrides: Sequence[str] = (), prefix: str = "") -> ConfigError:
    """The :class:`ConfigError` that says what ``err`` (OmegaConf's or Hydra's, maybe wrapped) means.

    ``overrides`` (the command line's ``key=value`` items) supply the value a key error does not carry;
    ``prefix`` names the node ``err`` was raised in (``attn``), when that node was checked on its own.
    """
    if isinstance(err, ConfigError):
        return err
    missing = getattr(err, "missing_cfg_file", None)
    if missing:  # a group option that does not exist: name the group's options (schemas are not options)
        group, _, option = str(missing).rpartition("/")
        options = sorted(o for o in getattr(err, "options", None) or () if not o.endswith(SCHEMA_SUFFIX))
        return ConfigError(f"{group}={option!r}: must be one of {', '.join(options)}" if options
                           else f"{group}={option!r}: no such option")
    cause: BaseException | None = err
    while cause is not None and getattr(cause, "full_key", None) is None:
        cause = cause.__cause__
    if cause is None:
        return ConfigError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    key = f"{prefix}.{cause.full_key}" if prefix else str(cause.full_key)
    owner = getattr(cause, "object_type", None)
    value = getattr(cause, "value", None)
    if value is None:
        value = _override_value(key, overrides)
    shown = "" if value is _MISSING else f"={value!r}"
    leaf = key.rpartition(".")[2]
    known = getattr(owner, "__dataclass_fields__", {}) if is_dataclass(owner) else {}
    if isinstance(owner, type) and issubclass(owner, AttnSettings) and leaf not in known:
        variant = owner.__dataclass_fields__["variant"].default
        if variant in ATTN_SETTINGS:
            return ConfigError(f"{key}{shown}: attn={variant} has no such knob; its knobs: "
                               f"{', '.join(owner.knobs())}")
    if known and leaf not in known:
        return ConfigError(f"{key}{shown}: no such key; {owner.__name__} has {', '.join(known)}")
    if leaf in known:
        return ConfigError(f"{key}{shown}: must be {known[leaf].type}")
    first = str(cause).strip().splitlines()[0]
    return ConfigError(f"{key}{shown}: {first}")


def _override_value(key: str, overrides: Sequence[str]) -> Any:
    for item in overrides:
        name, sep, value = item.lstrip("+~").partition("=")
        if sep and name == key:
            return value
    return _MISSING

"""The command line checked before Hydra runs it, so that a bad group option, key or type exits with
status 2 and one line, as a bad value does (:func:`diffpali.jobs.run_job`), instead of Hydra's
multi-line report.

The check composes the config the command line names with Hydra's compose API; a sweep (``-m``) is
composed once with every swept key at its first value and once more per other value of it. Values
Hydra expands itself (``glob(...)``) and ``hydra.*`` keys are left to Hydra; so is any command line
with flags other than ``-m``/``--multirun``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from .errors import one_line
from .rules import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")


def command_line_configs(argv: Sequence[str]) -> list[list[str]] | None:
    """The override lists to compose for ``argv`` (one per swept value), or None to leave it all to Hydra."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in argv):
        return None  # --help, --cfg job, --config-name ...: Hydra's own
    items = [arg for arg in argv if arg not in MULTIRUN_FLAGS]
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except Exception:  # a malformed override: Hydra says where it fails to parse
        return None
    fixed: list[str] = []
    swept: list[tuple[str, list[str]]] = []
    for item, override in zip(items, parsed):
        if override.key_or_group.startswith("hydra"):
            continue
        if not override.is_sweep_override():
            fixed.append(item)
        elif override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP":
            swept.append((override.get_key_element(), list(override.sweep_string_iterator())))
    first = [f"{key}={values[0]}" for key, values in swept]
    combos = [fixed + first]
    for i, (key, values) in enumerate(swept):
        for value in values[1:]:
            combos.append(fixed + first[:i] + [f"{key}={value}"] + first[i + 1:])
    return combos


def check_command_line(config_dir: Path, config_name: str, argv: Sequence[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides; a config error exits 2 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    combos = command_line_configs(argv)
    for overrides in combos or ():
        try:
            with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
                compose(config_name, overrides=overrides)
        except Exception as err:  # Hydra's and OmegaConf's errors, read by one_line
            error = one_line(err, overrides)
            print(f"config error: {error}", file=sys.stderr)
            sys.exit(2)


__all__ = ["ConfigError", "check_command_line", "command_line_configs"]

"""Checks that the files diffpali loads are whole, so a damaged one is named with what to do next.

A truncated or corrupt adapter, checkpoint or base model would otherwise surface as a library's
error (``SafetensorError: incomplete metadata``, ``PytorchStreamReader failed ...``, a JSON parse
error) deep in a traceback. The checks read headers only (safetensors metadata, JSON), so they cost
milliseconds, and run before the expensive loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open


class UnreadableFileError(ValueError):
    """A file diffpali needs is missing, truncated or corrupt. The message names the file, what is
    wrong with it and what to do next; ``train.py``/``evaluate.py`` print it as one line."""

    def __init__(self, path: str | Path, problem: str, remedy: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{path} cannot be read: {problem}. {remedy}")


def describe_error(err: BaseException) -> str:
    """``Type: first sentence`` of a library's error (torch's add paragraphs of advice)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (header, offsets, file length), or None if it is whole."""
    if not path.is_file():
        return "the file is missing"
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # SafetensorError, OSError: the file is cut short or not safetensors at all
        return f"truncated or corrupt ({describe_error(err)})"
    return None


def json_problem(path: Path) -> str | None:
    """What is wrong with a JSON file, or None if it parses."""
    if not path.is_file():
        return "the file is missing"
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"truncated or corrupt ({describe_error(err)})"
    return None


def read_json(path: Path, remedy: str) -> Any:
    """``json.loads`` of a file, or :class:`UnreadableFileError` naming it."""
    problem = json_problem(path)
    if problem:
        raise UnreadableFileError(path, problem, remedy)
    return json.loads(path.read_text())


def check_files(directory: Path, remedy: str, required: tuple[str, ...] = ()) -> None:
    """Every ``*.safetensors`` and ``*.json`` file in ``directory`` (and each of ``required``) is whole."""
    directory = Path(directory)
    names = sorted({p.name for p in directory.glob("*.safetensors")} | {p.name for p in directory.glob("*.json")}
                   | set(required))
    for name in names:
        path = directory / name
        problem = safetensors_problem(path) if name.endswith(".safetensors") else json_problem(path)
        if problem:
            raise UnreadableFileError(path, problem, remedy)

"""Free-form replies to MMNeedle prompts, parsed strictly: a reply is a cell, "absent", or invalid.

Tolerated: case, surrounding whitespace, a trailing period or other closing punctuation, brackets
around the triple, and commas and/or spaces between its numbers. Anything else ("the top left",
"1, 2", "-1, 1, 1") is invalid and scores as wrong; the count of invalid replies is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_TRIPLE = re.compile(r"^[\(\[]?\s*(\d+)\s*(?:,\s*|\s+)(\d+)\s*(?:,\s*|\s+)(\d+)\s*[\)\]]?$")
_EDGE_PUNCTUATION = " \t\n.!?;:'\"`"


@dataclass(frozen=True)
class NeedleReply:
    """``kind``: cell (with ``cell`` = (index, row, column) as written), absent ("-1"), or invalid."""

    kind: str
    cell: Optional[tuple[int, int, int]] = None


def parse_needle_reply(text: str) -> NeedleReply:
    """Parse an answer to the official prompt ("index, row, column" or "-1")."""
    cleaned = text.strip().strip(_EDGE_PUNCTUATION)
    if cleaned == "-1":
        return NeedleReply("absent")
    match = _TRIPLE.match(cleaned)
    if match:
        return NeedleReply("cell", (int(match.group(1)), int(match.group(2)), int(match.group(3))))
    return NeedleReply("invalid")


def parse_side(text: str, options: tuple[str, str]) -> Optional[str]:
    """The one word of ``options`` the reply is ("Top.", " bottom", "the left" -> it), else None."""
    cleaned = text.strip().strip(_EDGE_PUNCTUATION).lower()
    if cleaned.startswith("the "):
        cleaned = cleaned[4:].strip()
    return cleaned if cleaned in options else None

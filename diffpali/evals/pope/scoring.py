"""POPE's answer parsing and its five metrics: one scorer for every model.

A reply is parsed with the VQA scorer's own normalisation (:func:`diffpali.metrics.normalize_answer`:
case, surrounding whitespace, punctuation, a trailing period), then must be exactly ``yes`` or
``no``; anything else ("nope", "yes no", "yes, there is", "") is ``other``. So a reply counts as
"yes" here exactly when the VQA evaluation would match it to the answer "yes".

"yes" is the positive class, as in POPE. An ``other`` reply is never a "yes": on a present object it
is a false negative, on an absent one it is neither a false positive nor correct. Every ratio whose
denominator is zero is 0.0 (a model that never says "yes" has precision 0, not a gap in the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ...metrics import normalize_answer

YES, NO, OTHER = "yes", "no", "other"
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")  #: the five POPE reports


def parse_yes_no(reply: str) -> str:
    """``yes``, ``no`` or ``other`` for a free-form reply (see the module docstring for the rule)."""
    normalized = normalize_answer(reply)
    return normalized if normalized in (YES, NO) else OTHER


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class PopeScores:
    """Counts of one set of probes and the metrics derived from them."""

    tp: int  #: present, answered yes
    fp: int  #: absent, answered yes (a hallucination)
    tn: int  #: absent, answered no
    fn: int  #: present, answered no or other
    other_absent: int = 0  #: absent, answered neither yes nor no (wrong, but not a hallucination)
    other_present: int = 0  #: present, answered neither yes nor no (already counted in fn)

    @property
    def probes(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.other_absent

    @property
    def present(self) -> int:
        return self.tp + self.fn

    @property
    def absent(self) -> int:
        return self.fp + self.tn + self.other_absent

    @property
    def other(self) -> int:
        return self.other_absent + self.other_present

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.probes)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def yes_ratio(self) -> float:
        return _ratio(self.tp + self.fp, self.probes)

    def as_metrics(self, prefix: str) -> dict[str, float | int]:
        """``{prefix}accuracy`` ... ``{prefix}yes_ratio``, then the counts behind them."""
        out: dict[str, float | int] = {f"{prefix}{name}": getattr(self, name) for name in METRICS}
        for name in ("probes", "present", "absent", "other", "tp", "fp", "tn", "fn"):
            out[f"{prefix}{name}"] = getattr(self, name)
        return out


def score_pope(truths: Sequence[str], replies: Sequence[str]) -> PopeScores:
    """Score raw ``replies`` against ``truths`` (each ``yes``: object present, or ``no``: absent)."""
    if len(truths) != len(replies):
        raise ValueError(f"{len(truths)} truths but {len(replies)} replies: they must pair up")
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "other_absent": 0, "other_present": 0}
    for truth, reply in zip(truths, replies):
        if truth not in (YES, NO):
            raise ValueError(f"truth {truth!r}: must be 'yes' (present) or 'no' (absent)")
        answer = parse_yes_no(reply)
        if truth == YES:
            counts["tp" if answer == YES else "fn"] += 1
            counts["other_present"] += answer == OTHER
        else:
            counts[{YES: "fp", NO: "tn", OTHER: "other_absent"}[answer]] += 1
    return PopeScores(**counts)

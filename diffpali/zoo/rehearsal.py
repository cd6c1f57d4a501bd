"""Rehearsal (``data.rehearsal``): a fine-tune's training split mixed with the tiny base's own stage-1 examples.

easy-vqa never asks where anything is, so a LoRA fine-tune on it alone may forget what stage 1 taught the
base (where, needle, detect, count, ...). :class:`RehearsalExamples` appends to the training split as
many stage-1 examples as make them ``share`` of the whole; the resumable sampler shuffles the two together.

Only examples the build trained on are replayed, read back from its own stream (:func:`stage1_mixture`:
the build's seed, weights and (step, index) addressing), so nothing enters that the base has not
already seen: no easy-vqa test or validation image, no evaluation scene. Rehearsal example ``j`` is
the build's example (step, ``j % batch_size``) with step counted back from stage 1's last one
(:func:`rehearsal_address`): the last steps draw every task at ``stage1.weights`` on full grids,
while the first steps are the caption-heavy opening and the early curriculum's near-empty grids.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import TinySpec
from ..data.schema import RecordRef
from .mixture import stage1_mixture


def rehearsal_address(j: int, spec: TinySpec) -> tuple[int, int]:
    """(step, index) in stage 1 of rehearsal example ``j``: from the last step back, over the steps drawn at
    ``stage1.weights`` (the opening's are left out unless there are no others), wrapping around."""
    stage1 = spec.stage1
    if stage1.steps <= 0:
        raise ValueError("model.tiny.stage1.steps=0: the base has no stage-1 examples to replay")
    first = stage1.opening_steps if stage1.opening and stage1.opening_steps < stage1.steps else 0
    k, index = divmod(j, stage1.batch_size)
    return stage1.steps - 1 - k % (stage1.steps - first), index


class RehearsalExamples(torch.utils.data.Dataset):
    """``examples`` (indices ``0 .. len(examples) - 1``) followed by stage-1 examples, ``share`` of the whole.

    Every item has the keys the collator and the training step read (``image``, ``prefix``, ``suffix``,
    ``question_id``, ``ref``) and ``rehearsal`` (bool); a replayed one also has its stage-1 ``task``.
    """

    def __init__(self, examples: Any, spec: TinySpec, share: float):
        if not 0.0 < share < 1.0:
            raise ValueError(f"rehearsal share {share!r}: must be in (0, 1)")
        self.examples, self.spec, self.share = examples, spec, share
        self.mixture = stage1_mixture(spec)
        self.size = round(len(examples) / (1.0 - share))

    def __len__(self) -> int:
        return self.size

    @property
    def replayed(self) -> int:
        """How many of the items are stage-1 examples."""
        return self.size - len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.size:
            raise IndexError(f"rehearsal index {i} out of range({self.size})")
        if i < len(self.examples):
            return {**self.examples[i], "rehearsal": False}
        step, index = rehearsal_address(i - len(self.examples), self.spec)
        drawn = self.mixture.example(step, index)
        question_id = f"stage1/{step}/{index}"
        # The drawn scene and the match target stay out: the collator keeps every other key as metadata.
        return {"image": drawn["image"], "prefix": drawn["prefix"], "suffix": drawn["suffix"], "task": drawn["task"],
                "source": drawn.get("source", "drawn"), "question_id": question_id, "rehearsal": True,
                "ref": RecordRef("stage1", "rehearsal", i, question_id)}

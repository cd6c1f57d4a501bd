"""The multitask mixture the tiny base is pretrained on (TRAIN images only, validation held out).

As PaliGemma's own pretraining mixes tasks, so does the tiny base's, so that the later benchmarks
(MMNeedle, POPE) test a model that has learnt to caption and to locate, not chance:

- ``vqa``      "answer en {question}"          -> easy-vqa answer
- ``caption``  "caption en"                    -> "a {color} {shape}"
- ``where``    "answer en " + the paper's "Top or Bottom?" / "Left or Right?" on a 2x2 grid -> top|bottom|left|right
- ``needle``   "answer en " + MMNeedle's official prompt on a 2x2 grid -> "1, row, col", or "-1" when absent

Stage 1 of the build uses VQA only, stage 2 the whole mixture (weights below). Grids are stitched
from TRAIN images; evaluate.py's haystacks come from TEST images only. Each batch holds one task,
drawn by the stage's weights from a generator seeded by (seed, batch);
example ``i`` is drawn from a generator seeded by (seed, i). The stream is the same whatever the
number of data-loader workers. One task per batch because the prompts differ threefold in length
(MMNeedle's instruction is ~50 tokens, a VQA prompt ~10): mixed batches padded to the longest spent
most of the pretraining compute on padding.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from PIL import Image

from ..data import easy_vqa
from ..data.grids import LEFT_RIGHT_PROMPT, NEEDLE_PROMPT, TOP_BOTTOM_PROMPT, needle_answer, stitch
from ..needle.sources import caption_of

#: Stage 1 (VQA only). On a CPU, with 20% of batches on captions and grid tasks from step 0, the
#: tiny model stayed image-blind (answering from the question alone, 0.65) for 1500 steps, while VQA
#: alone left that plateau by step 600; so the other tasks come in stage 2, once the image is used.
STAGE1_WEIGHTS = {"vqa": 1.0, "caption": 0.0, "where": 0.0, "needle": 0.0}
#: Stage 2: keep the questions (so VQA is not forgotten) and teach captions and locating a caption.
STAGE2_WEIGHTS = {"vqa": 0.4, "caption": 0.1, "where": 0.25, "needle": 0.25}
#: Grid questions are asked through the VQA prompt, as evaluate.py asks them after fine-tuning.
QUESTION_PROMPT = "answer en {question}"
GRID_N = 2


class PretrainMixture(torch.utils.data.Dataset):
    """``length`` examples of the mixture, each an (image, prefix, suffix, task) dict."""

    def __init__(
        self,
        length: int,
        seed: int,
        batch_size: int,
        cell_size: int,
        val_fraction: float = 0.1,
        weights: dict[str, float] | None = None,
    ):
        self.length = length
        self.weights = dict(weights or STAGE1_WEIGHTS)
        self.seed = seed
        self.batch_size = batch_size
        self.cell_size = cell_size
        train_ids = set(easy_vqa.split_image_ids("train", val_fraction))
        raw = easy_vqa._raw("train")
        self.vqa = [(q, a, i) for q, a, i in zip(raw.questions, raw.answers, raw.image_ids) if i in train_ids]
        labels = easy_vqa.image_labels("train")
        self.labelled = sorted(i for i in labels if i in train_ids)
        self.caption = {i: caption_of(*labels[i]) for i in self.labelled}
        self.all_captions = sorted(set(self.caption.values()))
        self._images: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return self.length

    def image(self, image_id: int) -> Image.Image:
        if image_id not in self._images:
            with Image.open(easy_vqa.image_path("train", image_id)) as im:
                self._images[image_id] = im.convert("RGB")
        return self._images[image_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = self.task_of_batch(index // self.batch_size)
        rng = random.Random(self.seed * 1_000_003 + index)
        if task == "vqa":
            question, answer, image_id = self.vqa[rng.randrange(len(self.vqa))]
            return {"image": self.image(image_id), "prefix": f"answer en {question}", "suffix": answer, "task": task}
        if task == "caption":
            image_id = rng.choice(self.labelled)
            return {"image": self.image(image_id), "prefix": "caption en", "suffix": self.caption[image_id], "task": task}
        grid, captions = self._grid(rng)
        if task == "where":
            cell = rng.randrange(GRID_N * GRID_N)
            row, col = divmod(cell, GRID_N)
            if rng.random() < 0.5:
                question, suffix = TOP_BOTTOM_PROMPT.format(caption=captions[cell]), ("top" if row == 0 else "bottom")
            else:
                question, suffix = LEFT_RIGHT_PROMPT.format(caption=captions[cell]), ("left" if col == 0 else "right")
            return {"image": grid, "prefix": QUESTION_PROMPT.format(question=question), "suffix": suffix, "task": task}
        if rng.random() < 0.5:  # negative: a caption from outside the haystack
            caption = rng.choice([c for c in self.all_captions if c not in captions])
            suffix = "-1"
        else:
            cell = rng.randrange(GRID_N * GRID_N)
            caption = captions[cell]
            suffix = needle_answer(1, cell // GRID_N + 1, cell % GRID_N + 1)
        prefix = QUESTION_PROMPT.format(question=NEEDLE_PROMPT.format(M=1, N=GRID_N, caption=caption))
        return {"image": grid, "prefix": prefix, "suffix": suffix, "task": task}

    def task_of_batch(self, batch: int) -> str:
        rng = random.Random(f"{self.seed}/batch/{batch}")
        return rng.choices(list(self.weights), weights=list(self.weights.values()))[0]

    def _grid(self, rng: random.Random) -> tuple[Image.Image, list[str]]:
        """Four train images with four different captions, stitched row-major."""
        chosen: list[int] = []
        seen: set[str] = set()
        while len(chosen) < GRID_N * GRID_N:
            image_id = rng.choice(self.labelled)
            if self.caption[image_id] not in seen:
                chosen.append(image_id)
                seen.add(self.caption[image_id])
        cells = [self.image(i) for i in chosen]
        return stitch(cells, GRID_N, self.cell_size), [self.caption[i] for i in chosen]

    def corpus(self) -> list[str]:
        """Every prefix and suffix the mixture can produce (the tokenizer's training text)."""
        texts = [f"answer en {q}" for q, _, _ in self.vqa] + [a for _, a, _ in self.vqa]
        texts += ["caption en", "top", "bottom", "left", "right", "-1"]
        for caption in self.all_captions:
            texts += [caption, TOP_BOTTOM_PROMPT.format(caption=caption), LEFT_RIGHT_PROMPT.format(caption=caption)]
            texts.append(NEEDLE_PROMPT.format(M=1, N=GRID_N, caption=caption))
        texts += [needle_answer(1, r, c) for r in (1, 2) for c in (1, 2)]
        return texts

"""Stage 1's multimodal mixture: the tasks a tiny PaliGemma learns before any benchmark sees it.

Every example is ``{"image", "prefix", "suffix", "task", "match"}`` plus, for inspection, the drawn
``scene`` or the easy-vqa ``source`` image. ``match`` marks, per image
token, whether the token lies in the cell of the object the prompt names (a dense, training-only
target for the binding of words to image regions; None where a prompt names no single object).

Tasks (each prompt in the wording the evaluations use, each image drawn or from easy-vqa TRAIN):

- ``vqa``      easy-vqa TRAIN questions, yes/no balanced within each question template;
- ``vqa_drawn`` the same templates asked about a drawn easy-vqa-like tile, balanced likewise;
- ``caption``  ``caption en`` -> "a red circle and a blue triangle" (objects in reading order);
- ``exist``    easy-vqa's yes/no phrasings, negated ones too, about a colour, a shape or both on a drawn grid;
- ``count``    "how many {colour} shapes are there?" and the like, on a drawn grid;
- ``where``    the paper's "Caption: ... Where is the caption? Top or Bottom?" (or Left or Right) on a 2 x 2 grid;
- ``needle``   MMNeedle's instruction, M = 1, N = 2..4, half the captions absent (answer -1);
- ``detect``   PaliGemma's ``detect red circle`` -> ``<locY0><locX0><locY1><locX1> red circle``.

No easy-vqa test image and no stitched easy-vqa image enters any task: the benchmarks measure transfer.
Example ``i`` depends only on (seed, i) and the step it belongs to, so a stream can be resumed at any step.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from PIL import Image

from ..config import STAGE1_TASKS, STAGE1_VAL_FRACTION, TinySpec
from ..data import easy_vqa
from ..data.grids import LEFT_RIGHT_PROMPT, NEEDLE_PROMPT, TOP_BOTTOM_PROMPT, needle_answer
from ..scenes import COLORS, SHAPES, draw_scene, sample_objects
from ..scenes.scene import ALL_LABELS, Scene

QUESTION_PROMPT = "answer en {question}"
TASKS = STAGE1_TASKS
#: The answer formats taught, as reported in build_info.json.
FORMATS = {
    "where": "top | bottom | left | right (the paper's two MMNeedle questions, 2x2 grids)",
    "needle": "'1, row, column' or '-1' (MMNeedle's official instruction, M=1, N=2..4)",
    "detect": "<locY0><locX0><locY1><locX1> {colour} {shape} (PaliGemma's detection format, 1024 bins)",
    "vqa": "easy-vqa's 13 answers; yes/no balanced per question template",
    "count": "a number in digits",
    "caption": "'a {colour} {shape}' joined by ' and ', in reading order",
}
LOC_BINS = 1024


def template_of(question: str) -> str:
    """An easy-vqa question with its colour and shape words replaced by ``{color}`` and ``{shape}``."""
    for color in COLORS:
        question = re.sub(rf"\b{color}\b", "{color}", question)
    for shape in SHAPES:
        question = re.sub(rf"\b{shape}\b", "{shape}", question)
    return question


def is_negated(template: str) -> bool:
    return " not " in template or template.startswith("is no ")


def named_by(obj, color: str, shape: str, by_color: bool, by_shape: bool) -> bool:
    """Whether ``obj`` is what a question asks about that names ``color`` (if ``by_color``) and ``shape``
    (if ``by_shape``)."""
    return (not by_color or obj.color == color) and (not by_shape or obj.shape == shape)


def loc_tokens(box: tuple[float, float, float, float], size: int) -> str:
    """PaliGemma's box format: y0, x0, y1, x1 each as ``<locNNNN>``, normalised to 1024 bins."""
    x0, y0, x1, y1 = box

    def tok(v: float) -> str:
        return f"<loc{min(LOC_BINS - 1, max(0, round(v / size * (LOC_BINS - 1)))):04d}>"

    return f"{tok(y0)}{tok(x0)}{tok(y1)}{tok(x1)}"


@dataclass
class Curriculum:
    """How many objects a grid scene holds at a given step: few early (finding one object among
    blanks is learnt first), up to a full grid from ``full_at`` (a fraction of the stage) on."""

    steps: int
    full_at: float = 0.4

    def max_objects(self, step: int, cells: int) -> int:
        progress = min(1.0, step / max(1.0, self.full_at * self.steps))
        return max(1, min(cells, 1 + round(progress * (cells - 1))))


#: Tasks whose prompts are so long (MMNeedle's instruction: ~80 tokens) that they get batches of their own.
LONG_TASKS = ("needle",)


class Stage1Mixture:
    """The mixture as an indexable stream: ``example(step, i)`` is a pure function of its arguments.

    A batch is either all of one long task (drawn with that task's weight) or a mix of the short
    ones, each example drawing its own task: mixed batches keep every step's gradient a blend of
    tasks, and no short prompt is padded to a long one. For the first ``opening_steps`` the
    ``opening`` weights apply: captions first, which need no question to be read and teach the
    decoder to read the image within a few hundred steps (answering questions from scratch leaves
    it image-blind for thousands).
    """

    def __init__(self, weights: dict[str, float], seed: int, steps: int, image_size: int, tokens_per_side: int,
                 val_fraction: float = STAGE1_VAL_FRACTION, opening: dict[str, float] | None = None,
                 opening_steps: int = 0):
        unknown = (set(weights) | set(opening or {})) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown stage-1 tasks {sorted(unknown)}: allowed {', '.join(TASKS)}")
        self.weights = {t: w for t, w in weights.items() if w > 0}
        self.opening = {t: w for t, w in (opening or {}).items() if w > 0}
        self.opening_steps = opening_steps if self.opening else 0
        self.seed = seed
        self.image_size = image_size
        self.per_side = tokens_per_side
        self.curriculum = Curriculum(steps)
        self.val_fraction = val_fraction
        self._images: dict[int, Image.Image] = {}

    # -- easy-vqa TRAIN, grouped for balanced sampling --------------------------------------------
    @cached_property
    def _train_questions(self) -> dict[str, dict[str, list[tuple[str, int]]]]:
        """template -> answer -> [(question, image id)], TRAIN images only (validation held out)."""
        raw = easy_vqa._raw("train")
        keep = set(easy_vqa.split_image_ids("train", self.val_fraction))
        grouped: dict[str, dict[str, list[tuple[str, int]]]] = defaultdict(lambda: defaultdict(list))
        for question, answer, image_id in zip(raw.questions, raw.answers, raw.image_ids):
            if image_id in keep:
                grouped[template_of(question)][answer].append((question, image_id))
        return {t: dict(a) for t, a in sorted(grouped.items())}

    @cached_property
    def templates(self) -> list[str]:
        return list(self._train_questions)

    def _train_image(self, image_id: int) -> Image.Image:
        if image_id not in self._images:
            with Image.open(easy_vqa.image_path("train", image_id)) as opened:
                self._images[image_id] = opened.convert("RGB")
        return self._images[image_id]

    # -- the stream -----------------------------------------------------------------------------
    def weights_at(self, step: int) -> dict[str, float]:
        return self.opening if step < self.opening_steps else self.weights

    def long_task_of_batch(self, step: int) -> str | None:
        """The long task this whole batch asks, or None for a batch of mixed short tasks."""
        weights = self.weights_at(step)
        draw = random.Random(f"{self.seed}/batch/{step}").random() * sum(weights.values())
        for task in LONG_TASKS:
            if task in weights:
                if draw < weights[task]:
                    return task
                draw -= weights[task]
        return None

    def task_of(self, step: int, index: int) -> str:
        long_task = self.long_task_of_batch(step)
        if long_task is not None:
            return long_task
        short = {t: w for t, w in self.weights_at(step).items() if t not in LONG_TASKS}
        rng = random.Random(f"{self.seed}/task/{step}/{index}")
        return rng.choices(list(short), weights=list(short.values()))[0]

    def example(self, step: int, index: int) -> dict[str, Any]:
        task = self.task_of(step, index)
        rng = random.Random(f"{self.seed}/{step}/{index}")
        example = getattr(self, f"_{task}")(rng, step)
        example.setdefault("match", None)
        return {**example, "task": task}

    def batch(self, step: int, size: int) -> list[dict[str, Any]]:
        return [self.example(step, i) for i in range(size)]

    # -- helpers ----------------------------------------------------------------------------------
    def _grid_scene(self, rng: random.Random, step: int, grid: int, at_least: int = 1) -> Scene:
        cells = grid * grid
        count = rng.randint(min(at_least, cells), max(at_least, self.curriculum.max_objects(step, cells)))
        return draw_scene(rng, grid, sample_objects(rng, grid, count), self.image_size)

    def _match(self, scene: Scene, cell: tuple[int, int] | None) -> list[float]:
        return [float(c == cell) for c in scene.token_cells(self.per_side)]

    def _ask(self, question: str) -> str:
        return QUESTION_PROMPT.format(question=question)

    # -- tasks ----------------------------------------------------------------------------------
    def _vqa(self, rng: random.Random, step: int) -> dict[str, Any]:
        template = rng.choice(self.templates)
        by_answer = self._train_questions[template]
        answers = sorted(by_answer)
        if set(answers) <= {"yes", "no"}:
            answer = rng.choice(answers)  # yes and no equally often, whatever the template's skew
        else:
            answer = rng.choices(answers, weights=[len(by_answer[a]) for a in answers])[0]
        question, image_id = rng.choice(by_answer[answer])
        example = {"image": self._train_image(image_id), "prefix": self._ask(question), "suffix": answer,
                   "source": f"easy_vqa/train/{image_id}"}
        if answer in ("yes", "no"):  # a named object: is it the one in the image (every token of its one cell)?
            example["match"] = [float((answer == "yes") != is_negated(template))] * self.per_side**2
        return example

    def _vqa_drawn(self, rng: random.Random, step: int) -> dict[str, Any]:
        shape, color = rng.choice(ALL_LABELS)
        scene = draw_scene(rng, 1, {(0, 0): (shape, color)}, self.image_size)
        template = rng.choice(self.templates)
        asks_color, asks_shape = "{color}" in template, "{shape}" in template
        if template.startswith("what"):  # "what color ...", "... the color of ...": a colour; else a shape
            answer = color if "color" in template.replace("{color}", "") else shape
            question = template.format(color=color, shape=shape)
        else:
            present = rng.random() < 0.5
            named_color = color if present or not asks_color else rng.choice([c for c in COLORS if c != color])
            named_shape = shape if present or not asks_shape else rng.choice([s for s in SHAPES if s != shape])
            question = template.format(color=named_color, shape=named_shape)
            answer = "yes" if present != is_negated(template) else "no"
            return {"image": scene.image, "prefix": self._ask(question), "suffix": answer, "scene": scene,
                    "match": self._match(scene, (0, 0) if present else None)}
        return {"image": scene.image, "prefix": self._ask(question), "suffix": answer, "scene": scene}

    def _caption(self, rng: random.Random, step: int) -> dict[str, Any]:
        grid = rng.choice((1, 2))
        scene = self._grid_scene(rng, step, grid)
        return {"image": scene.image, "prefix": "caption en", "suffix": " and ".join(o.caption for o in scene.objects),
                "scene": scene}

    def _exist(self, rng: random.Random, step: int) -> dict[str, Any]:
        """easy-vqa's yes/no phrasings (negated ones too) about a drawn grid, half about something there.

        The named thing is a colour, a shape, or both ("is there not a red circle?"); the match target
        marks every cell holding it, whatever the negation: the answer is that, flipped by "not"/"no".
        """
        scene = self._grid_scene(rng, step, rng.choice((1, 2, 3, 4)))
        template = rng.choice([t for t in self.templates if not t.startswith("what")])
        if rng.random() < 1 / 3:  # a whole object: "{color} shape" / "{shape}" becomes "{color} {shape}"
            template = template.replace("{color} shape", "{color} {shape}").replace("a {shape}", "a {color} {shape}")
        wants_color, wants_shape = "{color}" in template, "{shape}" in template

        def named(obj) -> bool:
            return named_by(obj, color, shape, wants_color, wants_shape)

        if rng.random() < 0.5:
            target = rng.choice(scene.objects)
            color, shape = target.color, target.shape
        else:  # something no object in the scene is
            absent = [(s, c) for s, c in ALL_LABELS if not any(named_by(o, c, s, wants_color, wants_shape)
                                                                   for o in scene.objects)]
            shape, color = rng.choice(absent) if absent else (scene.objects[0].shape, scene.objects[0].color)
        present = any(named(o) for o in scene.objects)
        answer = "yes" if present != is_negated(template) else "no"
        cells = {o.cell for o in scene.objects if named(o)}
        match = [float(c in cells) for c in scene.token_cells(self.per_side)]
        return {"image": scene.image, "prefix": self._ask(template.format(color=color, shape=shape)), "suffix": answer,
                "match": match, "scene": scene}

    def _count(self, rng: random.Random, step: int) -> dict[str, Any]:
        scene = self._grid_scene(rng, step, rng.choice((2, 3, 4)), at_least=0)
        kind = rng.random()
        if kind < 1 / 3:
            question, count = "how many shapes are there?", len(scene.objects)
        elif kind < 2 / 3:
            color = rng.choice(list(COLORS))
            question, count = f"how many {color} shapes are there?", sum(o.color == color for o in scene.objects)
        else:
            shape = rng.choice(SHAPES)
            question, count = f"how many {shape}s are there?", sum(o.shape == shape for o in scene.objects)
        return {"image": scene.image, "prefix": self._ask(question), "suffix": str(count), "scene": scene}

    def _where(self, rng: random.Random, step: int) -> dict[str, Any]:
        scene = self._grid_scene(rng, step, 2)
        target = rng.choice(scene.objects)
        row, col = target.cell
        if rng.random() < 0.5:
            question, answer = TOP_BOTTOM_PROMPT.format(caption=target.caption), ("top" if row == 0 else "bottom")
        else:
            question, answer = LEFT_RIGHT_PROMPT.format(caption=target.caption), ("left" if col == 0 else "right")
        return {"image": scene.image, "prefix": self._ask(question), "suffix": answer,
                "match": self._match(scene, target.cell), "scene": scene}

    def _needle(self, rng: random.Random, step: int) -> dict[str, Any]:
        grid = rng.choice((2, 3, 4))
        scene = self._grid_scene(rng, step, grid)
        if rng.random() < 0.5 and len(scene.objects) < len(ALL_LABELS):
            shown = {(o.shape, o.color) for o in scene.objects}
            shape, color = rng.choice([label for label in ALL_LABELS if label not in shown])
            caption, answer, cell = f"a {color} {shape}", "-1", None
        else:
            target = rng.choice(scene.objects)
            caption, cell = target.caption, target.cell
            answer = needle_answer(1, cell[0] + 1, cell[1] + 1)
        question = NEEDLE_PROMPT.format(M=1, N=grid, caption=caption)
        return {"image": scene.image, "prefix": self._ask(question), "suffix": answer,
                "match": self._match(scene, cell), "scene": scene}

    def _detect(self, rng: random.Random, step: int) -> dict[str, Any]:
        scene = self._grid_scene(rng, step, rng.choice((1, 2, 3, 4)))
        target = rng.choice(scene.objects)
        return {"image": scene.image, "prefix": f"detect {target.name}",
                "suffix": f"{loc_tokens(target.box, scene.size)} {target.name}",
                "match": self._match(scene, target.cell), "scene": scene}

    # -- the tokenizer's training text ----------------------------------------------------------
    def corpus(self) -> list[str]:
        """The mixture's texts, roughly as often as it uses them (the tokenizer's training text):
        every TRAIN question and answer, and for each label the drawn tasks' prompts and replies."""
        pairs = [(self._ask(question), answer) for by_answer in self._train_questions.values()
                 for answer, asked in by_answer.items() for question, _ in asked]
        texts = [text for pair in pairs for text in pair]
        texts += ["caption en", "top", "bottom", "left", "right", "-1", "yes", "no"] * 200
        for shape, color in ALL_LABELS:
            caption = f"a {color} {shape}"
            texts += [caption, self._ask(TOP_BOTTOM_PROMPT.format(caption=caption)),
                      self._ask(LEFT_RIGHT_PROMPT.format(caption=caption)), f"detect {color} {shape}",
                      f"{color} {shape}", self._ask(f"is there a {color} {shape}?"),
                      self._ask(f"how many {color} shapes are there?"), self._ask(f"how many {shape}s are there?")] * 20
            texts += [self._ask(NEEDLE_PROMPT.format(M=m, N=n, caption=caption)) for m in (1, 2) for n in (2, 3, 4)] * 5
        texts += [needle_answer(m, r, c) for m in (1, 2) for r in range(1, 5) for c in range(1, 5)] * 20
        texts += [str(n) for n in range(17)] * 50
        return texts


def stage1_mixture(spec: TinySpec) -> Stage1Mixture:
    """The stage-1 stream the build of ``spec`` trains on (and rehearsal replays)."""
    per_side = spec.vision.image_size // spec.vision.patch_size
    return Stage1Mixture(spec.stage1.weights, spec.seed, spec.stage1.steps, spec.vision.image_size, per_side,
                         opening=spec.stage1.opening, opening_steps=spec.stage1.opening_steps)

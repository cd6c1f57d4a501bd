"""The two pretraining stages of the tiny base, as PaliGemma is built, in miniature.

- Stage 0 trains the SigLIP tower alone on drawn scenes, with per-token label heads: each image
  token names the shape and colour in its grid cell (or "blank") and its own patch row and column.
  The heads are thrown away afterwards; the tower keeps what they forced it to encode.
- Stage 1 trains the projector and the Gemma decoder on the multimodal mixture (:mod:`.tasks`),
  the tower frozen. A training-only *match head* reads the image tokens after decoder layer
  ``match_layer`` and predicts which of them lie in the cell of the object the prompt names:
  dense supervision of binding words to places, which the answer alone gives too sparsely for a
  CPU budget.

Both stages are step functions over a seeded stream, checkpointed by :class:`StageRunner`, so a
killed build resumes at its last checkpoint and ends with the same weights.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..scenes import COLORS, SHAPES, draw_scene, sample_objects
from .mixture import Stage1Mixture

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------
class TokenCache:
    """Token ids of ``<image>* <bos> prefix \\n [suffix <eos>]``, from the real processor, once per text.

    Stage 1 asks a few thousand distinct prompts millions of times; tokenising each once keeps the
    processor's exact layout (and its ``token_type_ids``) at no per-step cost.
    """

    def __init__(self, processor: Any):
        self.processor = processor
        self._blank = Image.new("RGB", (8, 8))
        self._cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def __call__(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]:
        key = (prefix, suffix)
        if key not in self._cache:
            out = self.processor(text=self.processor.image_token + prefix, images=self._blank, suffix=suffix,
                                 return_tensors="pt")
            self._cache[key] = (out["input_ids"][0].tolist(), out["token_type_ids"][0].tolist())
        return self._cache[key]


def collate_stage1(examples: list[dict[str, Any]], tokens: TokenCache, image_tokens: int) -> dict[str, torch.Tensor]:
    """Right-padded training tensors; labels on the suffix only; ``match`` (B, image_tokens) with
    ``match_rows`` (B,) marking the rows that have a match target, or neither when no row has one."""
    encoded = [tokens(e["prefix"], e["suffix"]) for e in examples]
    length = max(len(ids) for ids, _ in encoded)
    pad = tokens.processor.tokenizer.pad_token_id
    input_ids = torch.full((len(examples), length), pad, dtype=torch.long)
    token_type_ids = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    for row, (ids, types) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        token_type_ids[row, : len(ids)] = torch.tensor(types)
        attention_mask[row, : len(ids)] = 1
    labels = input_ids.masked_fill((token_type_ids == 0) | (attention_mask == 0), IGNORE_INDEX)
    pixels = tokens.processor.image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
             "labels": labels, "pixel_values": pixels}
    if any(e.get("match") is not None for e in examples):  # rows without a named object are not scored
        batch["match"] = torch.tensor([e["match"] if e.get("match") is not None else [0.0] * image_tokens
                                       for e in examples])
        batch["match_rows"] = torch.tensor([e.get("match") is not None for e in examples])
    return batch


# ---------------------------------------------------------------------------------------------
# stage 0: the vision tower alone
# ---------------------------------------------------------------------------------------------
class TokenLabelHeads(nn.Module):
    """Linear read-outs of every vision token: its cell's shape and colour (blank is class 0), and its own
    patch row and column."""

    def __init__(self, width: int, per_side: int):
        super().__init__()
        self.shape = nn.Linear(width, 1 + len(SHAPES))
        self.color = nn.Linear(width, 1 + len(COLORS))
        self.row = nn.Linear(width, per_side)
        self.col = nn.Linear(width, per_side)


def stage0_labels(scene, per_side: int) -> tuple[list[int], list[int]]:
    """Per image token: the shape and colour class of the object in its cell (0 = blank cell)."""
    shapes, colors = [], []
    for cell in scene.token_cells(per_side):
        obj = scene.object_in(cell)
        shapes.append(0 if obj is None else 1 + SHAPES.index(obj.shape))
        colors.append(0 if obj is None else 1 + list(COLORS).index(obj.color))
    return shapes, colors


@dataclass
class Stage0Stream:
    """Drawn grids of 1x1 to 4x4 cells, some blank: example ``i`` of step ``s`` depends on (seed, s, i) only."""

    seed: int
    image_size: int
    per_side: int
    grids: tuple[int, ...] = (1, 2, 2, 3, 4)

    def example(self, step: int, index: int):
        rng = random.Random(f"{self.seed}/stage0/{step}/{index}")
        grid = rng.choice(self.grids)
        cells = grid * grid
        count = (1 if rng.random() < 0.9 else 0) if grid == 1 else rng.randint(1, cells)
        return draw_scene(rng, grid, sample_objects(rng, grid, count), self.image_size)

    def batch(self, step: int, size: int, image_processor) -> dict[str, torch.Tensor]:
        scenes = [self.example(step, i) for i in range(size)]
        labels = [stage0_labels(s, self.per_side) for s in scenes]
        pixels = image_processor([s.image for s in scenes], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "shape": torch.tensor([shapes for shapes, _ in labels]),
                "color": torch.tensor([colors for _, colors in labels])}


def stage0_loss(tower: nn.Module, heads: TokenLabelHeads, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    tokens = tower(pixel_values=batch["pixel_values"]).last_hidden_state  # (B, T, width)
    per_side = heads.row.out_features
    position = torch.arange(tokens.shape[1], device=tokens.device)
    rows, cols = (position // per_side).expand(tokens.shape[0], -1), (position % per_side).expand(tokens.shape[0], -1)
    terms = {
        "shape": F.cross_entropy(heads.shape(tokens).flatten(0, 1), batch["shape"].flatten()),
        "color": F.cross_entropy(heads.color(tokens).flatten(0, 1), batch["color"].flatten()),
        "position": F.cross_entropy(heads.row(tokens).flatten(0, 1), rows.flatten())
        + F.cross_entropy(heads.col(tokens).flatten(0, 1), cols.flatten()),
    }
    return sum(terms.values()), {k: v.item() for k, v in terms.items()}


@torch.no_grad()
def stage0_probe(tower: nn.Module, heads: TokenLabelHeads, images: list, labels: list[tuple[str, str]],
                 image_processor, batch_size: int = 128) -> dict[str, float]:
    """Shape and colour of whole single-object images, read by the token heads (mean over tokens, blank excluded)."""
    was_training = tower.training
    tower.eval()
    hits = {"shape": 0, "color": 0}
    for start in range(0, len(images), batch_size):
        pixels = image_processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        tokens = tower(pixel_values=pixels.to(next(tower.parameters()).device)).last_hidden_state
        shape = heads.shape(tokens).mean(1)[:, 1:].argmax(-1)
        color = heads.color(tokens).mean(1)[:, 1:].argmax(-1)
        for k, (c, s) in enumerate(labels[start : start + batch_size]):
            hits["shape"] += int(SHAPES[shape[k]] == s)
            hits["color"] += int(list(COLORS)[color[k]] == c)
    tower.train(was_training)
    return {k: v / len(images) for k, v in hits.items()}


# ---------------------------------------------------------------------------------------------
# stage 1: the whole model on the mixture
# ---------------------------------------------------------------------------------------------
def stage1_loss(model: nn.Module, match_head: nn.Module, batch: dict[str, torch.Tensor], *, match_layer: int,
                image_tokens: int, match_weight: float) -> tuple[torch.Tensor, dict]:
    """The language-model loss on the suffix (lm_head applied at labelled positions only) plus the match loss."""
    want_match = "match" in batch and match_weight > 0
    out = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                      attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
                      output_hidden_states=want_match)
    targets = batch["labels"][:, 1:]
    chosen = targets != IGNORE_INDEX
    logits = model.lm_head(out.last_hidden_state[:, :-1][chosen])
    lm = F.cross_entropy(logits.float(), targets[chosen])
    terms = {"lm": lm.item()}
    if not want_match:
        return lm, terms
    rows = batch["match_rows"]
    image_states = out.hidden_states[match_layer][rows, :image_tokens]  # right-padded: image tokens come first
    match = F.binary_cross_entropy_with_logits(match_head(image_states).squeeze(-1).float(), batch["match"][rows])
    terms["match"] = match.item()
    return lm + match_weight * match, terms


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine from 1 to ``floor`` of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# a resumable stage
# ---------------------------------------------------------------------------------------------
@dataclass
class StageRunner:
    """Runs ``steps`` optimiser steps of one stage, checkpointing every ``every`` steps into ``state_path``.

    The checkpoint holds the trained modules, the optimiser, the step and the loss history; the
    data stream is a function of the step, so resuming replays nothing and skips nothing.
    """

    name: str
    key: str  #: what the stage depends on (a hash); a checkpoint of another key is refused, never resumed
    state_path: Path
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    lr: float
    steps: int
    warmup: int
    every: int = 250
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    seconds: float = 0.0  #: training time over every run of this stage (probes excluded), resumes added up

    def resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn write cannot happen (atomic rename); anything else is named
            raise RuntimeError(f"{self.state_path}: unreadable build checkpoint ({type(err).__name__}); delete it "
                               f"and run the build again to restart {self.name} from step 0") from err
        if state.get("key") != self.key:
            raise RuntimeError(f"{self.state_path}: a checkpoint of {self.name} for another spec "
                               f"(key {state.get('key')}, this build {self.key}); use another work directory, "
                               "or delete it to restart")
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history, self.seconds = state["step"], state["history"], state.get("seconds", 0.0)
        log.info("%s: resumed at step %d/%d from %s", self.name, self.step, self.steps, self.state_path)
        return True

    def save(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        torch.save({"key": self.key, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                    "optimizer": self.optimizer.state_dict(), "step": self.step, "history": self.history,
                    "seconds": self.seconds}, tmp)
        tmp.replace(self.state_path)

    def run(self, step_loss: Callable[[int], tuple[torch.Tensor, dict]], parameters: list[nn.Parameter],
            probe: Callable[[int], dict] | None = None, probe_every: int = 0, progress: bool = True) -> None:
        """Train to ``steps``. Progress: a bar with the loss on a terminal, else a log line a minute."""
        bar = tqdm(total=self.steps, initial=self.step, desc=self.name, mininterval=2, dynamic_ncols=True,
                   disable=not (progress and sys.stderr.isatty()))
        first, last_line = self.step, time.time()
        while self.step < self.steps:
            started = time.time()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * group.get("lr_scale", 1.0) * warmup_cosine(self.step, self.steps, self.warmup)
            loss, terms = step_loss(self.step)
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.seconds += time.time() - started
            record = {"step": self.step, "loss": loss.item(), **terms}
            if probe is not None and probe_every and (self.step % probe_every == 0 or self.step == self.steps):
                record["probe"] = probe(self.step)
                log.info("%s step %d: %s", self.name, self.step, record["probe"])
            self.history.append(record)
            recent = self.history[-50:]
            mean_loss = sum(r["loss"] for r in recent) / len(recent)
            bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
            bar.update(1)
            if progress and bar.disable and time.time() - last_line > 60:
                rate = (self.step - first) / max(1e-9, self.seconds)
                log.info("%s step %d/%d loss %.3f (%.1f steps/s, %.0f min left)", self.name, self.step, self.steps,
                         mean_loss, rate, (self.steps - self.step) / max(rate, 1e-9) / 60)
                last_line = time.time()
            if self.step % self.every == 0 or self.step == self.steps:
                self.save()
        bar.close()
        if self.step > first:
            log.info("%s: %d steps; %.0f s of training in all", self.name, self.step - first, self.seconds)


@dataclass
class Stage0Batches:
    """Stage 0's batch source: step -> CPU batch of ``size`` drawn scenes (picklable, for DataLoader workers)."""

    stream: Stage0Stream
    size: int
    image_processor: Any

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return self.stream.batch(step, self.size, self.image_processor)


class Stage1Batches:
    """Stage 1's batch source: step -> CPU batch of ``size`` mixture examples (picklable, for DataLoader workers)."""

    def __init__(self, mixture: Stage1Mixture, processor: Any, size: int, image_tokens: int):
        self.mixture, self.tokens, self.size, self.image_tokens = mixture, TokenCache(processor), size, image_tokens
        _ = self.mixture.templates  # read easy-vqa's questions once here, not once in every worker

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return collate_stage1(self.mixture.batch(step, self.size), self.tokens, self.image_tokens)

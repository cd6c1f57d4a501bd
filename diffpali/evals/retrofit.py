"""How far a retrofitted attention starts from the pretrained model, before any training.

A setting is built exactly as ``train.py`` builds it (the validated config, seeded as the runner seeds it,
then ``build_model``: the base, the variant, LoRA at its zero start) and compared with vanilla on the same
batches of held-out questions: easy-vqa validation questions and MMNeedle paper-mode haystacks (both of
their questions, Top/Bottom and Left/Right), each teacher-forced with its true answer through the real
processor and collator.

Measured on the **answer rows** only: the positions whose next token is a token of the answer or its EOS,
the rows the fine-tune's loss and the answer itself depend on. The first answer row is where greedy
decoding emits the answer's first token. Per question: the mean over its answer rows of KL(vanilla ||
variant) of the next-token distribution (float64), and the share of its answer rows where the variant's
argmax is vanilla's. Image and prompt rows are left out: no loss or answer reads their next-token
predictions. Used by ``benchmarks/retrofit_start.py`` and ``tests/test_retrofit_start.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from ..config import EvaluateConfig, TrainConfig, register_configs, to_typed
from ..data.collate import IGNORE_INDEX, PaliGemmaCollator, VQAExamples, model_inputs
from ..data.datamodule import load_split
from ..model import build_model
from .mmneedle.task import haystack_set, needle_example, needle_questions

#: The retrofit that starts as the pretrained model: lambda_init ramped in from 0, no head norm, and tied
#: lambda pairs (independent ones leave exp(lq1 . lk1) - exp(lq2 . lk2) away from 0 at step 0).
FAIR_START = ("attn.lambda_warmup_steps=100", "attn.head_norm=false", "attn.lambda_pairs=tied")
#: lambda starts at 0 but the head norm stays: what the head norm alone costs at step 0.
WARMUP_WITH_NORM = ("attn.lambda_warmup_steps=100", "attn.lambda_pairs=tied")

#: The settings compared, by label: the overrides ``python train.py`` would be given (``attn=`` first). The
#: paper's settings are each option's defaults (lambda_init by depth, head norm on, independent pairs).
SETTINGS: dict[str, tuple[str, ...]] = {
    "vanilla": ("attn=vanilla",),
    "diff_split (paper)": ("attn=diff_split",),
    "diff_split, head_norm=false": ("attn=diff_split", "attn.head_norm=false"),
    "diff_split, fair-start knobs": ("attn=diff_split", *FAIR_START),
    "diff_dup shared (paper)": ("attn=diff_dup", "attn.dup_mode=shared"),
    "diff_dup shared, warm-up + norm": ("attn=diff_dup", "attn.dup_mode=shared", *WARMUP_WITH_NORM),
    "diff_dup shared, fair start": ("attn=diff_dup", "attn.dup_mode=shared", *FAIR_START),
    "diff_dup separate (paper)": ("attn=diff_dup", "attn.dup_mode=separate"),
    "diff_dup separate, warm-up + norm": ("attn=diff_dup", "attn.dup_mode=separate", *WARMUP_WITH_NORM),
    "diff_dup separate, warm-up, indep.": ("attn=diff_dup", "attn.dup_mode=separate", *FAIR_START[:2]),
    "diff_dup separate, fair start": ("attn=diff_dup", "attn.dup_mode=separate", *FAIR_START),
    "diff_v2 exact": ("attn=diff_v2", "attn.v2_lambda_init=exact"),
    "diff_v2 plain (paper)": ("attn=diff_v2", "attn.v2_lambda_init=plain"),
    "diff_v2 plain, fair start": ("attn=diff_v2", "attn.v2_lambda_init=plain", "attn.lambda_warmup_steps=100"),
}


def compose(conf_dir: Path, config_name: str, overrides: Sequence[str]) -> Any:
    """The validated config ``python {config_name}.py *overrides`` would run: Hydra's composition against the
    registered schemas, then :func:`~diffpali.config.to_typed` (a bad knob fails here as on the command line)."""
    register_configs()
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=[*overrides, "output_dir=.", "logger=none"])
    return to_typed(cfg, TrainConfig if config_name == "train" else EvaluateConfig)


@dataclass
class Probe:
    """One collated batch of teacher-forced questions from one source."""

    source: str  #: easy_vqa | mmneedle
    batch: dict[str, Any]


@dataclass
class StartDistance:
    """One setting against vanilla, per question (in the probes' order)."""

    kl: list[float] = field(default_factory=list)  #: mean KL(vanilla || variant) over the question's answer rows
    agreement: list[float] = field(default_factory=list)  #: share of its answer rows with vanilla's argmax
    sources: list[str] = field(default_factory=list)  #: where each question comes from

    def of(self, source: str) -> list[float]:
        """The KL of the questions from ``source``."""
        return [kl for kl, s in zip(self.kl, self.sources) if s == source]


def probes(cfg: EvaluateConfig, processor: Any, questions: int, batch_size: int = 16) -> list[Probe]:
    """The first ``questions`` easy-vqa validation questions, then both questions of each of the
    ``cfg.eval.samples`` MMNeedle haystacks (``cfg.eval``: mode paper, built or read from the haystack cache)."""
    vqa = VQAExamples(load_split(cfg.data, "validation", questions), cfg.data.prompt, cfg.data.name, "validation")
    stacks = haystack_set(cfg, processor)
    needle = [{**needle_example(stacks.images(h), prefix), "suffix": answer}
              for h in stacks.haystacks for _, prefix, answer in needle_questions(cfg, h)]
    collate = PaliGemmaCollator(processor, train=True, dataset_name="retrofit_start")
    out = []
    for source, examples in (("easy_vqa", [vqa[i] for i in range(len(vqa))]), ("mmneedle", needle)):
        out += [Probe(source, collate(examples[i: i + batch_size])) for i in range(0, len(examples), batch_size)]
    return out


def starting_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """The model ``train.py`` would take its first step from (seeded as the runner seeds it), in eval mode,
    and its processor."""
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, processor = build_model(cfg.model, cfg.attn, cfg.ffn, cfg.lora)
    return model.eval(), processor


@torch.no_grad()
def answer_log_probs(model: Any, batches: Sequence[Probe]) -> list[torch.Tensor]:
    """Per question: the log-softmax (float64) of the next-token logits at its answer rows, (rows, vocab)."""
    out = []
    for probe in batches:
        logits = model(**model_inputs(probe.batch, with_labels=False)).logits
        answer = probe.batch["labels"][:, 1:] != IGNORE_INDEX  # row t predicts token t + 1
        out += [torch.log_softmax(logits[row, :-1][answer[row]].double(), dim=-1) for row in range(len(logits))]
    return out


def distance(reference: Sequence[torch.Tensor], variant: Sequence[torch.Tensor],
             batches: Sequence[Probe]) -> StartDistance:
    """KL(reference || variant) and argmax agreement, per question."""
    result = StartDistance(sources=[p.source for p in batches for _ in range(len(p.batch["input_ids"]))])
    for p, q in zip(reference, variant):
        result.kl.append(float((p.exp() * (p - q)).sum(-1).mean()))
        result.agreement.append(float((p.argmax(-1) == q.argmax(-1)).double().mean()))
    return result


def start_distances(reference: TrainConfig, settings: dict[str, TrainConfig], data: EvaluateConfig,
                    questions: int, batch_size: int = 16) -> dict[str, StartDistance]:
    """Each setting's distance at step 0 from ``reference`` (vanilla), on :func:`probes` of ``data``; every
    model is built, measured and dropped in turn."""
    if reference.attn.variant != "vanilla":
        raise ValueError(f"the reference is the pretrained model, attn=vanilla, not attn={reference.attn.variant}")
    model, processor = starting_model(reference)
    batches = probes(data, processor, questions, batch_size)
    expected = answer_log_probs(model, batches)
    del model
    out = {}
    for label, cfg in settings.items():
        model, _ = starting_model(cfg)
        out[label] = distance(expected, answer_log_probs(model, batches), batches)
        del model
    return out

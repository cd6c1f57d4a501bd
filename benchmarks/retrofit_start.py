"""How far each retrofit starts from the pretrained model: step 0, before any training.

    OMP_NUM_THREADS=1 python benchmarks/retrofit_start.py [--questions 64] [--haystacks 64] [--batch-size 16]

Every setting (``diffpali.evals.retrofit.SETTINGS``: the overrides ``python train.py`` would take) is composed
and validated as on the command line, built by train.py's ``build_model`` on the shipped tiny base (LoRA at
its zero start, seeded as the runner seeds it) and compared with vanilla on the same held-out questions:
the first ``--questions`` easy-vqa validation questions and both questions (Top/Bottom, Left/Right) of
``--haystacks`` MMNeedle paper-mode 2x2 haystacks, each teacher-forced with its true answer. The distance
is read on the answer rows (the positions whose next token is an answer token or its EOS; see the module
``diffpali.evals.retrofit``): per question, the mean KL(vanilla || variant) of the next-token distribution
over those rows, then the mean over questions with a Student-t 95% interval over questions (cut at 0),
the same mean per source, and top-1 agreement (the share of answer rows where the variant's argmax is
vanilla's; the first answer row is vanilla's greedy answer token). Vanilla against itself must give 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffpali.config import ConfigError  # noqa: E402
from diffpali.console import filter_known_noise  # noqa: E402
from diffpali.evals.retrofit import SETTINGS, compose, start_distances  # noqa: E402
from diffpali.model import base_record  # noqa: E402
from diffpali.report.stats import mean_ci  # noqa: E402


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a whole number > 0")
    return value


def kl_text(value: float) -> str:
    return f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=positive, default=64, help="easy-vqa validation questions")
    parser.add_argument("--haystacks", type=positive, default=64, help="MMNeedle paper-mode haystacks (multiple of 4)")
    parser.add_argument("--batch-size", type=positive, default=16)
    args = parser.parse_args()
    filter_known_noise()
    conf = ROOT / "conf"
    try:  # the haystack count is checked by the eval config's own rule (paper mode: a multiple of 4)
        data = compose(conf, "evaluate", ["eval=mmneedle", "eval.mode=paper", f"eval.samples={args.haystacks}"])
    except ConfigError as err:
        parser.error(f"--haystacks {args.haystacks}: {err}")
    configs = {label: compose(conf, "train", overrides) for label, overrides in SETTINGS.items()}

    import torch  # deferred: the configs above are checked before torch's threads start
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    results = start_distances(configs["vanilla"], configs, data, args.questions, args.batch_size)
    vqa = len(next(iter(results.values())).of("easy_vqa"))
    needle = len(next(iter(results.values())).of("mmneedle"))
    base = base_record(configs["vanilla"].model) or {}
    print(f"step-0 distance from the pretrained model (tiny base {base.get('key', '?')}), answer rows of {vqa} "
          f"easy-vqa validation questions + {needle} MMNeedle questions ({args.haystacks} paper-mode 2x2 haystacks); "
          f"cpu, torch threads {torch.get_num_threads()}")
    print(f"{'setting':<36}{'KL mean':>10}  {'KL 95% CI (t, items)':<24}{'KL vqa':>10}{'KL needle':>11}"
          f"{'top-1 agree':>13}")
    for label, result in results.items():
        kl = mean_ci(result.kl, bounds=(0.0, float("inf")))
        agree = mean_ci(result.agreement, bounds=(0.0, 1.0))
        interval = f"[{kl_text(kl.low)}, {kl_text(kl.high)}]"
        print(f"{label:<36}{kl_text(kl.mean):>10}  {interval:<24}{kl_text(mean_ci(result.of('easy_vqa')).mean):>10}"
              f"{kl_text(mean_ci(result.of('mmneedle')).mean):>11}{agree.mean:>13.3f}")
    print()
    for label, overrides in SETTINGS.items():
        print(f"  {label:<36}{' '.join(overrides)}")


if __name__ == "__main__":
    main()

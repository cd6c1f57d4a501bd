"""VQA accuracy: the official VQAv2 scorer (GT-Vision-Lab vqaEval.py) and the paper's simple form.

``official``: strip newlines, tabs and surrounding spaces; only when the human answers are not
all identical, normalise answers and prediction (punctuation, periods, number words, articles,
contractions); then average, over the leave-one-out subsets of the answers (by position),
min(1, matches / 3). With ten answers this is 0, .3, .6, .9, 1.0 for 0, 1, 2, 3, >= 4 matches.

``simple``: the paper's min(n / 3, 1) over all answers, after always normalising both sides.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torchmetrics import Metric

CONVENTIONS = ("official", "simple")
#: Breakdown categories by dataset; easy-vqa reports its shape and colour questions separately.
CATEGORIES = {"easy_vqa": ("yes/no", "color", "shape"), "vqav2": ("yes/no", "number", "other")}


def categories_for(dataset_name: str) -> tuple[str, ...]:
    """The score breakdown of a dataset (VQAv2's for a dataset in its schema that is not listed)."""
    return CATEGORIES.get(dataset_name, CATEGORIES["vqav2"])

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!"]
# vqaEval.py's period regex has the typo "(?!<=\d)" (a negative lookahead for the text "<=" and a
# digit, not a lookbehind); kept as is, since it defines the official numbers.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # vqaEval.py passes re.UNICODE (32) as the count argument: at most 32 periods are removed.
    return _PERIOD_STRIP.sub("", out, count=32)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Whitespace strip, then vqaEval.py's punctuation and digit/article/contraction processing."""
    return _process_digit_article(_process_punctuation(_strip(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str], convention: str = "official") -> float:
    """Accuracy of one predicted answer against the human answers (never mutates ``answers``)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}: must be one of {', '.join(CONVENTIONS)}")
    if not answers:
        raise ValueError("answers is empty: VQA accuracy needs at least one human answer")
    if convention == "simple":
        pred = normalize_answer(prediction)
        matches = sum(normalize_answer(a) == pred for a in answers)
        return min(1.0, matches / 3.0)
    gts = [_strip(a) for a in answers]
    pred = _strip(prediction)
    if len(set(gts)) > 1:  # vqaEval.py normalises only when the annotators disagree
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    if len(gts) == 1:  # no leave-one-out subset exists; score against the single answer
        return min(1.0, float(gts[0] == pred) / 3.0)
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3.0))
    return sum(scores) / len(scores)


class VQAAccuracy(Metric):
    """Mean VQA accuracy overall and per answer type; sums and counts, so DDP sync is exact.

    A type with no samples computes to NaN rather than 0: 0 would read as a (terrible) score.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, convention: str = "official", answer_types: Sequence[str] = ("yes/no", "number", "other"),
                 **kwargs):
        super().__init__(**kwargs)
        if convention not in CONVENTIONS:
            raise ValueError(f"convention={convention!r}: must be one of {', '.join(CONVENTIONS)}")
        self.convention = convention
        self.answer_types = tuple(answer_types)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        n = len(self.answer_types)
        self.add_state("type_total", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("type_count", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]],
               answer_types: Sequence[str] | None = None) -> None:
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions for {len(answers)} answer lists")
        if answer_types is not None and len(answer_types) != len(predictions):
            raise ValueError(f"{len(answer_types)} answer types for {len(predictions)} predictions")
        for k, (prediction, gts) in enumerate(zip(predictions, answers)):
            score = vqa_accuracy(prediction, gts, self.convention)
            self.total += score
            self.count += 1
            if answer_types is not None:
                kind = answer_types[k]
                if kind not in self.answer_types:
                    raise ValueError(f"answer type {kind!r}: must be one of {', '.join(self.answer_types)}")
                j = self.answer_types.index(kind)
                self.type_total[j] += score
                self.type_count[j] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        out = {"overall": self.total / self.count if self.count > 0 else nan, "count": self.count.clone()}
        for index, name in enumerate(self.answer_types):
            count = self.type_count[index]
            out[name] = self.type_total[index] / count if count > 0 else nan
        return out

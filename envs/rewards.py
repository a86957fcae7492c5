"""Answer scoring as in the QA literature (SQuAD / HotpotQA / Search-R1): normalized exact match and
token F1, each the maximum over the gold aliases.

>>> exact_match("The Eiffel  Tower!", ["eiffel tower"])
1.0
>>> round(f1_score("Paris France", ["Paris"]), 3)
0.667
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def exact_match(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in golds), default=0.0)


def _f1(pred: list[str], gold: list[str]) -> float:
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold or common == 0:
        return float(pred == gold)
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def split_answers(text: str, n: int) -> list[str]:
    """The N answers of a composed task, written in order and separated by ';' (missing ones are '')."""
    parts = [p.strip() for p in str(text).split(";")]
    return (parts + [""] * n)[:n]

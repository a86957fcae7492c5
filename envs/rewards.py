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

from memrl.registry import REWARD_SCORES

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




def shaped_reward(em: float, f1: float, malformed: bool, answered_cleanly: bool, *, score: str = "em",
                  format_penalty: bool = False, format_floor: float = 0.0) -> float:
    """The training reward of one episode from its scores and format (MemSearcher's rule when
    score="f1", format_penalty=True, format_floor=0.1).

    em, f1: the episode's answer scores from the env (0 when it never answered), `malformed`: a turn broke
    the agent's format, `answered_cleanly`: it answered with no invalid action (the env's format reward).
    `score` picks EM or F1; with `format_penalty` a malformed episode gets 0; with `format_floor` a
    well-formed episode that answered but scored 0 gets the floor (it learned the format, not the answer).

    >>> shaped_reward(0.0, 0.5, False, True, score="f1", format_penalty=True, format_floor=0.1)
    0.5
    >>> shaped_reward(0.0, 0.0, False, True, score="f1", format_penalty=True, format_floor=0.1)
    0.1
    >>> shaped_reward(1.0, 1.0, True, True, score="f1", format_penalty=True, format_floor=0.1)
    0.0
    """
    if score not in REWARD_SCORES:
        raise ValueError(f"score must be one of {REWARD_SCORES}, got {score!r}")
    if format_penalty and malformed:
        return 0.0
    value = em if score == "em" else f1
    if value == 0.0 and answered_cleanly and not malformed:
        return float(format_floor)
    return float(value)

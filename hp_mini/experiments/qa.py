"""Question-answering scores: SQuAD-style answer normalisation, token F1 and exact match.

:func:`normalize_answer` lower-cases and strips punctuation and articles;
:func:`token_f1` and :func:`exact_match` compare a prediction with the best of
its reference answers; :func:`first_answer` cuts a generation at its first
line. The evaluator that generates and scores is
:func:`hp_mini.experiments.evaluators.qa_evaluator`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["exact_match", "first_answer", "normalize_answer", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")


_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_list(answers: str | Sequence[str]) -> list[str]:
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        raise ValueError("give at least one reference answer")
    return answers


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """SQuAD token F1 of a prediction, the best over the reference answers.

    Both sides are normalised (:func:`normalize_answer`) and split on spaces; F1
    is the harmonic mean of the precision and recall of the shared tokens.
    """
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in _as_list(answers):
        gold = normalize_answer(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _as_list(answers)))


def first_answer(generation: str) -> str:
    """The answer in a completion: its first line, without a following ``Q:`` turn."""
    text = generation.strip().split("\n")[0]
    return text.split("Q:")[0].strip()

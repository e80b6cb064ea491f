"""Words in generated text: counts of given words, and a profanity model.

:func:`count_words` and :func:`lexical_rate` count whole-word occurrences
(case-insensitive, longest words first, so "bad ass" is not also "ass");
:func:`word_pattern` is the regular expression they share;
:func:`profanity_probability` is the offline ``alt-profanity-check`` model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["count_words", "lexical_rate", "profanity_probability", "word_pattern"]


def profanity_probability(texts: Sequence[str]) -> np.ndarray:
    """Probability that each text is offensive, from the offline ``alt-profanity-check`` model.

    A linear SVM on TF-IDF features, trained on about 200k human-labelled
    comments; it runs on CPU in microseconds per text.
    """
    texts = list(texts)
    if not texts:
        return np.zeros(0)
    try:
        from profanity_check import predict_prob
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("toxicity scores need `pip install alt-profanity-check`") from err
    return np.asarray(predict_prob(texts), dtype=float)


def word_pattern(words: Sequence[str]) -> re.Pattern:
    """A case-insensitive regular expression that matches any of ``words`` as a whole word (longest first)."""
    words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not words:
        raise ValueError("give at least one word")
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def count_words(texts: Sequence[str], words: Sequence[str]) -> Counter:
    """How often each of ``words`` occurs in ``texts`` (whole words, any case; keys in lower case)."""
    pattern = word_pattern(words)
    return Counter(m.lower() for t in texts for m in pattern.findall(t))


def lexical_rate(texts: Sequence[str], words: Sequence[str]) -> float:
    """Mean number of occurrences of ``words`` per text (whole words, any case)."""
    texts = list(texts)
    if not texts:
        raise ValueError("give at least one text")
    pattern = word_pattern(words)
    return float(np.mean([len(pattern.findall(t)) for t in texts]))

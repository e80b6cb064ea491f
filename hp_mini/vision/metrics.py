"""Scores for the shapes scenes: answers, captions, keywords and BLEU.

Captions of :mod:`hp_mini.vision.shapes` have a fixed grammar
(``"<count> <size> <colour> <shape>[s] on the <position>"``), so a generated
caption can be read back into attributes (:func:`parse_caption`) and compared
with the truth attribute by attribute (:func:`caption_attribute_accuracy`).
For captions edited away from that grammar, :func:`keyword_counts` counts the
words of a concept and :func:`bleu` compares with the reference caption.

Example
-------
>>> parse_caption("two large red squares on the left")["count"]
2
>>> keyword_counts(["a red and blue square", "one circle"], COLOUR_WORDS)
[2, 0]
>>> round(bleu(["one small red circle on the left"], ["one small red circle on the left"]), 3)
1.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from hp_mini.vision.shapes import ATTRIBUTES, COLOURS, COUNT_WORDS, POSITIONS, SHAPES, SIZES

__all__ = [
    "COLOUR_WORDS",
    "QUANTITY_WORDS",
    "SHAPE_WORDS",
    "bleu",
    "caption_attribute_accuracy",
    "classification_accuracy",
    "keyword_counts",
    "parse_caption",
]

COLOUR_WORDS: tuple[str, ...] = tuple(COLOURS)
QUANTITY_WORDS: tuple[str, ...] = tuple(COUNT_WORDS.values())
SHAPE_WORDS: tuple[str, ...] = SHAPES + tuple(s + "s" for s in SHAPES)
_NUMBER = {w: n for n, w in COUNT_WORDS.items()}


def parse_caption(caption: str) -> dict[str, object]:
    """The attributes a caption states (``None`` for an attribute it does not state).

    Words are matched anywhere in the caption, so an edited caption that drops
    or repeats a word is still read; the first match of each attribute wins.
    """
    words = caption.lower().replace(".", " ").split()
    out: dict[str, object] = {k: None for k in ATTRIBUTES}
    for w in words:
        if out["count"] is None and w in _NUMBER:
            out["count"] = _NUMBER[w]
        elif out["size"] is None and w in SIZES:
            out["size"] = w
        elif out["colour"] is None and w in COLOURS:
            out["colour"] = w
        elif out["shape"] is None and (w in SHAPES or (w.endswith("s") and w[:-1] in SHAPES)):
            out["shape"] = w if w in SHAPES else w[:-1]
        elif out["position"] is None and w in POSITIONS:
            out["position"] = w
    return out


def caption_attribute_accuracy(
    captions: Sequence[str], attributes: Sequence[Mapping[str, object]]
) -> dict[str, float]:
    """Per-attribute accuracy of captions, plus ``"all"``: every attribute right.

    Parameters
    ----------
    captions : list of str
        Generated captions.
    attributes : list of dict
        The true attributes (the ``attributes`` column of
        :func:`hp_mini.vision.shapes.shapes_dataset`).
    """
    if len(captions) != len(attributes):
        raise ValueError(f"got {len(captions)} captions for {len(attributes)} attribute sets")
    if not captions:
        raise ValueError("no captions to score")
    hits = {k: 0 for k in ATTRIBUTES}
    all_right = 0
    for cap, truth in zip(captions, attributes):
        got = parse_caption(cap)
        ok = [got[k] == (int(truth[k]) if k == "count" else truth[k]) for k in ATTRIBUTES]  # type: ignore[call-overload]
        for k, o in zip(ATTRIBUTES, ok):
            hits[k] += o
        all_right += all(ok)
    n = len(captions)
    return {**{k: v / n for k, v in hits.items()}, "all": all_right / n}


def classification_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Exact-match accuracy on the first word of each prediction (case-insensitive)."""
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no answers to score")
    first = [(p.split() or [""])[0].lower() for p in predictions]
    return sum(f == a.lower() for f, a in zip(first, answers)) / len(answers)


def keyword_counts(captions: Iterable[str], keywords: Iterable[str]) -> list[int]:
    """How many words of each caption are in ``keywords`` (case-insensitive)."""
    keys = {k.lower() for k in keywords}
    return [sum(w in keys for w in c.lower().replace(".", " ").split()) for c in captions]


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(candidates: Sequence[str], references: Sequence[str | Sequence[str]], *, max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) with the brevity penalty, in ``[0, 1]``.

    Parameters
    ----------
    candidates : list of str
        Generated captions (whitespace-tokenised, lower-cased).
    references : list of str or list of list of str
        One reference, or several, per candidate.
    max_n : int
        Largest n-gram order (4 is the usual BLEU-4). Orders without any
        candidate n-gram are skipped (short captions).

    Notes
    -----
    Clipped n-gram precisions are pooled over the corpus and combined by a
    geometric mean; the brevity penalty uses, per candidate, the reference
    length closest to the candidate's.
    """
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates for {len(references)} references")
    if not candidates:
        raise ValueError("no captions to score")
    match = [0] * max_n
    total = [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        c = cand.lower().split()
        rs = [r.lower().split() for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            cn = _ngrams(c, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)
            match[n - 1] += sum(min(v, best[g]) for g, v in cn.items())
            total[n - 1] += sum(cn.values())
    orders = [(m, t) for m, t in zip(match, total) if t > 0]
    if not orders or any(m == 0 for m, _ in orders):
        return 0.0
    log_p = sum(math.log(m / t) for m, t in orders) / len(orders)
    bp = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / max(cand_len, 1))
    return bp * math.exp(log_p)

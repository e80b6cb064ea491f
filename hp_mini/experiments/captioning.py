"""The paper's captioning experiment: concept keywords and CIDEr of edited captions.

Head Pursuit inhibits (``alpha = -1``) or enhances (``alpha = 5``) the heads of
a concept (colours, quantities) and reads the captions two ways: how many of
the concept's words they hold, divided by the unedited captions' count, and
their quality against the reference captions by CIDEr, divided by the
unedited captions' CIDEr.

- :func:`tokens`: the words of a caption as scored here (lower case, letters and
  digits; the Java PTB tokenizer of the COCO tools is not used);
- :func:`cider`: CIDEr-D of captions against references, computed by
  pycocoevalcap's :class:`~pycocoevalcap.cider.cider.Cider` on those words;
- :func:`keyword_rate`: the mean number of a concept's words per caption;
- :func:`caption_evaluator`: an evaluator of both, for
  :func:`hp_mini.experiments.driver.evaluate_head_edits`.

Example
-------
>>> from hp_mini.experiments.captioning import keyword_rate, tokens
>>> tokens("Two small RED circles, on the left.")
['two', 'small', 'red', 'circles', 'on', 'the', 'left']
>>> keyword_rate(["a red and blue square", "one circle"], ["red", "blue"])
1.0
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["caption_evaluator", "cider", "keyword_rate", "one_line", "tokens"]

_WORD = re.compile(r"[a-z0-9]+")


def one_line(caption: str, width: int = 48) -> str:
    r"""A caption as one line of at most ``width`` characters, for a table.

    Runs of white space (newlines too) become one space; a longer text is cut
    and ends with an ellipsis. An empty caption reads ``"(empty)"`` and one of
    white space only ``"(white space only)"``, so that neither looks like a
    missing cell.

    Examples
    --------
    >>> one_line("two red\n\ncircles on the left", width=10)
    'two red c…'
    >>> one_line(" \n"), one_line("")
    ('(white space only)', '(empty)')
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    if not isinstance(width, int) or width < 2:
        raise ValueError(f"width must be an int of 2 or more, got {width!r}")
    text = " ".join(caption.split())
    if not text:
        return "(empty)" if not caption else "(white space only)"
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def tokens(caption: str) -> list[str]:
    """The words of a caption: lower-cased, runs of letters and digits (punctuation dropped)."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a str, got {type(caption).__name__}")
    return _WORD.findall(caption.lower())


def _check_captions(captions, name: str) -> list[str]:
    if isinstance(captions, str):
        raise TypeError(f"{name} must be a list of captions, not one string")
    captions = list(captions)
    bad = [c for c in captions if not isinstance(c, str)]
    if bad:
        raise TypeError(f"{name} must hold strings, got {type(bad[0]).__name__}")
    return captions


def cider(captions: Sequence[str], references: Sequence[str | Sequence[str]]) -> tuple[float, list[float]]:
    """CIDEr-D of captions against their references (pycocoevalcap's scorer, words of :func:`tokens`).

    Parameters
    ----------
    captions : list of str
        One generated caption per image.
    references : list of str or list of list of str
        The reference caption(s) of each image.

    Returns
    -------
    score : float
        The corpus CIDEr-D (the mean of the per-caption scores; 10 for captions
        equal to their single, unique references), as pycocoevalcap computes it:
        n-grams 1 to 4, document frequencies from the references, Gaussian
        length penalty (sigma 6), clipping.
    per_caption : list of float

    Raises
    ------
    ValueError
        When the lists differ in length or are empty, or an image has no reference.
    ImportError
        When pycocoevalcap is not installed (``pip install pycocoevalcap``).
    """
    from pycocoevalcap.cider.cider import Cider

    captions = _check_captions(captions, "captions")
    refs = [[r] if isinstance(r, str) else _check_captions(r, "each image's references") for r in references]
    if len(captions) != len(refs):
        raise ValueError(f"captions and references must have the same length, got {len(captions)} and {len(refs)}")
    if not captions:
        raise ValueError("give at least one caption")
    if any(not r for r in refs):
        raise ValueError("every image needs at least one reference caption")
    gts = {i: [" ".join(tokens(x)) for x in r] for i, r in enumerate(refs)}
    res = {i: [" ".join(tokens(c))] for i, c in enumerate(captions)}
    score, per = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in per]


def keyword_rate(captions: Sequence[str], keywords: Sequence[str]) -> float:
    """The mean number of ``keywords`` per caption (every occurrence of a word of :func:`tokens` counts).

    Raises
    ------
    ValueError
        When there are no captions or no keywords.
    """
    captions = _check_captions(captions, "captions")
    words = {w.lower() for w in _check_captions(keywords, "keywords")}
    if not captions or not words:
        raise ValueError("give at least one caption and one keyword")
    return sum(sum(t in words for t in tokens(c)) for c in captions) / len(captions)


def caption_evaluator(describe: Callable[[], Sequence[str]], references: Sequence[str | Sequence[str]],
                      keywords: Sequence[str]) -> Callable[[], dict[str, float]]:
    """An evaluator of captions for :func:`hp_mini.experiments.driver.evaluate_head_edits`.

    Parameters
    ----------
    describe : callable ``() -> list of str``
        Captions the images with the model as it is (head edits of an enclosing
        :func:`hp_mini.scale_heads` apply), e.g.
        ``lambda: llava.describe(model, processor, images)``.
    references : list
        The reference caption(s) of each image.
    keywords : list of str
        The concept's words.

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        ``"keywords"`` (:func:`keyword_rate`), ``"cider"`` (:func:`cider`) and
        ``"exact"`` (share of captions equal, word for word, to a reference).
        ``evaluate.captions`` holds the last captions.
    """
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    words = _check_captions(keywords, "keywords")
    if not refs or not words:
        raise ValueError("give at least one reference and one keyword")

    def evaluate() -> dict[str, float]:
        captions = _check_captions(describe(), "describe()")
        if len(captions) != len(refs):
            raise ValueError(f"describe() gave {len(captions)} captions for {len(refs)} references")
        evaluate.captions = captions  # type: ignore[attr-defined]
        exact = sum(tokens(c) in [tokens(x) for x in r] for c, r in zip(captions, refs)) / len(refs)
        return {"keywords": keyword_rate(captions, words), "cider": cider(captions, refs)[0], "exact": exact}

    return evaluate

"""Metrics for edited models, and the editing experiment with the paper's controls.

Metrics
    :func:`normalize_answer`, :func:`token_f1`, :func:`exact_match` (SQuAD-style),
    :func:`first_answer` (cut a generation down to its answer),
    :func:`profanity_probability` (an offline classifier, ``alt-profanity-check``),
    :func:`lexical_rate` (how often given words occur).
Evaluators (functions of no argument that score the model as it is now)
    :func:`qa_evaluator`, :func:`toxicity_evaluator`.
The experiment
    :func:`evaluate_head_edits` scales each selected head set (and random
    control sets drawn like it) and scores the model under each edit, returning
    one tidy table; :func:`summarize_edits` and :func:`edit_table` reduce it to
    medians and interquartile ranges, normalised to the unedited model.

Example
-------
>>> from hp_mini.evaluation import token_f1, exact_match
>>> token_f1("the United States", ["United States", "USA"])
1.0
>>> round(token_f1("Paris, France", ["Paris"]), 3)
0.667
>>> exact_match("Paris, France", ["Paris"])
0.0
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .editing import scale_heads
from .generation import generate
from .heads import head_label

__all__ = [
    "count_words",
    "edit_table",
    "evaluate_head_edits",
    "exact_match",
    "first_answer",
    "lexical_rate",
    "normalize_answer",
    "profanity_probability",
    "qa_evaluator",
    "summarize_edits",
    "token_f1",
    "toxicity_evaluator",
]

Head = tuple[int, int]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


# --------------------------------------------------------------------------- #
# Question answering
# --------------------------------------------------------------------------- #


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


def qa_evaluator(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    groups: Sequence[str] | None = None,
    *,
    prefix: str = "",
    max_new_tokens: int = 6,
    batch_size: int = 128,
    share_prefixes: bool = True,
    keep_predictions: bool = False,
) -> Callable[[], dict[str, float]]:
    """A function that answers ``prompts`` greedily and returns the mean F1.

    Each answer is the first line of the greedy continuation
    (:func:`first_answer`). Generation stops for a prompt as soon as that line
    is complete (``stop="\\n"`` in :func:`hp_mini.generate`), and the tokens
    that prompts share (the few-shot prefix, common question openings) are run
    once per call (``share_prefixes``); both give the answers that full-length
    generation gives, only faster.

    Parameters
    ----------
    prompts : list of str
        Completion-style prompts (see :func:`hp_mini.textdata.qa_prompt`).
    answers : list of list of str
        The reference answers of each prompt.
    groups : list of str, optional
        A group per prompt (e.g. ``"country"`` / ``"other"``): the result has
        one mean F1 per group, ``"f1_<group>"``, besides ``"f1"`` over all.
    prefix : str, optional
        A text put before every prompt (e.g. the few-shot examples
        :data:`hp_mini.textdata.QA_FEWSHOT`).
    max_new_tokens, batch_size
        Generation length limit and prompts per batch.
    share_prefixes : bool, default True
        Run shared prompt tokens once (see :func:`hp_mini.generate`).
    keep_predictions : bool
        Also store the last predictions in ``evaluate.predictions``.

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        Scores the model as it is when called (inside ``scale_heads`` blocks too).
    """
    prompts, answers = list(prompts), [list(a) for a in answers]
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answer lists")
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"{len(groups)} groups for {len(prompts)} prompts")

    def evaluate() -> dict[str, float]:
        outputs = generate(
            model,
            tokenizer,
            [prefix + p for p in prompts],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            stop="\n",
            share_prefixes=share_prefixes,
        )
        preds = [first_answer(o) for o in outputs]
        f1 = np.array([token_f1(p, a) for p, a in zip(preds, answers)])
        result = {"f1": float(f1.mean())}
        if groups is not None:
            g = np.asarray(groups)
            for name in sorted(set(groups)):
                result[f"f1_{name}"] = float(f1[g == name].mean())
        if keep_predictions:
            evaluate.predictions = preds  # type: ignore[attr-defined]
        return result

    return evaluate


# --------------------------------------------------------------------------- #
# Toxicity
# --------------------------------------------------------------------------- #


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


def _word_pattern(words: Sequence[str]) -> re.Pattern:
    words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not words:
        raise ValueError("give at least one word")
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def count_words(texts: Sequence[str], words: Sequence[str]) -> Counter:
    """How often each of ``words`` occurs in ``texts`` (whole words, any case; keys in lower case)."""
    pattern = _word_pattern(words)
    return Counter(m.lower() for t in texts for m in pattern.findall(t))


def lexical_rate(texts: Sequence[str], words: Sequence[str]) -> float:
    """Mean number of occurrences of ``words`` per text (whole words, any case)."""
    texts = list(texts)
    if not texts:
        raise ValueError("give at least one text")
    pattern = _word_pattern(words)
    return float(np.mean([len(pattern.findall(t)) for t in texts]))


def toxicity_evaluator(
    model,
    tokenizer,
    prompts: Sequence[str],
    held_out_words: Sequence[str],
    *,
    threshold: float = 0.5,
    max_new_tokens: int = 20,
    batch_size: int = 64,
    share_prefixes: bool = True,
    keep_generations: bool = False,
) -> Callable[[], dict[str, float]]:
    """A function that continues ``prompts`` greedily and scores the continuations.

    Returns ``evaluate() -> dict`` with ``"toxic_fraction"`` (share of
    continuations whose :func:`profanity_probability` is at least
    ``threshold``, the paper's count of toxic generations divided by their
    number), ``"toxicity"`` (the mean probability), ``"lexical"``
    (:func:`lexical_rate` of the held-out words: occurrences per continuation)
    and ``"lexical_hits"`` (the number of occurrences, out of ``len(prompts)``
    continuations, to show how much a rate rests on). Only the new text is
    scored.
    """
    prompts = list(prompts)
    _word_pattern(held_out_words)

    def evaluate() -> dict[str, float]:
        outputs = generate(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, share_prefixes=share_prefixes
        )
        prob = profanity_probability(outputs)
        if keep_generations:
            evaluate.generations = outputs  # type: ignore[attr-defined]
        lexical = lexical_rate(outputs, held_out_words)
        return {
            "toxic_fraction": float((prob >= threshold).mean()),
            "toxicity": float(prob.mean()),
            "lexical": lexical,
            "lexical_hits": float(round(lexical * len(outputs))),
        }

    return evaluate


# --------------------------------------------------------------------------- #
# The editing experiment
# --------------------------------------------------------------------------- #


def evaluate_head_edits(
    model,
    evaluate: Callable[[], Mapping[str, float]],
    selections: Mapping[str, Sequence[Head]],
    *,
    ks: Sequence[int],
    alpha: float = -1.0,
    pool=None,
    random_like: str | None = None,
    n_random: int = 10,
    seed: int = 0,
    heads=None,
    baseline: Mapping[str, float] | None = None,
    keep: str | None = None,
    progress: bool = True,
):
    """Score the model unedited and under each head edit, with random controls.

    Parameters
    ----------
    model : nn.Module
        The model that ``evaluate`` scores.
    evaluate : callable ``() -> dict[str, float]``
        Scores the model as it is (e.g. :func:`qa_evaluator`). Called once
        unedited, then once inside :func:`hp_mini.scale_heads` per edit.
    selections : mapping name -> list of (layer, head)
        Ranked head lists, best first (e.g. ``{"SOMP": r.heads, "logit lens": ll.heads}``);
        the top ``k`` of each is edited.
    ks : list of int
        Numbers of heads to edit.
    alpha : float, default -1
        The scale: -1 inverts the heads, 5 enhances them.
    pool : HeadActivations or list of (layer, head), optional
        All heads, to draw random controls from (:func:`hp_mini.random_heads_like`).
        No random controls without it.
    random_like : str, optional
        The selection whose top ``k`` the controls match layer by layer and avoid
        (default: the first one).
    n_random : int, default 10
        Random control sets per ``k``.
    seed : int, default 0
        Seed of the draws (``seed + k`` for each ``k``).
    heads : list of LayerHeads, optional
        Passed to :func:`hp_mini.scale_heads`.
    baseline : dict, optional
        The unedited scores, when already known (``evaluate`` is then not
        called unedited).
    keep : str, optional
        The name of an attribute of ``evaluate`` to collect after every call
        (e.g. ``"predictions"`` of :func:`qa_evaluator` with
        ``keep_predictions=True``), into ``table.attrs["outputs"]``, keyed by
        ``(method, k, draw)``, so the outputs of an edit need no second run.
    progress : bool
        Show a progress bar over edits.

    Returns
    -------
    pandas.DataFrame
        One row per (edit, metric): ``method`` ("unedited", each selection
        name, "random"), ``k``, ``draw``, ``heads`` (labels), ``metric``,
        ``value``, ``baseline`` (the unedited value) and ``normalised``
        (``value / baseline``; NaN where the baseline is 0).
    """
    import pandas as pd

    from .ranking import random_heads_like

    if not selections:
        raise ValueError("give at least one selection, e.g. {'SOMP': ranking.heads}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    names = list(selections)
    random_like = names[0] if random_like is None else random_like
    if random_like not in selections:
        raise KeyError(f"random_like={random_like!r} is not one of the selections {names}")

    jobs: list[tuple[str, int, int, list[Head]]] = []
    for k in ks:
        for name in names:
            ranked = [tuple(h) for h in selections[name]]
            if len(ranked) < k:
                raise ValueError(f"selection {name!r} has {len(ranked)} heads, fewer than k={k}")
            jobs.append((name, k, 0, ranked[:k]))
        if pool is not None and n_random > 0:
            target = [tuple(h) for h in selections[random_like]][:k]
            for d, draw in enumerate(random_heads_like(target, pool, n_draws=n_random, seed=seed + k)):
                jobs.append(("random", k, d, list(draw)))

    iterator = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc=f"edits (alpha={alpha:g})", leave=False)

    outputs = {}
    if baseline is None:
        baseline = dict(evaluate())
        if keep is not None:
            outputs[("unedited", 0, 0)] = getattr(evaluate, keep)
    baseline = dict(baseline)
    rows = [("unedited", 0, 0, "", m, v) for m, v in baseline.items()]
    for name, k, d, chosen in iterator:
        with scale_heads(model, {h: alpha for h in chosen}, heads=heads):
            scores = dict(evaluate())
        if keep is not None:
            outputs[(name, k, d)] = getattr(evaluate, keep)
        labels = " ".join(head_label(*h) for h in chosen)
        rows.extend((name, k, d, labels, m, v) for m, v in scores.items())
    table = pd.DataFrame(rows, columns=["method", "k", "draw", "heads", "metric", "value"])
    table["baseline"] = table["metric"].map(baseline)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["normalised"] = np.where(table["baseline"] != 0, table["value"] / table["baseline"], np.nan)
    if keep is not None:
        table.attrs["outputs"] = outputs
    return table


def summarize_edits(table, *, column: str = "normalised"):
    """Median, quartiles and count of ``column`` per method, ``k`` and metric.

    Returns a DataFrame indexed by (metric, method, k) with columns
    ``median``, ``q25``, ``q75``, ``iqr`` and ``n`` (draws).
    """
    grouped = table.groupby(["metric", "method", "k"], sort=False)[column]
    out = grouped.agg(median="median", q25=lambda s: s.quantile(0.25), q75=lambda s: s.quantile(0.75), n="count")
    out["iqr"] = out["q75"] - out["q25"]
    return out[["median", "q25", "q75", "iqr", "n"]]


def edit_table(
    table,
    metrics: Sequence[str] | None = None,
    *,
    column: str = "normalised",
    decimals: int = 2,
    iqr: bool = False,
):
    """The paper's table layout: one row per metric, columns ``(k, method)`` with medians.

    Random controls show their median over draws; the other methods have a
    single draw. With ``iqr=True`` every cell is a string, and the random
    cells read ``"median [q25, q75]"`` (the interquartile range of the draws).
    """
    summary = summarize_edits(table[table["method"] != "unedited"], column=column)
    wide = summary["median"].unstack(["k", "method"])
    if metrics is not None:
        wide = wide.loc[list(metrics)]
    wide = wide.sort_index(axis=1, level=0, sort_remaining=False)
    if not iqr:
        return wide.round(decimals)
    q25 = summary["q25"].unstack(["k", "method"]).reindex(index=wide.index, columns=wide.columns)
    q75 = summary["q75"].unstack(["k", "method"]).reindex(index=wide.index, columns=wide.columns)
    out = wide.map(lambda v: f"{v:.{decimals}f}")
    for col in wide.columns:
        if col[1] == "random":
            out[col] = [f"{m:.{decimals}f} [{a:.{decimals}f}, {b:.{decimals}f}]"
                        for m, a, b in zip(wide[col], q25[col], q75[col])]
    return out

"""Metrics for edited models, and the editing experiment with the paper's controls.

Metrics
    :func:`normalize_answer`, :func:`token_f1`, :func:`exact_match` (SQuAD-style),
    :func:`first_answer` (cut a generation down to its answer),
    :func:`profanity_probability` (an offline classifier, ``alt-profanity-check``),
    :func:`lexical_rate` (how often given words occur),
    :func:`bootstrap_ratio` (an interval for a normalised score, over prompts),
    :func:`head_counts` (the paper's 1%, 2%, 4% of the heads).
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
from .toxicity import toxicity_scores

__all__ = [
    "add_intervals",
    "bootstrap_ratio",
    "count_words",
    "edit_differences",
    "edit_table",
    "evaluate_head_edits",
    "exact_match",
    "first_answer",
    "head_counts",
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
        After each call, ``evaluate.per_prompt`` maps every metric to the
        per-prompt F1 values it is the mean of (the prompts of that group),
        for :func:`bootstrap_ratio`.
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
        per_prompt = {"f1": f1}
        if groups is not None:
            g = np.asarray(groups)
            for name in sorted(set(groups)):
                per_prompt[f"f1_{name}"] = f1[g == name]
                result[f"f1_{name}"] = float(f1[g == name].mean())
        evaluate.per_prompt = per_prompt  # type: ignore[attr-defined]
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
    second_classifier: bool = True,
    keep_generations: bool = False,
) -> Callable[[], dict[str, float]]:
    """A function that continues ``prompts`` greedily and scores the continuations.

    Only the new text is scored. The main classifier is the Jigsaw BiLSTM of
    :mod:`hp_mini.toxicity` (its ``toxic`` label); ``alt-profanity-check``
    (:func:`profanity_probability`) is the second one, and the held-out words
    give a lexical rate that depends on no classifier.

    Parameters
    ----------
    prompts : list of str
        Openings to continue (e.g. :func:`hp_mini.textdata.toxicity_prompts`).
    held_out_words : list of str
        Words counted in the continuations; keep them disjoint from the words
        the heads were chosen with.
    threshold : float, default 0.5
        A continuation is toxic when its classifier probability is at least this.
    max_new_tokens, batch_size, share_prefixes
        Passed to :func:`hp_mini.generate`.
    second_classifier : bool, default True
        Also score with ``alt-profanity-check`` (metrics ``*_pc``).
    keep_generations : bool
        Also store the last continuations in ``evaluate.generations``.

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        Returns ``"toxic_fraction"`` (share of continuations with Jigsaw
        ``toxic`` >= ``threshold``, the paper's count of toxic generations
        divided by their number), ``"toxic_count"`` (that count),
        ``"toxicity"`` (the mean Jigsaw probability), ``"toxic_fraction_pc"``
        and ``"toxic_count_pc"`` (the same with ``alt-profanity-check``),
        ``"lexical"`` (:func:`lexical_rate` of the held-out words, occurrences
        per continuation) and ``"lexical_hits"`` (the number of occurrences).
        After each call ``evaluate.per_prompt`` maps every rate to its
        per-continuation values (for :func:`bootstrap_ratio`).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt")
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    pattern = _word_pattern(held_out_words)

    def evaluate() -> dict[str, float]:
        outputs = generate(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, share_prefixes=share_prefixes
        )
        if keep_generations:
            evaluate.generations = outputs  # type: ignore[attr-defined]
        toxic = np.asarray(toxicity_scores(outputs)[:, 0], dtype=float)
        per_prompt = {
            "toxic_fraction": (toxic >= threshold).astype(float),
            "toxicity": toxic,
            "lexical": np.array([len(pattern.findall(t)) for t in outputs], dtype=float),
        }
        if second_classifier:
            per_prompt["toxic_fraction_pc"] = (profanity_probability(outputs) >= threshold).astype(float)
        evaluate.per_prompt = per_prompt  # type: ignore[attr-defined]
        result = {name: float(values.mean()) for name, values in per_prompt.items()}
        result["toxic_count"] = float(per_prompt["toxic_fraction"].sum())
        if second_classifier:
            result["toxic_count_pc"] = float(per_prompt["toxic_fraction_pc"].sum())
        result["lexical_hits"] = float(per_prompt["lexical"].sum())
        return result

    return evaluate


def bootstrap_ratio(
    edited: Sequence[float],
    unedited: Sequence[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(edited) / mean(unedited)``, paired over prompts.

    Each resample draws prompts with replacement and keeps each prompt's two
    values together, so the interval reflects which prompts were asked, not
    noise between the two runs (greedy generation has none).

    Parameters
    ----------
    edited, unedited : array-like of float, same length
        One value per prompt (e.g. ``evaluate.per_prompt[metric]`` of an
        evaluator, under an edit and unedited).
    n_boot : int, default 2000
        Resamples.
    level : float, default 0.95
        Coverage of the interval.
    seed : int, default 0
        Seed of the resampling.

    Returns
    -------
    (low, high) : tuple of float
        NaN, NaN when the unedited mean is 0 in every resample.

    Examples
    --------
    >>> from hp_mini.evaluation import bootstrap_ratio
    >>> low, high = bootstrap_ratio([0, 1, 0, 1], [1, 1, 1, 1])
    >>> 0 <= low <= 0.5 <= high <= 1
    True
    """
    a = np.asarray(edited, dtype=float)
    b = np.asarray(unedited, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"edited and unedited must be 1-d and of the same length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a bootstrap needs at least 2 prompts, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("edited and unedited must be finite numbers")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer of at least 100, got {n_boot!r}")
    if not 0 < float(level) < 1:
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(int(n_boot), len(a)))
    num, den = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = den != 0
    if not ok.any():
        return float("nan"), float("nan")
    ratio = num[ok] / den[ok]
    tail = (1 - float(level)) / 2 * 100
    low, high = np.percentile(ratio, [tail, 100 - tail])
    return float(low), float(high)


def head_counts(n_heads: int, fractions: Sequence[float] = (0.01, 0.02, 0.04)) -> list[int]:
    """Numbers of heads to edit for fractions of a model's heads, as the paper's 1%, 2%, 4%.

    Each count is ``round(fraction * n_heads)``, at least 1 and more than the
    one before, so that a model with few heads still gets distinct counts
    (72 heads give 1, 2, 3; 270 give 3, 5, 11).

    Examples
    --------
    >>> from hp_mini.evaluation import head_counts
    >>> head_counts(270), head_counts(72), head_counts(1024)
    ([3, 5, 11], [1, 2, 3], [10, 20, 41])
    """
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions) or fractions != sorted(set(fractions)):
        raise ValueError(f"fractions must be increasing numbers in (0, 1], got {fractions}")
    counts: list[int] = []
    for f in fractions:
        k = max(1, round(f * n_heads), counts[-1] + 1 if counts else 1)
        if k > n_heads:
            raise ValueError(f"{n_heads} heads are too few for {len(fractions)} distinct counts")
        counts.append(int(k))
    return counts


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
    random_fill: str = "exact",
    reuse: bool = True,
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
    random_fill : {"exact", "nearest"}, default "exact"
        How controls are drawn where a layer has too few other heads (models
        with few heads per layer): ``"exact"`` refuses, ``"nearest"`` takes the
        missing heads from the nearest layers (see
        :func:`hp_mini.random_heads_like`). The number of heads so moved per
        ``k`` is in ``table.attrs["random_moved"]``.
    reuse : bool, default True
        Score each distinct head set once: a set that comes again (random draws
        repeat where a layer has few other heads to draw from) reuses the
        first result. ``evaluate`` must then be deterministic, as greedy
        generation is. ``table.attrs["distinct_random"]`` has the number of
        distinct random sets per ``k``.
    progress : bool
        Show a progress bar over edits.

    Returns
    -------
    pandas.DataFrame
        One row per (edit, metric): ``method`` ("unedited", each selection
        name, "random"), ``k``, ``draw``, ``heads`` (labels), ``metric``,
        ``value``, ``baseline`` (the unedited value) and ``normalised``
        (``value / baseline``; NaN where the baseline is 0). When
        ``evaluate`` keeps per-prompt values (``evaluate.per_prompt``, as
        :func:`qa_evaluator` and :func:`toxicity_evaluator` do), they are in
        ``table.attrs["per_prompt"]``, keyed by ``(method, k, draw)``, for
        :func:`add_intervals`.
    """
    import pandas as pd

    from .ranking import heads_moved, random_heads_like

    if not selections:
        raise ValueError("give at least one selection, e.g. {'SOMP': ranking.heads}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    names = list(selections)
    random_like = names[0] if random_like is None else random_like
    if random_like not in selections:
        raise KeyError(f"random_like={random_like!r} is not one of the selections {names}")

    moved: dict[int, int] = {}
    jobs: list[tuple[str, int, int, list[Head]]] = []
    for k in ks:
        for name in names:
            ranked = [tuple(h) for h in selections[name]]
            if len(ranked) < k:
                raise ValueError(f"selection {name!r} has {len(ranked)} heads, fewer than k={k}")
            jobs.append((name, k, 0, ranked[:k]))
        if pool is not None and n_random > 0:
            target = [tuple(h) for h in selections[random_like]][:k]
            draws = random_heads_like(target, pool, n_draws=n_random, seed=seed + k, fill=random_fill)
            moved[k] = heads_moved(target, pool)
            for d, draw in enumerate(draws):
                jobs.append(("random", k, d, list(draw)))

    iterator = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc=f"edits (alpha={alpha:g})", leave=False)

    outputs = {}
    per_prompt = {}

    def collect(key):
        if keep is not None:
            outputs[key] = getattr(evaluate, keep)
        if isinstance(getattr(evaluate, "per_prompt", None), Mapping):
            per_prompt[key] = {m: np.asarray(v, dtype=float) for m, v in evaluate.per_prompt.items()}

    if baseline is None:
        baseline = dict(evaluate())
        collect(("unedited", 0, 0))
    baseline = dict(baseline)
    rows = [("unedited", 0, 0, "", m, v) for m, v in baseline.items()]
    done: dict[tuple, tuple] = {}
    for name, k, d, chosen in iterator:
        key = tuple(sorted(chosen))
        if reuse and key in done:
            first, scores = done[key]
            if first in outputs:
                outputs[(name, k, d)] = outputs[first]
            if first in per_prompt:
                per_prompt[(name, k, d)] = per_prompt[first]
        else:
            with scale_heads(model, {h: alpha for h in chosen}, heads=heads):
                scores = dict(evaluate())
            collect((name, k, d))
            done[key] = ((name, k, d), scores)
        labels = " ".join(head_label(*h) for h in chosen)
        rows.extend((name, k, d, labels, m, v) for m, v in scores.items())
    table = pd.DataFrame(rows, columns=["method", "k", "draw", "heads", "metric", "value"])
    table["baseline"] = table["metric"].map(baseline)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["normalised"] = np.where(table["baseline"] != 0, table["value"] / table["baseline"], np.nan)
    if keep is not None:
        table.attrs["outputs"] = outputs
    if per_prompt:
        table.attrs["per_prompt"] = per_prompt
    table.attrs["random_moved"] = moved
    table.attrs["distinct_random"] = {
        k: len({tuple(sorted(c)) for n, kk, _, c in jobs if n == "random" and kk == k}) for k in moved
    }
    return table


def add_intervals(table, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Add bootstrap intervals of the normalised scores to a table of :func:`evaluate_head_edits`.

    For every edit and every metric with per-prompt values, the interval is
    :func:`bootstrap_ratio` of the edit's values against the unedited ones
    (paired over prompts). Count metrics (``toxic_count``, ``lexical_hits``)
    take the interval of their rate.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`evaluate_head_edits` with an evaluator that keeps
        ``per_prompt`` values, unedited run included (no ``baseline=``).
    n_boot, level, seed
        Passed to :func:`bootstrap_ratio`.

    Returns
    -------
    pandas.DataFrame
        A copy with columns ``ci_low`` and ``ci_high`` (NaN where no
        per-prompt values exist).
    """
    per_prompt = table.attrs.get("per_prompt")
    if not per_prompt or ("unedited", 0, 0) not in per_prompt:
        raise ValueError(
            "the table has no per-prompt values of the unedited model: run evaluate_head_edits without "
            "baseline= and with an evaluator that keeps evaluate.per_prompt (qa_evaluator, toxicity_evaluator)"
        )
    rate_of = {"toxic_count": "toxic_fraction", "toxic_count_pc": "toxic_fraction_pc", "lexical_hits": "lexical"}
    unedited = per_prompt[("unedited", 0, 0)]
    cache: dict = {}
    low, high = [], []
    for method, k, draw, metric in zip(table["method"], table["k"], table["draw"], table["metric"]):
        values = per_prompt.get((method, k, draw), {})
        rate = rate_of.get(metric, metric)
        key = (method, k, draw, rate)
        if key not in cache:
            ok = method != "unedited" and rate in values and rate in unedited
            cache[key] = (bootstrap_ratio(values[rate], unedited[rate], n_boot=n_boot, level=level, seed=seed)
                          if ok else (np.nan, np.nan))
        low.append(cache[key][0])
        high.append(cache[key][1])
    out = table.copy()
    out.attrs = dict(table.attrs)
    out["ci_low"], out["ci_high"] = low, high
    return out


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
    intervals: bool = False,
):
    """The paper's table layout: one row per metric, columns ``(k, method)`` with medians.

    Random controls show their median over draws; the other methods have a
    single draw. With ``iqr=True`` every cell is a string, and the random
    cells read ``"median [q25, q75]"`` (the interquartile range of the draws).
    With ``intervals=True`` (a table from :func:`add_intervals`) the cells of
    the single-draw methods read ``"value (low-high)"``, the bootstrap
    interval over prompts; it implies ``iqr=True``.
    """
    if intervals and "ci_low" not in table.columns:
        raise ValueError("intervals=True needs a table from add_intervals()")
    iqr = iqr or intervals
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
    if intervals:
        edits = table[(table["method"] != "unedited") & (table["method"] != "random")]
        ci = edits.groupby(["metric", "k", "method"])[["ci_low", "ci_high"]].first()
        for col in wide.columns:
            if col[1] == "random":
                continue
            cells = []
            for metric, value in zip(wide.index, wide[col]):
                lo, hi = ci.loc[(metric, col[0], col[1])] if (metric, col[0], col[1]) in ci.index else (np.nan, np.nan)
                text = f"{value:.{decimals}f}"
                if np.isfinite(lo) and np.isfinite(hi):
                    text += f" ({lo:.{decimals}f}-{hi:.{decimals}f})"
                cells.append(text)
            out[col] = cells
    return out


def edit_differences(a, b, metrics: Sequence[str] | None = None):
    """Compare two runs of the same edits, cell by cell (e.g. a live run with shipped results).

    Parameters
    ----------
    a, b : pandas.DataFrame
        Tables of :func:`evaluate_head_edits`, each
        for one experiment and ``alpha``.
    metrics : list of str, optional
        The metrics to compare (default: those in both).

    Returns
    -------
    pandas.DataFrame
        One row per (method, k, metric) present in both tables, random draws
        left out: ``heads_a``, ``heads_b``, ``value_a``, ``value_b`` and
        ``difference`` (``value_a - value_b``). Raises ValueError when the
        tables share no such row.
    """
    import pandas as pd

    keys = ["method", "k", "metric"]
    frames = []
    for table in (a, b):
        missing = {"method", "k", "metric", "value", "heads"} - set(table.columns)
        if missing:
            raise ValueError(f"a table lacks the columns {sorted(missing)}; pass tables of evaluate_head_edits")
        frames.append(table[table["method"] != "random"][keys + ["heads", "value"]])
    both = pd.merge(frames[0], frames[1], on=keys, suffixes=("_a", "_b"))
    if metrics is not None:
        both = both[both["metric"].isin(list(metrics))]
    if both.empty:
        raise ValueError("the two tables share no edit (method, k, metric) to compare")
    both["difference"] = both["value_a"] - both["value_b"]
    return both.reset_index(drop=True)

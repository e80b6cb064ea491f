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
>>> from hp_mini.experiments.driver import token_f1, exact_match
>>> token_f1("the United States", ["United States", "USA"])
1.0
>>> round(token_f1("Paris, France", ["Paris"]), 3)
0.667
>>> exact_match("Paris, France", ["Paris"])
0.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hp_mini.edit.scaling import scale_heads
from hp_mini.model.sites import Head, head_label

__all__ = ["evaluate_head_edits", "head_counts"]


def head_counts(n_heads: int, fractions: Sequence[float] = (0.01, 0.02, 0.04)) -> list[int]:
    """Numbers of heads to edit for fractions of a model's heads, as the paper's 1%, 2%, 4%.

    Each count is ``round(fraction * n_heads)``, at least 1 and more than the
    one before, so that a model with few heads still gets distinct counts
    (72 heads give 1, 2, 3; 270 give 3, 5, 11).

    Examples
    --------
    >>> from hp_mini.experiments.driver import head_counts
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

    from hp_mini.rank.controls import heads_moved, random_heads_like

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

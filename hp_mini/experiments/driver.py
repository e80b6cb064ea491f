"""The editing experiment: score a model under each head edit, beside random controls.

:func:`evaluate_head_edits` scales the top ``k`` heads of each selection (and
random control sets drawn like them, :func:`hp_mini.random_heads_like`) and
scores the model under each edit with an evaluator
(:mod:`hp_mini.experiments.evaluators`), returning one tidy table;
:func:`hp_mini.experiments.tables.edit_table` lays it out as the paper does.
:func:`head_counts` gives numbers of heads as shares of a model's heads: 1%,
2% and 4% by default; :func:`head_count_sets` gives those beside the paper's
own shares (8, 16 and 32 of 1,024 heads: 0.8%, 1.6% and 3.1%).

An evaluator may score part of its output with the model unedited (e.g. the
fluency of :func:`hp_mini.experiments.evaluators.qa_evaluator` with
``fluency=True``): when ``evaluate`` has a callable attribute
``score_unedited``, the driver calls it right after each edit's block has
exited, and adds its scores (and the per-prompt values it sets) to the edit's.

Besides its rows, the table keeps in ``table.attrs``: ``"random_moved"`` (per
``k``, how many heads of each control set were taken from neighbouring layers),
``"distinct_random"`` (per ``k``, the distinct control sets scored),
``"random_controls"`` (per control method, ``"random"`` and one
``"random (<selection>)"`` for every further name in ``random_like``: the
selection it matches, and per ``k`` the heads moved and the distinct sets),
``"per_prompt"`` (per edit ``(method, k, draw)``, the evaluator's per-prompt
values, for :func:`hp_mini.experiments.statistics.add_intervals`) and, with
``keep=``, ``"outputs"`` (per edit, what the evaluator kept).

Example
-------
>>> from hp_mini.experiments.driver import head_counts
>>> head_counts(270)
[3, 5, 11]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hp_mini.checks import renamed_keywords
from hp_mini.edit.scaling import scale_heads
from hp_mini.model.sites import Head, head_label

__all__ = ["HEAD_SHARES", "evaluate_head_edits", "head_count_sets", "head_counts", "is_random", "random_method"]

HEAD_SHARES: dict[str, tuple[float, ...]] = {
    "1-2-4%": (0.01, 0.02, 0.04),
    "paper": (8 / 1024, 16 / 1024, 32 / 1024),
}
"""Shares of a model's heads to edit: round percentages, and the paper's (8, 16 and 32 of its models' 1,024 heads)."""

def head_counts(n_heads: int, fractions: Sequence[float] = HEAD_SHARES["1-2-4%"]) -> list[int]:
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


def head_count_sets(n_heads: int, shares: Mapping[str, Sequence[float]] | None = None) -> dict[str, list[int]]:
    """Numbers of heads to edit for each set of shares: by default 1%, 2%, 4% and the paper's 0.8%, 1.6%, 3.1%.

    The paper edits 8, 16 and 32 of its models' 1,024 heads; :func:`head_counts`
    gives each set for ``n_heads``. Run the union of the counts (sorted, each
    once) to have both.

    Examples
    --------
    >>> from hp_mini.experiments.driver import head_count_sets
    >>> head_count_sets(270), head_count_sets(1024)["paper"]
    ({'1-2-4%': [3, 5, 11], 'paper': [2, 4, 8]}, [8, 16, 32])
    """
    shares = HEAD_SHARES if shares is None else shares
    return {name: head_counts(n_heads, fractions) for name, fractions in shares.items()}


def random_method(like: str, first: bool) -> str:
    """The method name of random controls drawn like the selection ``like``: ``"random"`` for the first."""
    return "random" if first else f"random ({like})"


def is_random(method: str) -> bool:
    """Whether a method name of :func:`evaluate_head_edits` is a random control (``"random"``, ``"random (...)"``)."""
    return method == "random" or method.startswith("random (")


@renamed_keywords(pool="control_pool", heads="sites")
def evaluate_head_edits(
    model,
    evaluate: Callable[[], Mapping[str, float]],
    selections: Mapping[str, Sequence[Head]],
    *,
    ks: Sequence[int],
    alpha: float = -1.0,
    control_pool=None, random_like: str | Sequence[str] | None = None, n_random: int = 10, seed: int = 0, random_fill: str = "exact",
    sites=None,
    baseline: Mapping[str, float] | None = None,
    keep: str | None = None,
    reuse: bool = True,
    progress: bool = True,
):
    """Score the model unedited and under each head edit, with random controls.

    Parameters
    ----------
    model : nn.Module
        The model that ``evaluate`` scores.
    evaluate : callable ``() -> dict[str, float]``
        Scores the model as it is (e.g. :func:`qa_evaluator`): once unedited,
        then once inside :func:`hp_mini.scale_heads` per edit.
    selections : mapping name -> list of (layer, head)
        Ranked head lists, best first (``{"SOMP": r.heads, "logit lens": ll.heads}``);
        the top ``k`` of each is edited.
    ks : list of int
        Numbers of heads to edit.
    alpha : float, default -1
        The scale: -1 inverts the heads, 0 removes them, 5 enhances them.
    control_pool : HeadActivations or list of (layer, head), optional
        All heads, to draw random controls from (:func:`hp_mini.random_heads_like`);
        no random controls without it. ``pool=`` is its old name (deprecated).
    random_like : str or list of str, optional
        The selection whose top ``k`` the controls match layer by layer and
        avoid (default: the first one). Several names draw controls like each:
        method ``"random"`` for the first, ``"random (<name>)"`` for the rest.
    n_random : int, default 10
        Random control sets per ``k``, drawn with the seed ``seed + k``.
    seed : int, default 0
    random_fill : {"exact", "nearest"}, default "exact"
        Where a layer has too few other heads for a control (models with few
        heads per layer): ``"exact"`` refuses, ``"nearest"`` takes the missing
        heads from the nearest layers (see :func:`hp_mini.random_heads_like`).
    sites : list of LayerHeads, optional
        Passed to :func:`hp_mini.scale_heads`. ``heads=`` is its old name (deprecated).
    baseline : dict, optional
        The unedited scores, when already known (``evaluate`` is then not
        called unedited).
    keep : str, optional
        An attribute of ``evaluate`` to collect after every call (e.g.
        ``"predictions"`` of :func:`qa_evaluator` with ``keep_predictions=True``)
        into ``table.attrs["outputs"]``, so the outputs of an edit need no second run.
    reuse : bool, default True
        Score each distinct head set once: a set that comes again (random draws
        repeat where a layer has few other heads to draw from) reuses the first
        result. ``evaluate`` must then be deterministic, as greedy generation is.
    progress : bool
        Show a progress bar over edits.

    Returns
    -------
    pandas.DataFrame
        One row per (edit, metric): ``method`` ("unedited", each selection
        name, "random", "random (<name>)"), ``k``, ``draw``, ``heads`` (labels), ``metric``,
        ``value``, ``baseline`` (the unedited value) and ``normalised``
        (``value / baseline``; NaN where the baseline is 0). ``table.attrs``
        holds ``random_moved``, ``distinct_random``, ``random_controls``,
        ``per_prompt`` and ``outputs`` (see the module docstring).
    """
    jobs, controls = _edit_jobs(selections, ks, control_pool, random_like, n_random, seed, random_fill)
    runs = _Runs(evaluate, keep)
    baseline = dict(runs.score(("unedited", 0, 0)) if baseline is None else baseline)
    rows = [("unedited", 0, 0, "", m, v) for m, v in baseline.items()]
    for name, k, d, chosen in _with_progress(jobs, alpha) if progress else jobs:
        scores = runs.reused((name, k, d), chosen) if reuse else None
        if scores is None:
            scores = runs.score((name, k, d), chosen, scale_heads(model, {h: alpha for h in chosen}, sites=sites))
        rows.extend((name, k, d, " ".join(head_label(*h) for h in chosen), m, v) for m, v in scores.items())
    return _table(rows, baseline, runs, controls, jobs)


def _edit_jobs(selections, ks, control_pool, random_like, n_random, seed, random_fill):
    """The edits to score, ``(method, k, draw, heads)``, and per ``k`` the control heads moved to other layers."""
    from hp_mini.rank.controls import heads_moved, random_heads_like

    if not selections:
        raise ValueError("give at least one selection, e.g. {'SOMP': ranking.heads}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    names = list(selections)
    likes = [names[0]] if random_like is None else [random_like] if isinstance(random_like, str) else list(random_like)
    unknown = [like for like in likes if like not in selections]
    if unknown or not likes or len(set(likes)) < len(likes):
        raise KeyError(f"random_like={random_like!r} must name distinct selections among {names}")
    controls = {random_method(like, i == 0): {"like": like, "moved": {}} for i, like in enumerate(likes)}
    jobs: list[tuple[str, int, int, list[Head]]] = []
    for k in ks:
        for name in names:
            ranked = [tuple(h) for h in selections[name]]
            if len(ranked) < k:
                raise ValueError(f"selection {name!r} has {len(ranked)} heads, fewer than k={k}")
            jobs.append((name, k, 0, ranked[:k]))
        for method, control in controls.items() if control_pool is not None and n_random > 0 else ():
            target = [tuple(h) for h in selections[control["like"]]][:k]
            draws = random_heads_like(target, control_pool, n_draws=n_random, seed=seed + k, fill=random_fill)
            control["moved"][k] = heads_moved(target, control_pool)
            jobs.extend((method, k, d, list(draw)) for d, draw in enumerate(draws))
    return jobs, controls


def _with_progress(jobs, alpha: float):
    from tqdm.auto import tqdm

    return tqdm(jobs, desc=f"edits (alpha={alpha:g})", leave=False)


class _Runs:
    """Runs of ``evaluate``: what it kept beside its scores, keyed by ``(method, k, draw)``, and each head set's run."""

    def __init__(self, evaluate, keep: str | None):
        self.evaluate, self.keep = evaluate, keep
        self.outputs: dict[tuple, object] = {}
        self.per_prompt: dict[tuple, dict[str, np.ndarray]] = {}
        self.done: dict[tuple, tuple] = {}  # a head set, sorted -> (the key of its first run, its scores)

    def score(self, key: tuple, chosen: list[Head] | None = None, edit=None) -> dict[str, float]:
        """Score the model inside ``edit`` (as it is, without one), then ``evaluate.score_unedited`` outside it."""
        with edit if edit is not None else contextlib.nullcontext():
            scores = dict(self.evaluate())
        unedited = getattr(self.evaluate, "score_unedited", None)
        if callable(unedited):
            scores.update(unedited())
        if self.keep is not None:
            self.outputs[key] = getattr(self.evaluate, self.keep)
        per_prompt = getattr(self.evaluate, "per_prompt", None)
        if isinstance(per_prompt, Mapping):
            self.per_prompt[key] = {m: np.asarray(v, dtype=float) for m, v in per_prompt.items()}
        if chosen is not None:
            self.done[tuple(sorted(chosen))] = (key, scores)
        return scores

    def reused(self, key: tuple, chosen: list[Head]) -> dict[str, float] | None:
        """The scores of the head set's earlier run, its kept values now under ``key`` too; None if not run yet."""
        found = self.done.get(tuple(sorted(chosen)))
        if found is None:
            return None
        first, scores = found
        for kept in (self.outputs, self.per_prompt):
            if first in kept:
                kept[key] = kept[first]
        return scores


def _table(rows, baseline: dict[str, float], runs: _Runs, controls: dict[str, dict], jobs):
    """The tidy table of the runs, normalised by the baseline, with its ``attrs``."""
    import pandas as pd

    from hp_mini.rank.controls import distinct_sets

    table = pd.DataFrame(rows, columns=["method", "k", "draw", "heads", "metric", "value"])
    table["baseline"] = table["metric"].map(baseline)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["normalised"] = np.where(table["baseline"] != 0, table["value"] / table["baseline"], np.nan)
    if runs.keep is not None:
        table.attrs["outputs"] = runs.outputs
    if runs.per_prompt:
        table.attrs["per_prompt"] = runs.per_prompt
    for method, control in controls.items():
        control["distinct"] = {k: distinct_sets([c for n, kk, _, c in jobs if n == method and kk == k])
                               for k in control["moved"]}
    table.attrs["random_moved"] = controls["random"]["moved"]
    table.attrs["distinct_random"] = controls["random"]["distinct"]
    table.attrs["random_controls"] = controls
    return table

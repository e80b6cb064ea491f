"""Confidence intervals for the editing experiments: paired bootstrap of a ratio.

An edit's effect is reported as the edited score over the unedited one, on the
same prompts. :func:`bootstrap_ratio` resamples the prompts (the same draws
for numerator and denominator) to give a percentile interval of that ratio;
:func:`add_intervals` adds one to every row of an experiment's table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["add_intervals", "bootstrap_ratio"]


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
    >>> from hp_mini.experiments.statistics import bootstrap_ratio
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

"""Tables of editing results, as the paper prints them.

:func:`summarize_edits` reduces the random draws of each setting to their
median; :func:`edit_table` lays out one row per method and one column per
number of heads; :func:`add_fluency` turns the mean negative log-likelihoods
of edited continuations into a fluency ratio; :func:`edit_differences`
compares two runs of the same experiment row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hp_mini.experiments.driver import is_random

__all__ = ["add_fluency", "edit_differences", "edit_table", "summarize_edits"]


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
    cells (``"random"`` and ``"random (<selection>)"``) read ``"median [q25, q75]"`` (the interquartile range of the draws).
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
        if is_random(col[1]):
            out[col] = [f"{m:.{decimals}f} [{a:.{decimals}f}, {b:.{decimals}f}]"
                        for m, a, b in zip(wide[col], q25[col], q75[col])]
    if intervals:
        edits = table[(table["method"] != "unedited") & ~table["method"].map(is_random)]
        ci = edits.groupby(["metric", "k", "method"])[["ci_low", "ci_high"]].first()
        for col in wide.columns:
            if is_random(col[1]):
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


def add_fluency(table):
    """The table with one ``"fluency"`` row added beside each ``"nll"`` row.

    A run scored with ``fluency=True`` (see
    :func:`hp_mini.experiments.evaluators.qa_evaluator`) records ``nll``, the
    unedited model's mean negative log-likelihood per token of the edited
    continuations, with the unedited continuations' mean as ``baseline``.
    Fluency is ``exp(baseline - value)``: 1 for continuations as likely as the
    model's own, lower for text the unedited model would not write. It is a
    ratio of geometric-mean token probabilities, so like ``normalised`` it
    reads "edited / unedited"; its ``value`` and ``normalised`` both hold it,
    and it has no bootstrap interval (``ci_low``, ``ci_high`` are NaN).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`hp_mini.experiments.driver.evaluate_head_edits` (or
        :meth:`hp_mini.experiments.recorded.EditResults.edits`) with ``nll``
        rows.

    Returns
    -------
    pandas.DataFrame
        A new table; ``table`` is left as it was.

    Raises
    ------
    ValueError
        When ``table`` has no ``nll`` rows (a run without ``fluency=True``), or
        already has ``fluency`` rows.
    """
    import pandas as pd

    missing = {"metric", "value", "baseline", "normalised"} - set(table.columns)
    if missing:
        raise ValueError(f"the table lacks the columns {sorted(missing)}; pass rows of evaluate_head_edits")
    if (table["metric"] == "fluency").any():
        raise ValueError("the table already has fluency rows: call add_fluency once")
    nll = table[table["metric"] == "nll"].copy()
    if nll.empty:
        raise ValueError("the table has no 'nll' rows to turn into fluency: score the edits with fluency=True "
                         "(qa_evaluator, toxicity_evaluator)")
    nll["metric"] = "fluency"
    nll["value"] = nll["normalised"] = np.exp(nll["baseline"].to_numpy(float) - nll["value"].to_numpy(float))
    nll["baseline"] = 1.0
    for column in ("ci_low", "ci_high"):
        if column in nll.columns:
            nll[column] = np.nan
    return pd.concat([table, nll], ignore_index=True)


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
        frames.append(table[~table["method"].map(is_random)][keys + ["heads", "value"]])
    both = pd.merge(frames[0], frames[1], on=keys, suffixes=("_a", "_b"))
    if metrics is not None:
        both = both[both["metric"].isin(list(metrics))]
    if both.empty:
        raise ValueError("the two tables share no edit (method, k, metric) to compare")
    both["difference"] = both["value_a"] - both["value_b"]
    return both.reset_index(drop=True)

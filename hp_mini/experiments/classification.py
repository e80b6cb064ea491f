"""The paper's image-classification edit, read beside the paper's MNIST row.

The experiment itself is :func:`hp_mini.experiments.driver.evaluate_head_edits`: the
top ``k`` heads of a ranking are inverted and a classifier's accuracy is divided
by the unedited accuracy, against random heads drawn like them and the logit
lens. This module holds what the two digit models of the book
(:mod:`hp_mini.vision.digits_vlm`, :mod:`hp_mini.vision.digits_clip`) need
around it:

- :data:`PAPER_MNIST`: the paper's MNIST row, as the paper reports it;
- :func:`edit_summary`: a model's results as numbers, one row per ``k``;
- :func:`paper_comparison`: the paper's row and a model's results in one
  table, by number and share of heads edited;
- :func:`one_head_at_a_time`: the effect of editing each head alone.
- :func:`removal_verdict`: whether one edit removes more accuracy than another.

Example
-------
>>> import hp_mini
>>> from hp_mini.experiments.driver import evaluate_head_edits
>>> from hp_mini.experiments import classification
>>> from hp_mini.vision import digits, digits_vlm
>>> model, processor = hp_mini.load_model("digits-vlm")                        # doctest: +SKIP
>>> test = digits.digits_dataset("test")                                        # doctest: +SKIP
>>> evaluate = digits_vlm.evaluator(model, processor, test["image"], test["label"])  # doctest: +SKIP
>>> table = evaluate_head_edits(model, evaluate, {"SOMP": somp.heads, "logit lens": lens.heads},
...                             ks=[1, 2, 4], control_pool=acts)                # doctest: +SKIP
>>> classification.paper_comparison(table, name="digits-vlm", n_heads=32)        # doctest: +SKIP
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

from hp_mini.model.sites import Head

__all__ = ["PAPER_MNIST", "edit_summary", "one_head_at_a_time", "paper_comparison", "removal_verdict"]


PAPER_MNIST: dict[str, object] = {
    "model": "LLaVA-NeXT-7B",
    "heads": 1024,
    "SOMP": {8: 0.69, 16: 0.28, 32: 0.12},
    "random": {32: 0.99},
    "logit lens": {32: 0.14},
}
"""The MNIST row of the paper's image-classification table (Basile et al., 2025).

Exact-match accuracy of LLaVA-NeXT-7B on MNIST with the top ``k`` heads
inverted, divided by the unedited accuracy, for ``k`` of its 1,024 heads:
SOMP at 8, 16 and 32 heads, random heads and the logit lens at 32. These are the
paper's numbers, typed from the paper; nothing here recomputes them.
"""

_METHODS = ("SOMP", "random", "logit lens")


def _check_table(table, metric: str) -> None:
    required = {"method", "k", "metric", "normalised"}
    if not hasattr(table, "columns") or not required <= set(table.columns):
        raise TypeError(
            "table must be the DataFrame of hp_mini.experiments.driver.evaluate_head_edits "
            f"(columns {sorted(required)} at least)"
        )
    if metric not in set(table["metric"]):
        raise ValueError(f"metric {metric!r} is not in the table; it has {sorted(set(table['metric']))}")


def edit_summary(table, metric: str = "accuracy", *, column: str = "normalised"):
    """One metric of an edit table as numbers: one row per ``k``, one column per method.

    Parameters
    ----------
    table : pandas.DataFrame
        The tidy table of :func:`hp_mini.experiments.driver.evaluate_head_edits`.
    metric : str, default "accuracy"
    column : {"normalised", "value"}, default "normalised"
        The score divided by the unedited score, or the score itself.

    Returns
    -------
    pandas.DataFrame
        Index ``k``; a column per selection (its normalised score), and for
        random controls ``random`` (the median over draws), ``random q25`` and
        ``random q75`` (the quartiles, as :func:`numpy.percentile` computes
        them) and ``random n`` (the number of draws). NaN where a method has no
        edit of that size.
    """
    import pandas as pd

    from hp_mini.experiments.tables import summarize_edits

    _check_table(table, metric)
    if column not in ("normalised", "value"):
        raise ValueError(f"column must be 'normalised' or 'value', got {column!r}")
    summary = summarize_edits(table, column=column).loc[metric]
    methods = [m for m in dict.fromkeys(table["method"]) if m != "unedited"]
    ks = sorted(int(k) for k in set(table.loc[table["method"] != "unedited", "k"]))
    out = pd.DataFrame(index=pd.Index(ks, name="k"))
    for method in methods:
        sub = summary.loc[method]
        out[method] = [float(sub.loc[k, "median"]) if k in sub.index else float("nan") for k in ks]
        if method == "random":
            for col, name in (("q25", "random q25"), ("q75", "random q75"), ("n", "random n")):
                out[name] = [float(sub.loc[k, col]) if k in sub.index else float("nan") for k in ks]
    return out


def removal_verdict(edited: float, other: float, *, tol: float = 0.02) -> str:
    """Whether an edit removes more, as much or less accuracy than another.

    Parameters
    ----------
    edited : float
        The accuracy left by the edit (normalised to the unedited model).
    other : float
        The accuracy left by the edit it is compared with (random heads, the
        logit-lens heads), normalised the same way.
    tol : float, default 0.02
        Differences up to ``tol`` count as "as much as".

    Returns
    -------
    str
        ``"more than"`` when ``edited`` is lower than ``other`` by more than
        ``tol`` (more accuracy removed), ``"less than"`` when it is higher by more
        than ``tol``, ``"as much as"`` otherwise: the words that fit "the SOMP
        heads remove ... the random heads".

    Raises
    ------
    ValueError
        An accuracy is NaN (no accuracy to compare: an unedited accuracy of 0?),
        or ``tol`` is negative or NaN.

    Examples
    --------
    >>> removal_verdict(0.40, 0.95), removal_verdict(0.94, 0.95), removal_verdict(0.95, 0.40)
    ('more than', 'as much as', 'less than')
    """
    edited, other, tol = float(edited), float(other), float(tol)
    if edited != edited or other != other:
        raise ValueError(
            f"cannot compare accuracies {edited} and {other}: NaN is no accuracy "
            "(was the unedited accuracy 0?)"
        )
    if not tol >= 0:
        raise ValueError(f"tol must be 0 or more, got {tol}")
    if abs(edited - other) <= tol:
        return "as much as"
    return "more than" if edited < other else "less than"


def paper_comparison(table, *, name: str, n_heads: int, metric: str = "accuracy", decimals: int = 2):
    """The paper's MNIST row and a model's edit results, one row per (model, heads edited).

    Parameters
    ----------
    table : pandas.DataFrame
        The tidy table of :func:`hp_mini.experiments.driver.evaluate_head_edits`, with
        selections named ``"SOMP"`` and (optionally) ``"logit lens"``, and
        random controls (``control_pool=``) where there are any.
    name : str
        The model's name, for the first column.
    n_heads : int
        The model's number of heads (for the share of heads edited).
    metric : str, default "accuracy"
        The metric of ``table`` to show, normalised to the unedited model.
    decimals : int, default 2

    Returns
    -------
    pandas.DataFrame
        Index ``(model, heads edited)``; columns ``share of heads``, ``SOMP``,
        ``random: median [IQR]`` and ``logit lens`` (strings; "–" where there is
        no number). The paper's rows come first, labelled with
        :data:`PAPER_MNIST`'s model and "(paper)".
    """
    import pandas as pd

    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int (the model's number of heads), got {n_heads!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _check_table(table, metric)
    if "SOMP" not in set(table["method"]):
        raise ValueError(f"the table has no selection named 'SOMP'; its methods are {sorted(set(table['method']))}")

    def fmt(v: float) -> str:
        return "–" if v != v else f"{v:.{decimals}f}"  # NaN: no such edit

    rows: dict[tuple[str, int], dict[str, str]] = {}
    paper_heads = int(PAPER_MNIST["heads"])  # type: ignore[call-overload]
    paper_name = f"{PAPER_MNIST['model']} (paper)"
    for k in sorted(PAPER_MNIST["SOMP"]):  # type: ignore[arg-type]
        row = {"share of heads": f"{k / paper_heads:.1%}"}
        for method in _METHODS:
            v = PAPER_MNIST[method].get(k)  # type: ignore[attr-defined]
            row["random: median [IQR]" if method == "random" else method] = "–" if v is None else fmt(v)
        rows[(paper_name, k)] = row

    ours = edit_summary(table, metric)
    for k in ours.index[ours["SOMP"].notna()]:
        r = ours.loc[k]
        row = {"share of heads": f"{k / n_heads:.1%}", "SOMP": fmt(r["SOMP"])}
        if "random" in r and r["random"] == r["random"]:
            row["random: median [IQR]"] = f"{fmt(r['random'])} [{fmt(r['random q25'])}, {fmt(r['random q75'])}]"
        else:
            row["random: median [IQR]"] = "–"
        row["logit lens"] = fmt(r["logit lens"]) if "logit lens" in r else "–"
        rows[(name, int(k))] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["model", "heads edited"])
    return out


def one_head_at_a_time(
    model,
    evaluate,
    heads: Sequence[Head],
    *,
    alpha: float = -1.0,
    baseline: Mapping[str, float] | None = None,
    progress: bool = False,
):
    """Score the model with each of ``heads`` edited alone.

    Parameters
    ----------
    model : nn.Module
    evaluate : callable ``() -> dict[str, float]``
        Scores the model as it is (e.g. :func:`hp_mini.vision.digits_vlm.evaluator`).
    heads : list of (layer, head)
        The heads to edit, one at a time (e.g. a ranking's ``heads``).
    alpha : float, default -1
        The scale of the edited head (-1 inverts it, 0 removes it).
    baseline : dict, optional
        The unedited scores, when already known.
    progress : bool, default False

    Returns
    -------
    pandas.DataFrame
        One row per head, in the order of ``heads``, indexed by its label
        (``"L2H3"``), with columns ``layer``, ``head`` and one per metric of
        ``evaluate``: the score with that head edited divided by the unedited
        score.
    """
    from hp_mini.experiments.driver import evaluate_head_edits
    from hp_mini.model.sites import head_label

    try:
        heads = [(operator.index(layer), operator.index(head)) for layer, head in heads]
    except (TypeError, ValueError):
        raise ValueError("heads must be a list of (layer, head) pairs of ints") from None
    if not heads:
        raise ValueError("give at least one (layer, head) pair")
    if any(v < 0 for h in heads for v in h):
        raise ValueError(f"heads must be non-negative (layer, head) pairs, got {[h for h in heads if min(h) < 0][:3]}")
    if len(set(heads)) != len(heads):
        raise ValueError("heads lists a head twice")
    labels = [head_label(*h) for h in heads]
    table = evaluate_head_edits(
        model, evaluate, {lab: [h] for lab, h in zip(labels, heads)}, ks=[1], alpha=alpha,
        baseline=baseline, progress=progress,
    )
    edited = table[table["method"] != "unedited"]
    out = edited.pivot(index="method", columns="metric", values="normalised").loc[labels]
    out.index.name, out.columns.name = "head", None
    out.insert(0, "head", [h for _, h in heads])
    out.insert(0, "layer", [layer for layer, _ in heads])
    return out

"""The verdicts of the paper's two vision experiments, read from a recorded run.

``benchmarks/vision_edits.py`` records the MNIST row and the captioning edits of
one LLaVA (:func:`hp_mini.experiments.recorded.load_vision_results`). This module
turns such a recording into the statements that chapter "Heads in a
vision-language model" makes about each model, by one rule for every model:

- :func:`mnist_row`: the paper's MNIST row beside the recorded one, every
  alpha side by side;
- :func:`mnist_verdicts`: at each head count and alpha, whether inverting (or
  removing) the top SOMP heads takes away more accuracy than the median random
  set and than the logit-lens heads, and whether it leaves less than half;
- :func:`caption_table`: keywords and CIDEr-D of every caption edit, SOMP
  beside the random and logit-lens controls;
- :func:`caption_verdicts`: whether an edit shows the paper's captioning
  effect (fewer or more of the concept's words than the unedited captions and
  than random heads, with the captions still captions).

Example
-------
>>> from hp_mini.experiments.recorded import load_vision_results
>>> from hp_mini.experiments import vision_verdicts
>>> run = load_vision_results("smollm2-llava")
>>> vision_verdicts.mnist_verdicts(run)[(-1.0, 32)]["below half"]
True
"""

from __future__ import annotations

from hp_mini.experiments.classification import edit_summary, paper_comparison, removal_verdict

__all__ = ["CHANGE", "INTACT", "caption_table", "caption_verdicts", "mnist_row", "mnist_verdicts"]

CHANGE = 0.1
"""A change of the concept's words per caption smaller than this share counts as none."""

INTACT = 0.5
"""An edit that leaves less than this share of the unedited CIDEr-D broke the captioning."""


def _alphas(results, experiment: str) -> list[float]:
    table = results.table
    mine = table[(table["experiment"] == experiment) & (table["method"] != "unedited")]
    return sorted({float(a) for a in mine["alpha"]})


def mnist_row(results, *, n_heads: int):
    """The paper's MNIST row beside a recorded run's, one column group per recorded alpha.

    Parameters
    ----------
    results : hp_mini.experiments.recorded.VisionResults
    n_heads : int
        The model's number of heads (for the share of heads edited).

    Returns
    -------
    pandas.DataFrame
        :func:`hp_mini.experiments.classification.paper_comparison` at each
        alpha, side by side under ``"alpha = A"`` after one ``share of heads``
        column. The paper reports alpha = -1 only, so its rows read "–" under
        any other alpha.
    """
    import pandas as pd

    alphas = _alphas(results, "mnist")
    if not alphas:
        raise ValueError(f"{results.model}: the recorded run has no MNIST edits")
    comparisons = {a: paper_comparison(results.edits("mnist", a), name=results.model, n_heads=n_heads)
                   for a in alphas}
    for a, c in comparisons.items():
        if a != -1.0:
            paper = c.index.get_level_values("model").str.endswith("(paper)")
            c.loc[paper, ["SOMP", "random: median [IQR]", "logit lens"]] = "–"
    return pd.concat({"": comparisons[alphas[0]][["share of heads"]],
                      **{f"alpha = {a:g}": c.drop(columns="share of heads") for a, c in comparisons.items()}},
                     axis=1)


def mnist_verdicts(results, *, tol: float = 0.02) -> dict[tuple[float, int], dict]:
    """The MNIST row's verdicts at every recorded alpha and head count.

    Parameters
    ----------
    results : hp_mini.experiments.recorded.VisionResults
        A recorded run with an ``"mnist"`` experiment.
    tol : float, default 0.02
        Differences of normalised accuracy up to ``tol`` count as "as much as"
        (:func:`hp_mini.experiments.classification.removal_verdict`).

    Returns
    -------
    dict
        ``(alpha, k)`` -> ``{"SOMP", "random", "random q25", "random q75",
        "logit lens"}`` (accuracy left, normalised to the unedited model; random
        as median and quartiles), ``"vs random"`` and ``"vs logit lens"``
        (``"more than"``, ``"as much as"`` or ``"less than"``: how much accuracy
        the SOMP heads remove compared with them) and ``"below half"`` (SOMP
        leaves less than half of the accuracy).

    Raises
    ------
    ValueError
        When the run has no MNIST edits.
    """
    alphas = _alphas(results, "mnist")
    if not alphas:
        raise ValueError(f"{results.model}: the recorded run has no MNIST edits")
    out = {}
    for alpha in alphas:
        summary = edit_summary(results.edits("mnist", alpha))
        for k in summary.index:
            r = summary.loc[k]
            numbers = {m: float(r[m]) for m in ("SOMP", "random", "random q25", "random q75", "logit lens")}
            out[(alpha, int(k))] = {
                **numbers,
                "vs random": removal_verdict(numbers["SOMP"], numbers["random"], tol=tol),
                "vs logit lens": removal_verdict(numbers["SOMP"], numbers["logit lens"], tol=tol),
                "below half": numbers["SOMP"] < 0.5,
            }
    return out


def _caption_edits(results) -> list[tuple[str, float, int]]:
    """``(concept, alpha, k)`` of every recorded caption edit, in the recording's order."""
    caption = results.meta["experiments"].get("caption")
    if not caption:
        raise ValueError(f"{results.model}: the recorded run has no captioning edits")
    return [(c, float(alpha), int(k)) for c in caption["concepts"] for alpha, k in caption["edits"]]


def _caption_summaries(results, concept: str, alpha: float, k: int) -> dict:
    table = results.edits(f"caption {concept}", alpha)
    return {m: edit_summary(table, m).loc[k] for m in ("keywords", "cider")}


def caption_table(results, decimals: int = 2):
    """Keywords and CIDEr-D of every caption edit of a recorded run, normalised to the unedited captions.

    Parameters
    ----------
    results : hp_mini.experiments.recorded.VisionResults
    decimals : int, default 2

    Returns
    -------
    pandas.DataFrame
        Index ``(concept, edit, setting)`` (``"inhibit"`` for alpha < 0, else
        ``"enhance"``; ``"alpha = A, k = K"``); columns ``(metric, method)`` with
        ``"keywords"`` and ``"CIDEr"`` for ``"SOMP"``, ``"random"`` (median
        [quartiles]) and ``"logit lens"``, as strings.
    """
    import pandas as pd

    rows = {}
    for concept, alpha, k in _caption_edits(results):
        summaries = _caption_summaries(results, concept, alpha, k)
        row = {}
        for metric, label in (("keywords", "keywords"), ("cider", "CIDEr")):
            r = summaries[metric]
            row[(label, "SOMP")] = f"{r['SOMP']:.{decimals}f}"
            row[(label, "random")] = (f"{r['random']:.{decimals}f} [{r['random q25']:.{decimals}f}, "
                                      f"{r['random q75']:.{decimals}f}]")
            row[(label, "logit lens")] = f"{r['logit lens']:.{decimals}f}"
        rows[(concept, "inhibit" if alpha < 0 else "enhance", f"alpha = {alpha:g}, k = {k}")] = row
    out = pd.DataFrame(rows).T
    out.index.names = ["concept", "edit", "setting"]
    return out


def caption_verdicts(results) -> dict[tuple[str, float], dict]:
    """Whether each caption edit of a recorded run shows the paper's effect.

    An inhibition (alpha < 0) shows it when the SOMP heads leave fewer of the
    concept's words per caption (by more than :data:`CHANGE`) and fewer than
    the lower quartile of the random sets; an enhancement when they give more
    words and more than the upper quartile. Either way the captions must keep at
    least :data:`INTACT` of the unedited CIDEr-D: an edit below it broke the
    captioning rather than removing or adding a concept.

    Parameters
    ----------
    results : hp_mini.experiments.recorded.VisionResults

    Returns
    -------
    dict
        ``(concept, alpha)`` -> ``{"k", "effect", "words", "intact", "SOMP",
        "random", "random q25", "random q75", "logit lens", "cider"}``:
        ``"words"`` is ``"fewer"``, ``"more"`` or ``"about as many"``; the
        numbers are the concept's words per caption (normalised) and
        ``"cider"`` the SOMP edit's normalised CIDEr-D.
    """
    out = {}
    for concept, alpha, k in _caption_edits(results):
        summaries = _caption_summaries(results, concept, alpha, k)
        s = summaries["keywords"]
        somp = float(s["SOMP"])
        words = "fewer" if somp < 1 - CHANGE else ("more" if somp > 1 + CHANGE else "about as many")
        beats_random = somp < s["random q25"] if alpha < 0 else somp > s["random q75"]
        cider_left = float(summaries["cider"]["SOMP"])
        intact = cider_left >= INTACT
        out[(concept, alpha)] = {
            "k": k,
            "effect": words == ("fewer" if alpha < 0 else "more") and bool(beats_random) and intact,
            "words": words,
            "intact": intact,
            **{m: float(s[m]) for m in ("SOMP", "random", "random q25", "random q75", "logit lens")},
            "cider": cider_left,
        }
    return out

"""The vision experiments' verdicts (hp_mini.experiments.vision_verdicts), on recordings made by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from hp_mini.experiments import vision_verdicts
from hp_mini.experiments.recorded import VisionResults


def _rows(experiment, alpha, k, metric, baseline, somp, lens, randoms):
    rows = [dict(experiment=experiment, alpha=float("nan"), method="unedited", k=0, draw=0, metric=metric,
                 value=baseline)]
    rows += [dict(experiment=experiment, alpha=alpha, method="SOMP", k=k, draw=0, metric=metric, value=somp),
             dict(experiment=experiment, alpha=alpha, method="logit lens", k=k, draw=0, metric=metric, value=lens)]
    rows += [dict(experiment=experiment, alpha=alpha, method="random", k=k, draw=d, metric=metric, value=v)
             for d, v in enumerate(randoms)]
    return rows


def _results(rows, caption_edits=()):
    table = pd.DataFrame(rows).assign(model="toy", heads="")
    table["baseline"] = table.groupby(["experiment", "metric"])["value"].transform(
        lambda v: v[table.loc[v.index, "method"] == "unedited"].iloc[0])
    table["normalised"] = table["value"] / table["baseline"]
    table = table.drop_duplicates(subset=["experiment", "alpha", "method", "k", "draw", "metric"])
    concepts = sorted({e.removeprefix("caption ") for e in table["experiment"] if e.startswith("caption ")})
    meta = {"experiments": {"mnist": {}}}
    if concepts:
        meta["experiments"]["caption"] = {"concepts": {c: {} for c in concepts},
                                          "edits": [list(e) for e in caption_edits]}
    return VisionResults(model="toy", table=table, meta=meta)


def test_mnist_verdicts_follow_the_medians_by_hand():
    # unedited accuracy 0.8; SOMP leaves 0.2 -> 0.25, random 0.6, 0.7, 0.8 -> median 0.875, lens 0.21 -> 0.2625
    rows = _rows("mnist", -1.0, 4, "accuracy", 0.8, 0.2, 0.21, [0.6, 0.7, 0.8])
    rows += _rows("mnist", -1.0, 8, "accuracy", 0.8, 0.7, 0.4, [0.71])[1:]
    v = vision_verdicts.mnist_verdicts(_results(rows))
    assert set(v) == {(-1.0, 4), (-1.0, 8)}
    assert v[(-1.0, 4)]["SOMP"] == pytest.approx(0.25) and v[(-1.0, 4)]["random"] == pytest.approx(0.875)
    assert v[(-1.0, 4)]["vs random"] == "more than" and v[(-1.0, 4)]["below half"]
    assert v[(-1.0, 4)]["vs logit lens"] == "as much as"  # 0.25 vs 0.2625: within 0.02
    assert v[(-1.0, 8)]["vs logit lens"] == "less than" and not v[(-1.0, 8)]["below half"]
    assert v[(-1.0, 8)]["vs random"] == "as much as"  # 0.875 vs 0.8875: within 0.02
    row = vision_verdicts.mnist_row(_results(rows), n_heads=32)
    assert row.loc[("toy", 4), ("alpha = -1", "SOMP")] == "0.25"
    assert row.loc[("toy", 8), ("", "share of heads")] == "25.0%"


def test_caption_verdicts_need_fewer_words_than_random_and_intact_captions():
    rows = []
    # inhibit colour: words 1.0 -> 0.3 (fewer), random 0.9..1.0, CIDEr 2.0 -> 1.6 (0.8: intact) -> the effect
    rows += _rows("caption colour", -1.0, 4, "keywords", 1.0, 0.3, 0.5, [0.9, 1.0, 0.95])
    rows += _rows("caption colour", -1.0, 4, "cider", 2.0, 1.6, 1.0, [1.9, 2.0, 2.0])
    # enhance colour: words 1.0 -> 1.5 (more) but CIDEr 2.0 -> 0.4 (0.2: broken) -> not the effect
    rows += _rows("caption colour", 5.0, 8, "keywords", 1.0, 1.5, 1.0, [1.0, 1.0])[1:]
    rows += _rows("caption colour", 5.0, 8, "cider", 2.0, 0.4, 2.0, [2.0, 2.0])[1:]
    results = _results(rows, caption_edits=[(-1.0, 4), (5.0, 8)])
    v = vision_verdicts.caption_verdicts(results)
    assert v[("colour", -1.0)]["effect"] and v[("colour", -1.0)]["words"] == "fewer"
    assert v[("colour", -1.0)]["cider"] == pytest.approx(0.8)
    enhance = v[("colour", 5.0)]
    assert enhance["words"] == "more" and not enhance["intact"] and not enhance["effect"]
    table = vision_verdicts.caption_table(results)
    assert table.loc[("colour", "inhibit", "alpha = -1, k = 4"), ("keywords", "SOMP")] == "0.30"
    assert table.loc[("colour", "enhance", "alpha = 5, k = 8"), ("CIDEr", "SOMP")] == "0.20"


def test_a_run_without_an_experiment_says_so():
    empty = VisionResults(model="toy", table=pd.DataFrame(
        columns=["experiment", "alpha", "method", "k", "draw", "metric", "value", "baseline", "normalised"]),
        meta={"experiments": {}})
    with pytest.raises(ValueError, match="toy: the recorded run has no MNIST edits"):
        vision_verdicts.mnist_verdicts(empty)
    with pytest.raises(ValueError, match="toy: the recorded run has no captioning edits"):
        vision_verdicts.caption_verdicts(empty)

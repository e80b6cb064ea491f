"""Checkers for the chapter "Editing text generation"."""

from __future__ import annotations

import torch

from hp_mini.exercises import checker


@checker("editing.f1")
def _check_f1(f1) -> None:
    from hp_mini.experiments.qa import token_f1

    cases = [
        ("Paris", ["Paris"]),
        ("the United States", ["USA", "United States"]),
        ("Paris, France", ["Paris"]),
        ("Vincent van Gogh", ["van Gogh"]),
        ("a a b", ["a b b"]),
        ("Berlin", ["Paris", "Rome"]),
        ("The Sun!", ["sun"]),
    ]
    for prediction, answers in cases:
        want = token_f1(prediction, answers)
        got = float(f1(prediction, answers))
        if prediction == "the United States" and abs(got - 1.0) > 1e-9:
            raise AssertionError(f"f1({prediction!r}, {answers}) = {got:.3f}, expected 1.0: drop the articles and take the best answer")
        if prediction == "The Sun!" and abs(got - 1.0) > 1e-9:
            raise AssertionError(f"f1({prediction!r}, {answers}) = {got:.3f}, expected 1.0: lower-case and drop punctuation first")
        assert abs(got - want) < 1e-9, f"f1({prediction!r}, {answers}) returned {got:.4f}, expected {want:.4f}"


@checker("editing.scale_z")
def _check_scale_z(scale_z) -> None:
    g = torch.Generator().manual_seed(0)
    n_heads, d_head = 4, 3
    z = torch.randn(2, 5, n_heads * d_head, generator=g)
    original = z.clone()
    got = torch.as_tensor(scale_z(z, n_heads, 2, -1.0))
    assert torch.equal(z, original), "scale_z changed its input in place: work on a copy (z.clone())"
    assert got.shape == z.shape, f"returned shape {tuple(got.shape)}, expected {tuple(z.shape)}"
    want = z.reshape(2, 5, n_heads, d_head).clone()
    want[..., 2, :] *= -1.0
    want = want.reshape(z.shape)
    interleaved = z.reshape(2, 5, d_head, n_heads).clone()
    interleaved[..., 2] *= -1.0
    if torch.allclose(got, interleaved.reshape(z.shape)):
        raise AssertionError("you scaled every n_heads-th feature: head h owns the contiguous slice z[..., h*d_head:(h+1)*d_head]")
    assert torch.allclose(got, want), "wrong slice scaled: head h owns z[..., h*d_head:(h+1)*d_head]"
    assert torch.allclose(torch.as_tensor(scale_z(z, n_heads, 0, 5.0))[..., d_head:], z[..., d_head:]), (
        "other heads must stay unchanged"
    )


@checker("editing.bootstrap")
def _check_bootstrap(interval) -> None:
    import numpy as np

    from hp_mini.experiments.statistics import bootstrap_ratio

    rng = np.random.default_rng(5)
    unedited = (rng.random(200) < 0.3).astype(float)
    edited = unedited * (rng.random(200) < 0.5)
    got = interval(edited, unedited, 4000, 0)
    assert len(got) == 2, f"return (low, high), got {got!r}"
    low, high = (float(v) for v in got)
    want_low, want_high = bootstrap_ratio(edited, unedited, n_boot=4000, seed=0)
    ratio = edited.mean() / unedited.mean()
    assert low <= high, f"low {low:.3f} is above high {high:.3f}"
    unpaired = []
    for _ in range(4000):
        a = rng.choice(edited, len(edited))
        b = rng.choice(unedited, len(unedited))
        if b.mean():
            unpaired.append(a.mean() / b.mean())
    wide = np.percentile(unpaired, [2.5, 97.5])
    if abs(low - wide[0]) < 0.02 and abs(high - wide[1]) < 0.02 and (wide[1] - wide[0]) > 1.3 * (want_high - want_low):
        raise AssertionError("you resampled the edited and unedited values separately: resample prompts, and keep "
                             "each prompt's two values together (the same indices for both arrays)")
    assert low < ratio < high, f"the interval ({low:.3f}, {high:.3f}) does not contain the ratio {ratio:.3f}"
    # a different random generator gives slightly different percentiles: compare with a tolerance
    assert abs(low - want_low) < 0.03 and abs(high - want_high) < 0.03, (
        f"got ({low:.3f}, {high:.3f}), expected about ({want_low:.3f}, {want_high:.3f}): take the 2.5th and "
        "97.5th percentiles of mean(edited[idx]) / mean(unedited[idx]) over resampled prompt indices idx"
    )


@checker("editing.random_summary")
def _check_random_summary(random_summary) -> None:
    import pandas as pd

    rows = [("unedited", 0, "m", 1.0), ("SOMP", 3, "m", 0.2), ("random", 5, "other", 9.0)]
    rows += [("random", 3, "m", v) for v in (1.0, 0.8, 1.2, 0.9)]
    rows += [("random", 5, "m", v) for v in (0.5, 1.5, 1.0)]
    table = pd.DataFrame(rows, columns=["method", "k", "metric", "normalised"])
    got = random_summary(table, "m")
    assert list(got.index) == [3, 5], f"index is {list(got.index)}, expected the ks [3, 5] of the random rows"
    for col in ("median", "q25", "q75"):
        assert col in got.columns, f"column {col!r} is missing"
    sub = table[(table.method == "random") & (table.metric == "m")].groupby("k")["normalised"]
    for k in (3, 5):
        if abs(float(got.loc[k, "median"]) - float(sub.mean()[k])) < 1e-9 and abs(sub.mean()[k] - sub.median()[k]) > 1e-9:
            raise AssertionError("that is the mean; the paper reports the median of the random draws")
        assert abs(float(got.loc[k, "median"]) - float(sub.median()[k])) < 1e-9, f"median at k={k} is wrong"
        assert abs(float(got.loc[k, "q25"]) - float(sub.quantile(0.25)[k])) < 1e-9, f"q25 at k={k} is wrong"
        assert abs(float(got.loc[k, "q75"]) - float(sub.quantile(0.75)[k])) < 1e-9, f"q75 at k={k} is wrong"


#: The investigation of "Editing text generation": the smallest category it counts.
MIN_CATEGORY = 10


def category_drops(model: str = "smollm2-135m"):
    """Mean F1 lost per QA category when the model's largest SOMP selection is inverted (recorded run).

    The drop of a question is its unedited F1 minus its F1 with the top
    ``k = ks[-1]`` SOMP heads inverted (alpha = -1), from the per-prompt values
    of :func:`hp_mini.experiments.recorded.load_edit_results`; categories with fewer than
    :data:`MIN_CATEGORY` evaluation questions are left out.
    """
    import numpy as np
    import pandas as pd

    from hp_mini.experiments.recorded import load_edit_results
    from hp_mini.experiments.textdata import load_text_dataset

    run = load_edit_results(model)
    k = run.ks("qa", -1.0)[-1]
    p = run.prompts[(run.prompts["experiment"] == "qa") & (run.prompts["alpha"] == -1.0)]
    base = p[p["method"] == "unedited"].sort_values("prompt")["f1"].to_numpy()
    somp = p[(p["method"] == "SOMP") & (p["k"] == k)].sort_values("prompt")["f1"].to_numpy()
    categories = load_text_dataset("qa_large", split="evaluation")["category"]
    frame = pd.DataFrame({"category": categories, "drop": base - somp})
    sizes = frame["category"].value_counts()
    kept = frame[frame["category"].isin(sizes[sizes >= MIN_CATEGORY].index)]
    return kept.groupby("category")["drop"].mean().sort_values(ascending=False).astype(np.float64)


@checker("editing.hardest_category")
def _check_hardest_category(answer) -> None:
    drops = category_drops()
    assert isinstance(answer, str), f"answer with the category's name (a str), e.g. 'capital', got {answer!r}"
    if answer not in drops.index:
        raise AssertionError(f"{answer!r} is not a category with at least {MIN_CATEGORY} evaluation questions; "
                             f"those are {sorted(drops.index)}")
    if answer == drops.index[-1]:
        raise AssertionError(f"{answer!r} loses the least F1 ({drops[answer]:.2f}): sort by the drop, largest first")
    best = drops.index[0]
    assert answer == best, (f"{answer!r} loses {drops[answer]:.2f} F1 on average; one category loses more. Compare "
                            "each question's unedited F1 with its F1 under the edit, then average per category")

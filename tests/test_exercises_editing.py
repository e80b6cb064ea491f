import pandas as pd
import pytest
import torch

from hp_mini.experiments.qa import token_f1
from hp_mini.exercises import ExerciseError, check


def test_f1():
    assert check("editing.f1", token_f1, quiet=True)

    def no_normalisation(prediction, answers):
        return max(float(prediction == a) for a in answers)

    with pytest.raises(ExerciseError, match="articles|lower-case|expected"):
        check("editing.f1", no_normalisation, quiet=True)


def test_scale_z():
    def good(z, n_heads, head, alpha):
        d = z.shape[-1] // n_heads
        z = z.clone()
        z[..., head * d : (head + 1) * d] *= alpha
        return z

    assert check("editing.scale_z", good, quiet=True)

    def strided(z, n_heads, head, alpha):
        z = z.clone()
        z[..., head::n_heads] *= alpha
        return z

    with pytest.raises(ExerciseError, match="contiguous"):
        check("editing.scale_z", strided, quiet=True)


def test_bootstrap():
    import numpy as np

    from hp_mini.experiments.statistics import bootstrap_ratio

    def good(edited, unedited, n_boot, seed):
        return bootstrap_ratio(edited, unedited, n_boot=n_boot, seed=seed)

    assert check("editing.bootstrap", good, quiet=True)

    def own_rng(edited, unedited, n_boot, seed):
        rng = np.random.default_rng(seed + 1)
        idx = rng.integers(0, len(edited), (n_boot, len(edited)))
        return tuple(np.percentile(edited[idx].mean(1) / unedited[idx].mean(1), [2.5, 97.5]))

    assert check("editing.bootstrap", own_rng, quiet=True)

    def unpaired(edited, unedited, n_boot, seed):
        rng = np.random.default_rng(seed)
        a = edited[rng.integers(0, len(edited), (n_boot, len(edited)))].mean(1)
        b = unedited[rng.integers(0, len(edited), (n_boot, len(edited)))].mean(1)
        return tuple(np.percentile(a / b, [2.5, 97.5]))

    with pytest.raises(ExerciseError, match="separately"):
        check("editing.bootstrap", unpaired, quiet=True)


def test_random_summary():
    def good(table, metric):
        g = table[(table.method == "random") & (table.metric == metric)].groupby("k")["normalised"]
        return pd.DataFrame({"median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75)})

    assert check("editing.random_summary", good, quiet=True)

    def mean(table, metric):
        g = table[(table.method == "random") & (table.metric == metric)].groupby("k")["normalised"]
        return pd.DataFrame({"median": g.mean(), "q25": g.quantile(0.25), "q75": g.quantile(0.75)})

    with pytest.raises(ExerciseError, match="mean"):
        check("editing.random_summary", mean, quiet=True)


def test_hardest_category_against_an_independent_computation():
    import numpy as np

    from hp_mini.exercises.editing import category_drops
    from hp_mini.experiments.recorded import load_edit_results
    from hp_mini.experiments.textdata import load_text_dataset

    run = load_edit_results("smollm2-135m")
    p = run.prompts.query("experiment == 'qa' and alpha == -1")
    k = max(run.ks("qa", -1.0))
    categories = np.array(load_text_dataset("qa_large", split="evaluation")["category"])
    drops = {}
    for category in set(categories):
        idx = np.flatnonzero(categories == category)
        if len(idx) < 10:
            continue
        base = p[(p.method == "unedited") & p.prompt.isin(idx)]["f1"].mean()
        edit = p[(p.method == "SOMP") & (p.k == k) & p.prompt.isin(idx)]["f1"].mean()
        drops[category] = base - edit
    got = category_drops()
    assert set(got.index) == set(drops)
    for category, value in drops.items():
        assert got[category] == pytest.approx(value, abs=1e-9)
    hardest = max(drops, key=drops.get)
    assert check("editing.hardest_category", hardest, quiet=True)
    with pytest.raises(ExerciseError, match="loses the least"):
        check("editing.hardest_category", min(drops, key=drops.get), quiet=True)
    with pytest.raises(ExerciseError, match="not a category"):
        check("editing.hardest_category", "city", quiet=True)  # 5 questions: too few
    second = sorted(drops, key=drops.get)[-2]
    with pytest.raises(ExerciseError, match="one category loses more"):
        check("editing.hardest_category", second, quiet=True)

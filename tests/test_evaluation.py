import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import hp_mini
from helpers import tiny_edit_llama
from hp_mini.experiments.words import count_words, lexical_rate, profanity_probability
from hp_mini.experiments.tables import edit_table, summarize_edits
from hp_mini.experiments.driver import evaluate_head_edits
from hp_mini.experiments.qa import exact_match, first_answer, normalize_answer, token_f1


def test_squad_normalisation_and_f1():
    assert normalize_answer("The  United-States!") == "unitedstates"
    assert normalize_answer("A cat, an owl") == "cat owl"
    assert token_f1("the United States", ["USA", "United States"]) == 1.0
    # precision 1/2, recall 1 -> F1 2/3
    assert math.isclose(token_f1("Paris France", "Paris"), 2 / 3)
    assert token_f1("Berlin", ["Paris"]) == 0.0
    assert token_f1("", [""]) == 1.0
    assert exact_match("the Paris", ["paris"]) == 1.0
    assert exact_match("Paris France", ["Paris"]) == 0.0
    with pytest.raises(ValueError):
        token_f1("x", [])


def test_first_answer_cuts_the_next_turn():
    assert first_answer(" France\n\nQ: What is") == "France"
    assert first_answer(" Italy Q: next") == "Italy"


def test_lexical_rate_counts_whole_words_only():
    texts = ["You are a clown, a CLOWN!", "clownish behaviour", "nothing here"]
    assert lexical_rate(texts, ["clown"]) == pytest.approx(2 / 3)
    assert count_words(texts + ["a bull shit story"], ["clown", "Bull Shit", "owl"]) == {"clown": 2, "bull shit": 1}
    with pytest.raises(ValueError):
        lexical_rate([], ["clown"])


def test_profanity_probability_orders_texts():
    pytest.importorskip("profanity_check")
    p = profanity_probability(["have a lovely day", "shut up you stupid idiot"])
    assert p.shape == (2,) and p[1] > 0.5 > p[0]


@pytest.fixture(scope="module")
def tiny():
    return tiny_edit_llama()


def test_evaluate_head_edits_table_and_controls(tiny):
    ids = torch.tensor([[1, 5, 7, 9]])
    calls = []

    def evaluate():
        with torch.no_grad():
            logit = float(tiny(ids).logits[0, -1, 3])
        calls.append(logit)
        return {"logit": logit, "const": 2.0}

    pool = [(layer, head) for layer in range(3) for head in range(4)]
    somp = [(2, 1), (1, 0), (2, 3), (0, 0)]
    lens = [(0, 2), (1, 1), (2, 0)]
    table = evaluate_head_edits(tiny, evaluate, {"SOMP": somp, "logit lens": lens}, ks=[1, 2], control_pool=pool,
                                n_random=3, seed=1, progress=False)
    # 1 unedited + per k: 2 selections + each distinct random draw once (draws can repeat)
    random_rows = table[(table.method == "random") & (table.metric == "logit")]
    distinct = random_rows.groupby("k")["heads"].nunique().to_dict()
    assert table.attrs["distinct_random"] == distinct and len(random_rows) == 2 * 3
    assert len(calls) == 1 + 2 * 2 + sum(distinct.values())
    assert set(table.method) == {"unedited", "SOMP", "logit lens", "random"}
    assert (table[table.metric == "const"].normalised == 1.0).all()
    base = table[(table.method == "unedited") & (table.metric == "logit")].value.item()
    assert base == calls[0]
    # the edit really happened: recompute SOMP k=2 by hand
    with hp_mini.scale_heads(tiny, {h: -1.0 for h in somp[:2]}):
        with torch.no_grad():
            want = float(tiny(ids).logits[0, -1, 3])
    got = table[(table.method == "SOMP") & (table.k == 2) & (table.metric == "logit")]
    assert got.value.item() == pytest.approx(want)
    assert got.normalised.item() == pytest.approx(want / base)
    assert got.heads.item() == "L2H1 L1H0"
    # random controls: same per-layer counts as SOMP's top k, disjoint from it
    for _, row in table[(table.method == "random") & (table.metric == "logit")].iterrows():
        heads = [(int(s[1:].split("H")[0]), int(s.split("H")[1])) for s in row.heads.split()]
        chosen = somp[: row.k]
        assert sorted(layer for layer, _ in heads) == sorted(layer for layer, _ in chosen)
        assert not set(heads) & set(chosen)
    # outputs of every edit can be kept, keyed by (method, k, draw)
    def evaluate_keeping():
        result = evaluate()
        evaluate_keeping.seen = result["logit"]
        return result

    kept = evaluate_head_edits(tiny, evaluate_keeping, {"SOMP": somp}, ks=[2], control_pool=pool, n_random=2,
                               seed=1, keep="seen", progress=False)
    outputs = kept.attrs["outputs"]
    assert set(outputs) == {("unedited", 0, 0), ("SOMP", 2, 0), ("random", 2, 0), ("random", 2, 1)}
    assert outputs[("SOMP", 2, 0)] == pytest.approx(want)
    # the model is unedited again afterwards
    with torch.no_grad():
        assert float(tiny(ids).logits[0, -1, 3]) == base


def test_evaluate_head_edits_takes_the_old_keywords_pool_and_heads_with_a_deprecation_warning(tiny):
    def evaluate():
        with torch.no_grad():
            return {"logit": float(tiny(torch.tensor([[1, 5, 7]])).logits[0, -1, 3])}

    pool = [(layer, head) for layer in range(3) for head in range(4)]
    sites = hp_mini.attention_heads(tiny)
    new = evaluate_head_edits(tiny, evaluate, {"a": [(2, 1), (1, 0)]}, ks=[2], control_pool=pool, n_random=2,
                              sites=sites, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = evaluate_head_edits(tiny, evaluate, {"a": [(2, 1), (1, 0)]}, ks=[2], pool=pool, n_random=2,
                                  heads=sites, progress=False)
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    heads_message, pool_message = sorted(str(w.message) for w in caught)
    assert "'heads' is now called 'sites'; write sites=" in heads_message
    assert "'pool' is now called 'control_pool'; write control_pool=" in pool_message
    assert all(w.filename == __file__ for w in caught), "the warning must point at the caller's line"
    pd.testing.assert_frame_equal(old, new)
    assert set(old.method) == {"unedited", "a", "random"}
    with pytest.raises(TypeError, match="give control_pool= only"):
        evaluate_head_edits(tiny, evaluate, {"a": [(2, 1)]}, ks=[1], pool=pool, control_pool=pool, progress=False)


def test_qa_evaluator_scores_the_first_line_per_group_and_keeps_the_predictions(monkeypatch):
    import hp_mini.experiments.evaluators as ev

    asked = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        asked.append((list(prompts), kwargs))
        return [" Paris\nQ: next", " the Rome", " June"]

    monkeypatch.setattr(ev, "generate", fake_generate)
    evaluate = ev.qa_evaluator(None, None, ["Q1", "Q2", "Q3"], [["Paris"], ["Madrid"], ["June", "July"]],
                               ["country", "country", "other"], prefix="P:", keep_predictions=True)
    scores = evaluate()
    assert asked == [(["P:Q1", "P:Q2", "P:Q3"], {"max_new_tokens": 6, "batch_size": 128, "stop": "\n",
                                                 "share_prefixes": True})]
    assert scores == {"f1": pytest.approx(2 / 3), "f1_country": 0.5, "f1_other": 1.0}
    assert evaluate.predictions == ["Paris", "the Rome", "June"]
    assert evaluate.per_prompt["f1"].tolist() == [1.0, 0.0, 1.0] and evaluate.per_prompt["f1_other"].tolist() == [1.0]
    assert not hasattr(ev.qa_evaluator(None, None, ["Q"], [["A"]]), "predictions")
    with pytest.raises(ValueError, match="2 prompts but 1 answer lists"):
        ev.qa_evaluator(None, None, ["Q1", "Q2"], [["A"]])


def test_toxicity_evaluator_keeps_the_generations_only_when_asked(monkeypatch):
    import hp_mini.experiments.evaluators as ev

    monkeypatch.setattr(ev, "generate", lambda *a, **k: [" a pig", " nice"])
    monkeypatch.setattr(ev, "toxicity_scores", lambda t: np.array([[0.9] + [0] * 5, [0.1] + [0] * 5]))
    kept = ev.toxicity_evaluator(None, None, ["a", "b"], ["pig"], second_classifier=False, keep_generations=True)
    scores = kept()
    assert kept.generations == [" a pig", " nice"]
    assert scores == {"toxic_fraction": 0.5, "toxicity": 0.5, "lexical": 0.5, "toxic_count": 1.0, "lexical_hits": 1.0}
    plain = ev.toxicity_evaluator(None, None, ["a", "b"], ["pig"], second_classifier=False)
    assert plain() == scores and not hasattr(plain, "generations")


def test_summaries(tiny):
    import pandas as pd

    rows = [("unedited", 0, 0, "", "m", 2.0)]
    rows += [("random", 3, d, "", "m", v) for d, v in enumerate([1.0, 2.0, 3.0, 4.0])]
    rows += [("SOMP", 3, 0, "", "m", 1.0)]
    table = pd.DataFrame(rows, columns=["method", "k", "draw", "heads", "metric", "value"])
    table["baseline"] = 2.0
    table["normalised"] = table["value"] / 2.0
    s = summarize_edits(table)
    r = s.loc[("m", "random", 3)]
    assert r["median"] == pytest.approx(1.25) and r["q25"] == pytest.approx(0.875) and r["n"] == 4
    wide = edit_table(table)
    assert wide.loc["m", (3, "SOMP")] == 0.5 and wide.loc["m", (3, "random")] == 1.25
    text = edit_table(table, iqr=True)
    assert text.loc["m", (3, "random")] == "1.25 [0.88, 1.62]" and text.loc["m", (3, "SOMP")] == "0.50"
    with pytest.raises(ValueError):
        evaluate_head_edits(tiny, lambda: {"m": 1.0}, {}, ks=[1])
    with pytest.raises(ValueError):
        evaluate_head_edits(tiny, lambda: {"m": 1.0}, {"a": [(0, 0)]}, ks=[2])


def test_known_baseline_is_not_recomputed(tiny):
    calls = []

    def evaluate():
        calls.append(1)
        return {"m": 4.0}

    table = evaluate_head_edits(tiny, evaluate, {"a": [(0, 0), (1, 1)]}, ks=[1, 2], baseline={"m": 2.0},
                                progress=False)
    assert len(calls) == 2  # the two edits only
    assert (table[table.method == "a"].normalised == 2.0).all()


def test_toxicity_evaluator_reports_counts_behind_the_lexical_rate(monkeypatch):
    import hp_mini.experiments.evaluators as ev

    texts = [" you clown", " a clown and a pig", " nice"]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(texts))
    monkeypatch.setattr(ev, "profanity_probability", lambda t: np.array([0.9, 0.6, 0.1]))
    monkeypatch.setattr(ev, "toxicity_scores", lambda t: np.array([[0.2] + [0] * 5, [0.7] + [0] * 5, [0.4] + [0] * 5]))
    evaluate = ev.toxicity_evaluator(None, None, ["a", "b", "c"], ["clown", "pig"])
    scores = evaluate()
    assert scores["lexical_hits"] == 3.0 and scores["lexical"] == pytest.approx(1.0)
    # the Jigsaw classifier is the main one, profanity-check the second
    assert scores["toxic_fraction"] == pytest.approx(1 / 3) and scores["toxic_count"] == 1.0
    assert scores["toxicity"] == pytest.approx(1.3 / 3)
    assert scores["toxic_fraction_pc"] == pytest.approx(2 / 3) and scores["toxic_count_pc"] == 2.0
    per = evaluate.per_prompt
    assert per["lexical"].tolist() == [1.0, 2.0, 0.0] and per["toxic_fraction"].tolist() == [0.0, 1.0, 0.0]
    for metric, values in per.items():
        assert scores[metric] == pytest.approx(values.mean())


def _bootstrap_oracle(a, b, n_boot, level, seed):
    """The paired percentile bootstrap written out loop by loop."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = []
    for row in idx:
        den = sum(b[i] for i in row) / len(row)
        if den != 0:
            ratios.append(sum(a[i] for i in row) / len(row) / den)
    ratios.sort()
    tail = (1 - level) / 2
    return np.percentile(ratios, [100 * tail, 100 * (1 - tail)])


def test_bootstrap_ratio_matches_a_loop_and_covers_the_ratio():
    from hp_mini.experiments.statistics import bootstrap_ratio

    rng = np.random.default_rng(3)
    unedited = rng.random(60)
    edited = unedited * 0.5 + rng.random(60) * 0.1
    low, high = bootstrap_ratio(edited, unedited, n_boot=500, level=0.9, seed=7)
    assert (low, high) == pytest.approx(tuple(_bootstrap_oracle(edited, unedited, 500, 0.9, 7)))
    assert low < edited.mean() / unedited.mean() < high
    # identical runs give a degenerate interval at 1
    assert bootstrap_ratio(unedited, unedited) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize(
    "edited, unedited, kwargs, message",
    [
        ([1.0], [1.0], {}, "at least 2"),
        ([1.0, 2.0], [1.0], {}, "same length"),
        ([1.0, np.nan], [1.0, 1.0], {}, "finite"),
        ([1.0, 2.0], [1.0, 1.0], {"n_boot": 10}, "n_boot"),
        ([1.0, 2.0], [1.0, 1.0], {"level": 1.5}, "level"),
    ],
)
def test_bootstrap_ratio_rejects_bad_input(edited, unedited, kwargs, message):
    from hp_mini.experiments.statistics import bootstrap_ratio

    with pytest.raises(ValueError, match=message):
        bootstrap_ratio(edited, unedited, **kwargs)


def test_head_counts_are_the_papers_fractions_and_distinct():
    from hp_mini.experiments.driver import head_counts

    assert head_counts(270) == [3, 5, 11]
    assert head_counts(1024) == [10, 20, 41]
    assert head_counts(72) == [1, 2, 3]  # round() alone would give 1, 1, 3
    with pytest.raises(ValueError, match="n_heads"):
        head_counts(0)
    with pytest.raises(ValueError, match="increasing"):
        head_counts(100, (0.04, 0.01))
    with pytest.raises(ValueError, match="too few"):
        head_counts(2, (0.1, 0.2, 0.3))


def test_intervals_come_from_the_per_prompt_values(tiny):
    from hp_mini.experiments.statistics import add_intervals, bootstrap_ratio
    from hp_mini.experiments.tables import edit_table

    values = {"unedited": np.array([1.0, 1.0, 0.0, 1.0]), "edit": np.array([0.0, 1.0, 0.0, 0.0])}
    state = {"now": "unedited"}

    def evaluate():
        evaluate.per_prompt = {"acc": values[state["now"]]}
        state["now"] = "edit"
        return {"acc": float(evaluate.per_prompt["acc"].mean())}

    table = evaluate_head_edits(tiny, evaluate, {"a": [(0, 0), (1, 1)]}, ks=[1], progress=False)
    with_ci = add_intervals(table, n_boot=300, seed=1)
    row = with_ci[(with_ci.method == "a") & (with_ci.metric == "acc")].iloc[0]
    assert row.normalised == pytest.approx(1 / 3)
    assert (row.ci_low, row.ci_high) == pytest.approx(bootstrap_ratio(values["edit"], values["unedited"], n_boot=300, seed=1))
    cell = edit_table(with_ci, ["acc"], intervals=True).iloc[0, 0]
    assert cell == f"0.33 ({row.ci_low:.2f}-{row.ci_high:.2f})"
    with pytest.raises(ValueError, match="add_intervals"):
        edit_table(table, ["acc"], intervals=True)
    with pytest.raises(ValueError, match="per-prompt"):
        add_intervals(evaluate_head_edits(tiny, lambda: {"acc": 1.0}, {"a": [(0, 0)]}, ks=[1], progress=False))


def test_random_controls_fill_from_the_nearest_layers_when_a_layer_is_full():
    from hp_mini.rank.controls import heads_moved, random_heads_like

    pool = [(layer, head) for layer in range(4) for head in range(4)]
    selected = [(2, 0), (2, 1), (2, 2), (1, 0)]  # layer 2 keeps only one other head
    with pytest.raises(ValueError, match="fill='nearest'"):
        random_heads_like(selected, pool)
    draws = random_heads_like(selected, pool, n_draws=20, seed=4, fill="nearest")
    assert heads_moved(selected, pool) == 2
    for draw in draws:
        assert len(draw) == 4 and len(set(draw)) == 4 and not set(draw) & set(selected)
        layers = [layer for layer, _ in draw]
        # layer 2's one free head, layer 1's count kept, two heads from layers 1 and 3 (distance 1)
        assert layers.count(2) == 1 and (2, 3) in draw
        assert all(abs(layer - 2) <= 1 for layer in layers)
    assert len({tuple(d) for d in draws}) > 1
    assert random_heads_like(selected, pool, n_draws=3, seed=4, fill="nearest") == draws[:3]


def test_edit_differences_pairs_the_single_edits_of_two_runs():
    from hp_mini.experiments.tables import edit_differences

    cols = ["method", "k", "draw", "heads", "metric", "value"]
    a = pd.DataFrame([("unedited", 0, 0, "", "m", 1.0), ("SOMP", 3, 0, "L1H1", "m", 0.5),
                      ("random", 3, 0, "L1H2", "m", 0.9), ("SOMP", 5, 0, "L1H1 L2H2", "m", 0.4)], columns=cols)
    b = pd.DataFrame([("unedited", 0, 0, "", "m", 1.0), ("SOMP", 3, 0, "L1H1", "m", 0.45),
                      ("random", 3, 0, "L1H3", "m", 0.1)], columns=cols)
    d = edit_differences(a, b)
    assert list(zip(d.method, d.k)) == [("unedited", 0), ("SOMP", 3)]  # random draws and unmatched rows left out
    assert d.difference.tolist() == pytest.approx([0.0, 0.05])
    with pytest.raises(ValueError, match="share no edit"):
        edit_differences(a, b, metrics=["other"])
    with pytest.raises(ValueError, match="columns"):
        edit_differences(a.drop(columns="heads"), b)


def test_a_head_set_that_comes_again_is_scored_once(tiny):
    calls = []

    def evaluate():
        calls.append(1)
        evaluate.per_prompt = {"m": np.array([1.0, float(len(calls))])}
        return {"m": float(len(calls))}

    # both selections start with the same head: the second k=1 edit is the first one again
    table = evaluate_head_edits(tiny, evaluate, {"a": [(0, 0), (1, 1)], "b": [(0, 0), (1, 0)]}, ks=[1, 2],
                                progress=False)
    assert len(calls) == 1 + 3  # unedited, a@1 (= b@1), a@2, b@2
    a1 = table[(table.method == "a") & (table.k == 1)].value.iloc[0]
    b1 = table[(table.method == "b") & (table.k == 1)].value.iloc[0]
    assert a1 == b1 == 2.0
    assert table.attrs["per_prompt"][("b", 1, 0)]["m"].tolist() == [1.0, 2.0]
    again = evaluate_head_edits(tiny, evaluate, {"a": [(0, 0), (1, 1)], "b": [(0, 0), (1, 0)]}, ks=[1, 2],
                                reuse=False, progress=False)
    assert len(calls) == 4 + 5 and again[(again.method == "b") & (again.k == 1)].value.iloc[0] != a1

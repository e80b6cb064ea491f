import math

import numpy as np
import pytest
import torch

import hp_mini
from hp_mini.evaluation import (
    count_words,
    edit_table,
    evaluate_head_edits,
    exact_match,
    first_answer,
    lexical_rate,
    normalize_answer,
    profanity_probability,
    summarize_edits,
    token_f1,
)


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
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    return LlamaForCausalLM(cfg).eval()


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
    table = evaluate_head_edits(tiny, evaluate, {"SOMP": somp, "logit lens": lens}, ks=[1, 2], pool=pool,
                                n_random=3, seed=1, progress=False)
    # 1 unedited + per k: 2 selections + 3 random draws
    assert len(calls) == 1 + 2 * (2 + 3)
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

    kept = evaluate_head_edits(tiny, evaluate_keeping, {"SOMP": somp}, ks=[2], pool=pool, n_random=2, seed=1,
                               keep="seen", progress=False)
    outputs = kept.attrs["outputs"]
    assert set(outputs) == {("unedited", 0, 0), ("SOMP", 2, 0), ("random", 2, 0), ("random", 2, 1)}
    assert outputs[("SOMP", 2, 0)] == pytest.approx(want)
    # the model is unedited again afterwards
    with torch.no_grad():
        assert float(tiny(ids).logits[0, -1, 3]) == base


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
    import hp_mini.evaluation as ev

    texts = [" you clown", " a clown and a pig", " nice"]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(texts))
    monkeypatch.setattr(ev, "profanity_probability", lambda t: np.array([0.9, 0.6, 0.1]))
    scores = ev.toxicity_evaluator(None, None, ["a", "b", "c"], ["clown", "pig"])()
    assert scores["lexical_hits"] == 3.0 and scores["lexical"] == pytest.approx(1.0)
    assert scores["toxic_fraction"] == pytest.approx(2 / 3)

"""Controls of the editing experiments: distinct random sets, both sets of head counts, geography groups, fluency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hp_mini
from helpers import tiny_edit_llama
from hp_mini.experiments.driver import evaluate_head_edits, head_count_sets, head_counts, is_random
from hp_mini.experiments.evaluators import continuation_nll, qa_evaluator, toxicity_evaluator
from hp_mini.experiments.tables import edit_table
from hp_mini.experiments.textdata import GEOGRAPHY_CATEGORIES, load_text_dataset, qa_groups
from hp_mini.rank.controls import distinct_sets, random_heads_like

POOL = [(layer, head) for layer in range(3) for head in range(4)]


@pytest.fixture(scope="module")
def tiny():
    return tiny_edit_llama()


class LetterTokenizer:
    """One token per character (ids 2..41), a start token 1 before every prompt, end of sequence 0."""

    pad_token_id = eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": ([1] if add_special_tokens else []) + [2 + ord(c) % 40 for c in text]}


def nll_by_hand(model, tok, prompt: str, continuation: str) -> float:
    """Mean -log p of the continuation's tokens, from one unpadded forward pass of prompt + continuation."""
    head = tok(prompt)["input_ids"]
    tail = tok(continuation, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
    with torch.no_grad():
        logp = model(torch.tensor([head + tail])).logits[0].double().log_softmax(-1)
    return -float(np.mean([logp[len(head) - 1 + j, t] for j, t in enumerate(tail)]))


# --------------------------------------------------------------------------- random control sets


def test_random_draws_are_distinct_sets_while_the_layers_allow():
    selected = [(0, 1), (2, 0), (2, 3)]  # layer 0: 3 free heads for 1; layer 2: 2 free heads for 2 -> 3 sets
    draws = random_heads_like(selected, POOL, n_draws=3, seed=0)
    assert distinct_sets(draws) == 3
    more = random_heads_like(selected, POOL, n_draws=7, seed=0)
    assert len(more) == 7 and distinct_sets(more) == 3 and more[:3] == draws  # repeats only once all are drawn
    big = [(1, 0)]
    pool = [(layer, head) for layer in range(3) for head in range(16)]
    for seed in range(20):  # 15 possible sets: 10 draws are always 10 distinct sets
        assert distinct_sets(random_heads_like(big, pool, n_draws=10, seed=seed)) == 10


def test_random_draws_are_distinct_with_nearest_fill():
    pool = [(layer, head) for layer in range(4) for head in range(4)]
    selected = [(2, 0), (2, 1), (2, 2), (1, 0)]
    draws = random_heads_like(selected, pool, n_draws=8, seed=4, fill="nearest")
    assert distinct_sets(draws) == 8
    assert all(len(d) == 4 and not set(d) & set(selected) for d in draws)


def test_distinct_sets_ignores_the_order_of_heads():
    assert distinct_sets([[(1, 0), (2, 1)], [(2, 1), (1, 0)], [(1, 2), (2, 1)]]) == 2
    assert distinct_sets([]) == 0


def test_the_count_of_distinct_random_sets_is_recorded_per_control(tiny):
    ids = torch.tensor([[1, 5, 7, 9]])

    def evaluate():
        with torch.no_grad():
            return {"logit": float(tiny(ids).logits[0, -1, 3])}

    selections = {"a": [(0, 1), (2, 0), (2, 3)], "b": [(1, 2), (0, 0), (2, 2)], "lens": [(1, 1), (0, 3), (2, 1)]}
    table = evaluate_head_edits(tiny, evaluate, selections, ks=[1, 3], control_pool=POOL, random_like=["a", "b"],
                                n_random=4, progress=False)
    controls = table.attrs["random_controls"]
    assert set(controls) == {"random", "random (b)"} and controls["random (b)"]["like"] == "b"
    for method, control in controls.items():
        rows = table[(table.method == method) & (table.metric == "logit")]
        assert len(rows) == 2 * 4
        assert control["distinct"] == rows.groupby("k")["heads"].agg(lambda h: distinct_sets(
            [s.split() for s in h])).to_dict()
        for _, row in rows.iterrows():  # each control matches its own selection's layers
            layers = sorted(int(s[1:].split("H")[0]) for s in row.heads.split())
            assert layers == sorted(layer for layer, _ in selections[control["like"]][: row.k])
    assert controls["random"]["distinct"] == {1: 3, 3: 3}  # 3 possible sets like a's top 3: all drawn
    assert table.attrs["distinct_random"] == controls["random"]["distinct"]
    assert is_random("random (b)") and is_random("random") and not is_random("randomised")
    cells = edit_table(table, ["logit"], iqr=True)
    assert "[" in cells[(3, "random (b)")].iloc[0] and "[" not in cells[(3, "b")].iloc[0]
    with pytest.raises(KeyError, match="distinct selections"):
        evaluate_head_edits(tiny, evaluate, selections, ks=[1], control_pool=POOL, random_like=["a", "zz"],
                            progress=False)


# --------------------------------------------------------------------------- head counts


def test_head_count_sets_give_one_two_four_percent_and_the_papers_shares():
    sets = head_count_sets(270)
    assert sets == {"1-2-4%": head_counts(270), "paper": [2, 4, 8]}
    assert head_count_sets(1024)["paper"] == [8, 16, 32]  # the paper's 8, 16, 32 of 1,024 heads
    assert head_count_sets(72) == {"1-2-4%": [1, 2, 3], "paper": [1, 2, 3]}  # the union runs each k once
    assert head_count_sets(100, {"x": (0.1,)}) == {"x": [10]}


# --------------------------------------------------------------------------- geography groups


def test_qa_groups_split_the_other_group_into_geography_and_the_rest():
    ev = load_text_dataset("qa_large", split="evaluation")
    members = qa_groups(ev["category"], ev["group"])
    for names, group, category in zip(members, ev["group"], ev["category"]):
        assert names[0] == group
        if group == "other":
            assert names[1] == ("geography" if category in GEOGRAPHY_CATEGORIES else "non_geography")
        else:
            assert names == ("country",)
    counts = {g: sum(g in m for m in members) for g in ("country", "other", "geography", "non_geography")}
    assert counts["geography"] + counts["non_geography"] == counts["other"] == 183
    assert counts["geography"] == 80  # capital, continent, US states (cities, postal codes), hand-written cities
    with pytest.raises(ValueError, match="one of each"):
        qa_groups(["capital"], ["other", "other"])


def test_qa_evaluator_reports_geography_and_non_geography_beside_country_and_other(monkeypatch):
    import hp_mini.experiments.evaluators as ev

    monkeypatch.setattr(ev, "generate", lambda *a, **k: [" France", " Oslo", " seven", " Lima"])
    members = qa_groups(["capital_country", "capital", "number", "continent"], ["country", "other", "other", "other"])
    evaluate = qa_evaluator(None, None, ["q"] * 4, [["France"], ["Oslo"], ["7", "seven"], ["Asia"]], members)
    scores = evaluate()
    assert scores == {"f1": 0.75, "f1_country": 1.0, "f1_other": pytest.approx(2 / 3), "f1_geography": 0.5,
                      "f1_non_geography": 1.0}
    assert evaluate.per_prompt["f1_geography"].tolist() == [1.0, 0.0]
    plain = qa_evaluator(None, None, ["q"] * 4, [["France"], ["Oslo"], ["7"], ["Asia"]],
                         ["country", "other", "other", "other"])
    assert set(plain()) == {"f1", "f1_country", "f1_other"}  # one group per prompt: as before
    with pytest.raises(ValueError, match="groups\\[1\\]"):
        qa_evaluator(None, None, ["q", "q"], [["a"], ["b"]], ["country", ()])


# --------------------------------------------------------------------------- fluency


def test_continuation_nll_matches_a_hand_computation_on_a_tiny_model(tiny):
    tok = LetterTokenizer()
    prompts = ["Q: ab?\nA:", "hello there", "x"]
    continuations = [" cd\n", " friend, how are you", ""]  # the empty one is scored as the end-of-sequence token
    got = continuation_nll(tiny, tok, prompts, continuations, batch_size=2)
    want = [nll_by_hand(tiny, tok, p, c) for p, c in zip(prompts, continuations)]
    assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_nll(tiny, tok, ["a", "b"], ["c"])


def test_continuation_nll_gives_the_same_values_on_the_padded_path(tiny, monkeypatch):
    import hp_mini.experiments.evaluators as ev
    from hp_mini.edit.tree import TreeSupport

    tok = LetterTokenizer()
    prompts = ["Q: ab?\nA:", "Q: ab?\nA: x", "x"]  # two share a prefix: one node each in the tree
    continuations = [" cd\n", " y z", ""]
    want = [nll_by_hand(tiny, tok, p, c) for p, c in zip(prompts, continuations)]
    tree = continuation_nll(tiny, tok, prompts, continuations, batch_size=3)
    monkeypatch.setattr(ev, "tree_support", lambda model: TreeSupport(reason="no tree in this test"))
    padded = continuation_nll(tiny, tok, prompts, continuations, batch_size=2)
    assert tree == pytest.approx(want, abs=1e-5) and padded == pytest.approx(want, abs=1e-5)


def test_tree_log_probs_refuses_starts_outside_the_sequences(tiny):
    from hp_mini.edit.tree import tree_log_probs, tree_support

    for starts in ([0], [3], [1, 1]):
        with pytest.raises(ValueError, match="at least 1 and below"):
            tree_log_probs(tiny, [[1, 2, 3]], starts, tree_support(tiny))


def test_fluency_is_scored_by_the_unedited_model_outside_each_edit(tiny, monkeypatch):
    import hp_mini.experiments.evaluators as ev

    tok = LetterTokenizer()
    prompts, continuations = ["Q: ab?\nA:", "Q: efg?\nA:"], [" cd\n", " h i\n"]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(continuations))  # the same text under every edit
    evaluate = qa_evaluator(tiny, tok, prompts, [["cd"], ["hi"]], fluency=True)
    table = evaluate_head_edits(tiny, evaluate, {"a": [(2, 1), (1, 0)]}, ks=[1, 2], control_pool=POOL, n_random=2,
                                progress=False)
    unedited = [nll_by_hand(tiny, tok, p, c) for p, c in zip(prompts, continuations)]
    rows = table[table.metric == "nll"]
    assert len(rows) == 1 + 2 + 2 * 2
    assert rows.value.to_numpy() == pytest.approx(np.mean(unedited), abs=1e-6)  # edits off while scoring
    perplexity = table[table.metric == "perplexity"].value.to_numpy()
    assert perplexity == pytest.approx(np.mean(np.exp(unedited)), rel=1e-5)
    assert table.attrs["per_prompt"][("a", 2, 0)]["nll"] == pytest.approx(unedited, abs=1e-6)
    with hp_mini.scale_heads(tiny, {(2, 1): -1.0, (1, 0): -1.0}):  # scoring inside the edit would differ
        inside = continuation_nll(tiny, tok, prompts, continuations)
    assert not np.allclose(inside, unedited, atol=1e-4)


def test_fluency_has_bootstrap_intervals_like_the_other_metrics(tiny, monkeypatch):
    import hp_mini.experiments.evaluators as ev
    from hp_mini.experiments.statistics import add_intervals

    tok = LetterTokenizer()
    texts = iter([[" ab", " cd", " ef"], [" zz", " q", " rst"]])
    monkeypatch.setattr(ev, "generate", lambda *a, **k: next(texts))
    monkeypatch.setattr(ev, "toxicity_scores", lambda t: np.zeros((len(t), 6)))
    evaluate = toxicity_evaluator(tiny, tok, ["a b", "c", "d e f"], ["pig"], second_classifier=False, fluency=True)
    table = add_intervals(evaluate_head_edits(tiny, evaluate, {"a": [(0, 0)]}, ks=[1], progress=False),
                          n_boot=200)
    row = table[(table.method == "a") & (table.metric == "perplexity")].iloc[0]
    assert np.isfinite(row.ci_low) and row.ci_low <= row.normalised <= row.ci_high


def test_fluency_scores_each_continuation_of_a_prompt_once(tiny, monkeypatch):
    import hp_mini.experiments.evaluators as ev

    tok = LetterTokenizer()
    prompts = ["Q: ab?\nA:", "Q: efg?\nA:", "Q: x?\nA:"]
    runs = iter([[" cd\n", " h\n", " y\n"], [" cd\n", " zz\n", " y\n"], [" cd\n", " h\n", " y\n"]])
    monkeypatch.setattr(ev, "generate", lambda *a, **k: next(runs))
    asked = []
    real = ev.continuation_nll
    monkeypatch.setattr(ev, "continuation_nll", lambda m, t, p, c, **k: asked.append(list(c)) or real(m, t, p, c))
    evaluate = qa_evaluator(tiny, tok, prompts, [["cd"], ["h"], ["y"]], fluency=True)
    got = []
    for _ in range(3):
        evaluate()
        evaluate.score_unedited()
        got.append(evaluate.per_prompt["nll"])
    assert asked == [[" cd\n", " h\n", " y\n"], [" zz\n"]]  # the third run is all remembered
    second = [" cd\n", " zz\n", " y\n"]
    assert got[1] == pytest.approx([nll_by_hand(tiny, tok, p, c) for p, c in zip(prompts, second)], abs=1e-5)
    assert np.array_equal(got[0], got[2])


def test_score_unedited_before_evaluate_is_refused(tiny):
    evaluate = qa_evaluator(tiny, LetterTokenizer(), ["Q: a?\nA:"], [["b"]], fluency=True)
    with pytest.raises(RuntimeError, match="call evaluate\\(\\) first"):
        evaluate.score_unedited()
    assert not hasattr(qa_evaluator(tiny, LetterTokenizer(), ["Q"], [["b"]]), "score_unedited")


@pytest.mark.slow
def test_continuation_nll_matches_a_hand_computation_on_smollm2(smollm2):
    model, tok = smollm2
    prompts = ["Q: What is the capital of France?\nA:", "The weather today is"]
    continuations = [" Paris\n", " sunny and warm, with a light breeze."]
    got = continuation_nll(model, tok, prompts, continuations)
    want = [nll_by_hand(model, tok, p, c) for p, c in zip(prompts, continuations)]
    assert got == pytest.approx(want, abs=1e-4)
    assert 0 < got[0] < 10 and 0 < got[1] < 10

"""The introduction's checkers accept right answers and explain typical wrong ones."""

from __future__ import annotations

import pytest
import torch

from helpers import direct_logits_by_hook

from hp_mini.exercises import ExerciseError, check


def _nucleus(logits, tokenizer, p):
    probs, ids = logits.softmax(-1).sort(descending=True)
    n = int((probs.cumsum(0) < p).sum()) + 1
    return [(tokenizer.decode(i), float(q)) for q, i in zip(probs[:n], ids[:n])]


def test_nucleus_right_and_wrong():
    assert check("intro.nucleus", _nucleus, quiet=True)

    def short(logits, tokenizer, p):  # stops before the total reaches p
        probs, ids = logits.softmax(-1).sort(descending=True)
        n = max(1, int((probs.cumsum(0) < p).sum()))
        return [(tokenizer.decode(i), float(q)) for q, i in zip(probs[:n], ids[:n])]

    def fixed(logits, tokenizer, p):  # the top 3, whatever p
        top = logits.softmax(-1).topk(3)
        return [(tokenizer.decode(i), float(q)) for q, i in zip(top.values, top.indices)]

    def raw(logits, tokenizer, p):  # logits in place of probabilities
        return [(t, float(logits[[1, 4, 2, 3, 0, 5][i]])) for i, (t, _) in enumerate(_nucleus(logits, tokenizer, p))]

    def reversed_order(logits, tokenizer, p):
        return _nucleus(logits, tokenizer, p)[::-1]

    with pytest.raises(ExerciseError, match="keep the token that takes the running total to p"):
        check("intro.nucleus", short, quiet=True)
    with pytest.raises(ExerciseError, match="expected"):
        check("intro.nucleus", fixed, quiet=True)
    with pytest.raises(ExerciseError, match="logits, not probabilities"):
        check("intro.nucleus", raw, quiet=True)
    with pytest.raises(ExerciseError, match="wrong order"):
        check("intro.nucleus", reversed_order, quiet=True)


def test_capital_head_matches_an_independent_hook(smollm2):
    import hp_mini
    from hp_mini.exercises.intro import PARIS_PROMPT, ROME_PROMPT

    model, tok = smollm2
    rome = direct_logits_by_hook(model, tok, ROME_PROMPT, " Rome")
    paris = direct_logits_by_hook(model, tok, PARIS_PROMPT, " Paris")
    n_heads = rome.shape[1]
    order = rome.flatten().argsort(descending=True)
    best = divmod(int(order[0]), n_heads)
    also = best in {divmod(int(i), n_heads) for i in paris.flatten().topk(3).indices}
    assert check("intro.capital_head", {"head": best, "also_paris": also}, quiet=True)
    assert check("intro.capital_head", {"head": hp_mini.head_label(*best), "also_paris": also}, quiet=True)
    with pytest.raises(ExerciseError, match="is right, but it"):
        check("intro.capital_head", {"head": best, "also_paris": not also}, quiet=True)
    paris_best = divmod(int(paris.flatten().argmax()), n_heads)
    rank, other = next(
        (r, divmod(int(i), n_heads)) for r, i in enumerate(order[1:], 2) if divmod(int(i), n_heads) != paris_best
    )
    with pytest.raises(ExerciseError, match=f"number {rank} by its direct logit"):
        check("intro.capital_head", {"head": other, "also_paris": also}, quiet=True)
    if paris_best != best:
        with pytest.raises(ExerciseError, match="pushes ' Paris' most"):
            check("intro.capital_head", {"head": paris_best, "also_paris": True}, quiet=True)
    for missing in ((rome.shape[0], 0), f"L0H{n_heads}"):  # as a pair and as a label
        with pytest.raises(ExerciseError, match="does not exist"):
            check("intro.capital_head", {"head": missing, "also_paris": False}, quiet=True)
    with pytest.raises(ExerciseError, match="a dict"):
        check("intro.capital_head", best, quiet=True)

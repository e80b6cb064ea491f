"""The introduction's checkers accept right answers and explain typical wrong ones."""

from __future__ import annotations

import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def test_top_heads_right_and_wrong():
    def right(share, k):
        n_heads = share.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads) for i in share.flatten().topk(k).indices]

    def swapped(share, k):
        n_layers = share.shape[0]
        return [(int(i) // n_layers, int(i) % n_layers) for i in share.flatten().topk(k).indices]

    assert check("intro.top_heads", right, quiet=True)
    with pytest.raises(ExerciseError, match="computed with the number of layers"):
        check("intro.top_heads", swapped, quiet=True)


def test_next_tokens_right_and_wrong():
    def right(logits, tokenizer, k):
        top = logits.softmax(-1).topk(k)
        return [(tokenizer.decode(i), float(p)) for p, i in zip(top.values, top.indices)]

    def logits_only(logits, tokenizer, k):
        top = logits.topk(k)
        return [(tokenizer.decode(i), float(p)) for p, i in zip(top.values, top.indices)]

    assert check("intro.next_tokens", right, quiet=True)
    with pytest.raises(ExerciseError, match="these are logits, not probabilities"):
        check("intro.next_tokens", logits_only, quiet=True)

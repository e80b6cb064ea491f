"""Checkers for the introduction ("Head Pursuit, by hand")."""

from __future__ import annotations

import torch

from . import checker


@checker("intro.top_heads")
def _check_top_heads(top_heads) -> None:
    g = torch.Generator().manual_seed(0)
    n_layers, n_heads, k = 5, 3, 4  # not square, so a swapped divisor shows
    share = torch.randn(n_layers, n_heads, generator=g)
    flat = share.flatten().topk(k).indices
    expected = [(int(i) // n_heads, int(i) % n_heads) for i in flat]
    got = top_heads(share, k)
    got = [tuple(int(v) for v in pair) for pair in got]
    assert len(got) == k, f"returned {len(got)} heads, expected k={k}"
    swapped = [(int(i) // n_layers, int(i) % n_layers) for i in flat]
    if got == swapped:
        raise AssertionError(
            "the (layer, head) pairs are computed with the number of layers: a flat index i of a "
            "[layers, heads] tensor is layer i // n_heads, head i % n_heads"
        )
    if sorted(got) == sorted(expected) and got != expected:
        raise AssertionError("the right heads, in the wrong order: list them from the largest share down")
    assert got == expected, (
        f"expected {expected}, got {got}: take the k largest entries of share (largest first) "
        "and turn each flat index into (layer, head)"
    )


@checker("intro.next_tokens")
def _check_next_tokens(top_next_tokens) -> None:
    vocab = ["a", " Paris", " the", " London", " is", "."]
    logits = torch.tensor([0.1, 4.0, 2.5, 1.0, 3.0, -1.0])

    class Tok:
        def decode(self, ids):
            ids = [int(ids)] if isinstance(ids, int) or (torch.is_tensor(ids) and ids.ndim == 0) else [int(i) for i in ids]
            return "".join(vocab[i] for i in ids)

    got = top_next_tokens(logits, Tok(), 3)
    assert isinstance(got, list), f"return a list of (token, probability) pairs, got {type(got).__name__}"
    assert len(got) == 3, f"returned {len(got)} pairs, expected 3"
    tokens = [t for t, _ in got]
    probs = torch.tensor([float(p) for _, p in got])
    assert tokens == [" Paris", " is", " the"], f"tokens {tokens}: expected the 3 most likely, most likely first"
    expected = logits.softmax(-1)[[1, 4, 2]]
    if torch.allclose(probs, logits[[1, 4, 2]]):
        raise AssertionError("these are logits, not probabilities: apply a softmax over the whole vocabulary first")
    assert torch.allclose(probs, expected, atol=1e-5), (
        f"probabilities {probs.tolist()}, expected {expected.tolist()}: softmax over all logits, then take the top k"
    )

"""Checkers for the chapter "Ranking heads for a concept"."""

from __future__ import annotations

from collections import Counter

import torch

from . import checker


@checker("ranking.jaccard")
def _check_jaccard(jaccard) -> None:
    a = [(1, 2), (3, 4), (5, 6)]
    b = [(3, 4), (5, 6), (7, 8), (9, 0)]
    got = float(jaccard(a, b))
    if abs(got - 2 / 3) < 1e-9:
        raise AssertionError("you divided by the size of the first set; divide by the size of the union (5)")
    if abs(got - 2 / 7) < 1e-9:
        raise AssertionError("you divided by the sum of the sizes; divide by the size of the union (5)")
    assert abs(got - 0.4) < 1e-9, f"jaccard(a, b) returned {got}, expected 0.4 (2 shared heads of 5)"
    assert abs(float(jaccard(a, list(reversed(a)))) - 1.0) < 1e-9, "the order of the heads must not matter"
    assert abs(float(jaccard([], [])) - 1.0) < 1e-9, "two empty sets should give 1"


@checker("ranking.lens_scores")
def _check_lens_scores(lens_scores) -> None:
    g = torch.Generator().manual_seed(0)
    n, L, H, dh, d, v = 7, 2, 3, 4, 10, 5
    z = torch.randn(n, L, H, dh, generator=g)
    W_O = torch.randn(L, H, d, dh, generator=g)
    atoms = torch.randn(v, d, generator=g)
    x = torch.einsum("nlhk,lhdk->nlhd", z, W_O)
    expected = torch.einsum("nlhd,vd->lh", x, atoms) / (n * v)
    got = torch.as_tensor(lens_scores(z, W_O, atoms))
    assert tuple(got.shape) == (L, H), f"returned shape {tuple(got.shape)}, expected {(L, H)}: one score per head"
    if torch.allclose(got, expected * v, atol=1e-4):
        raise AssertionError("you summed over the atoms instead of averaging")
    if torch.allclose(got.abs(), torch.einsum("nlhd,vd->lh", x.abs(), atoms.abs()) / (n * v), atol=1e-4):
        raise AssertionError("no absolute values: the logit-lens score is the plain mean logit")
    assert torch.allclose(got, expected, atol=1e-4), "the scores are wrong: mean over prompts i and atoms j of atoms[j] @ W_O[l,h] @ z[i,l,h]"


@checker("ranking.random_like")
def _check_random_like(random_like) -> None:
    selected = [(0, 1), (0, 4), (3, 2), (7, 0), (7, 1), (7, 5)]
    n_heads = 9
    draws = [sorted(map(tuple, random_like(selected, n_heads, seed))) for seed in range(5)]
    for draw in draws:
        assert len(draw) == len(selected), f"a control set has {len(draw)} heads, the selection {len(selected)}"
        assert len(set(draw)) == len(draw), f"a head appears twice in {draw}"
        shared = set(draw) & set(selected)
        assert not shared, f"the control set contains selected heads {sorted(shared)}: draw among the others only"
        want, got = Counter(layer for layer, _ in selected), Counter(layer for layer, _ in draw)
        assert got == want, f"heads per layer are {dict(got)}, expected {dict(want)} (the same count in every layer)"
        assert all(0 <= h < n_heads for _, h in draw), f"head indices must be in 0..{n_heads - 1}"
    assert len({tuple(d) for d in draws}) > 1, "five seeds gave the same set: the draw is not random"

"""Checkers for the chapter "Ranking heads for a concept"."""

from __future__ import annotations

from collections import Counter

import torch

from hp_mini.exercises import checker


@checker("ranking.missed_by_lens")
def _check_missed_by_lens(answer) -> None:
    from hp_mini.rank.ranking import HeadRanking

    try:
        head, somp, lens, skip = answer
    except (TypeError, ValueError):
        raise AssertionError("pass a tuple: (your head, the SOMP ranking, the logit-lens ranking, SKIP_LAYERS)") from None
    assert isinstance(somp, HeadRanking) and isinstance(lens, HeadRanking), (
        "the second and third items must be the chapter's HeadRanking objects (somp[CONCEPT], lens)"
    )
    assert somp.method == "somp" and lens.method == "logit_lens", (
        "pass the SOMP ranking second and the logit-lens ranking third"
    )
    lens_order = [h for h in lens.heads if h[0] >= skip]
    bottom = set(lens_order[len(lens_order) // 2 :])
    expected = next((h for h in somp.heads if h[0] >= skip and h in bottom), None)
    assert expected is not None, "no head of the SOMP ranking is in the lens's bottom half"
    head = tuple(int(v) for v in head)
    if head[0] < skip:
        raise AssertionError(f"layer {head[0]} is one of the first {skip} layers, which the rankings leave out")
    if head not in bottom:
        rank = lens_order.index(head) + 1 if head in lens_order else None
        raise AssertionError(
            f"the logit lens ranks L{head[0]}H{head[1]} {rank} of {len(lens_order)}: not in its bottom half"
        )
    assert head == expected, (
        f"L{head[0]}H{head[1]} is in the lens's bottom half, but SOMP ranks another such head higher: "
        "walk the SOMP ranking from the top and stop at the first head in the bottom half"
    )


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

import random

import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def test_missed_by_lens():
    from hp_mini.rank.ranking import HeadRanking

    heads = [(layer, head) for layer in range(3) for head in range(4)]
    somp_scores = {h: float(12 - i) for i, h in enumerate(heads)}  # (0, 0) best ... (2, 3) worst
    lens_scores = {h: float(i) for i, h in enumerate(heads)}  # the reverse

    def ranking(scores, method):
        order = sorted(heads, key=lambda h: -scores[h])
        return HeadRanking(order, torch.tensor([scores[h] for h in order]), method)

    somp, lens = ranking(somp_scores, "somp"), ranking(lens_scores, "logit_lens")
    # Outside layer 0, the lens ranks (2, 3) ... (1, 0); its bottom half is (1, 3) ... (1, 0);
    # the best of these by SOMP is (1, 0).
    assert check("ranking.missed_by_lens", ((1, 0), somp, lens, 1), quiet=True)
    with pytest.raises(ExerciseError, match="bottom half"):
        check("ranking.missed_by_lens", ((2, 3), somp, lens, 1), quiet=True)
    with pytest.raises(ExerciseError, match="higher"):
        check("ranking.missed_by_lens", ((1, 2), somp, lens, 1), quiet=True)
    with pytest.raises(ExerciseError, match="leave out"):
        check("ranking.missed_by_lens", ((0, 0), somp, lens, 1), quiet=True)
    with pytest.raises(ExerciseError, match="SOMP ranking second"):
        check("ranking.missed_by_lens", ((1, 0), lens, somp, 1), quiet=True)


def test_lens_scores():
    def good(z, W_O, atoms):
        return torch.einsum("lhdk,lhk->lhd", W_O, z.mean(0)) @ atoms.mean(0)

    assert check("ranking.lens_scores", good, quiet=True)

    def summed(z, W_O, atoms):
        return torch.einsum("lhdk,lhk->lhd", W_O, z.mean(0)) @ atoms.sum(0)

    with pytest.raises(ExerciseError, match="summed over the atoms"):
        check("ranking.lens_scores", summed, quiet=True)


def test_random_like():
    def good(selected, n_heads, seed):
        rng = random.Random(seed)
        out = []
        for layer in sorted({l for l, _ in selected}):
            count = sum(1 for l, _ in selected if l == layer)
            out += rng.sample([(layer, h) for h in range(n_heads) if (layer, h) not in set(selected)], count)
        return out

    assert check("ranking.random_like", good, quiet=True)

    def not_disjoint(selected, n_heads, seed):
        rng = random.Random(seed)
        out = []
        for layer in sorted({l for l, _ in selected}):
            count = sum(1 for l, _ in selected if l == layer)
            out += rng.sample([(layer, h) for h in range(n_heads)], count)
        return out

    with pytest.raises(ExerciseError, match="selected heads|not random"):
        # some seed includes a selected head
        for _ in range(3):
            check("ranking.random_like", not_disjoint, quiet=True)

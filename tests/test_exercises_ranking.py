import random

import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def test_jaccard():
    def good(a, b):
        a, b = set(map(tuple, a)), set(map(tuple, b))
        return 1.0 if not a | b else len(a & b) / len(a | b)

    assert check("ranking.jaccard", good, quiet=True)
    with pytest.raises(ExerciseError, match="union"):
        check("ranking.jaccard", lambda a, b: len(set(a) & set(b)) / len(set(a)), quiet=True)


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

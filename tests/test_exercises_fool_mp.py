"""The investigation "Fool matching pursuit" (chapter "The signal-processing view")."""

from __future__ import annotations

import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def _unit(A):
    return A / A.norm(dim=1, keepdim=True)


def _dictionary(rho: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = _unit(torch.randn(50, 16, generator=g, dtype=torch.float64))
    u = _unit(torch.randn(1, 16, generator=g, dtype=torch.float64))[0]
    own = _unit(D[:3] - (D[:3] @ u)[:, None] * u)
    D[:3] = rho**0.5 * u + (1 - rho) ** 0.5 * own
    return D


def _mp(x, D, k):  # plain matching pursuit, written out: the oracle for the checker's verdict
    r, picks = x.clone(), []
    for _ in range(k):
        s = D @ r
        j = int(s.abs().argmax())
        picks.append(j)
        r = r - s[j] * D[j]
    return picks


def test_correlated_support_fools_mp():
    D = _dictionary(0.6)
    x = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) @ D[:3]
    assert set(_mp(x, D, 3)) != {0, 1, 2}  # the oracle agrees that MP misses
    assert check("pursuit.fool_mp", (x, D, [0, 1, 2]), quiet=True)


def test_orthogonal_support_is_rejected_with_advice():
    D = torch.eye(16, dtype=torch.float64)  # orthonormal atoms: MP is exact
    x = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) @ D[:3]
    assert set(_mp(x, D, 3)) == {0, 1, 2}
    with pytest.raises(ExerciseError, match="found the whole support"):
        check("pursuit.fool_mp", (x, D, [0, 1, 2]), quiet=True)


def test_bad_answers_are_named():
    D = _dictionary(0.6)
    x = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) @ D[:3]
    with pytest.raises(ExerciseError, match="tuple"):
        check("pursuit.fool_mp", (x, D), quiet=True)
    with pytest.raises(ExerciseError, match="unit norm"):
        check("pursuit.fool_mp", (x, 2 * D, [0, 1, 2]), quiet=True)
    with pytest.raises(ExerciseError, match="not a combination"):
        check("pursuit.fool_mp", (x + 0.1 * D[10], D, [0, 1, 2]), quiet=True)
    with pytest.raises(ExerciseError, match="three different atoms"):
        check("pursuit.fool_mp", (x, D, [0, 0, 1]), quiet=True)
    with pytest.raises(ExerciseError, match="outside"):
        check("pursuit.fool_mp", (x, D, [0, 1, 99]), quiet=True)

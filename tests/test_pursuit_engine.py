"""The engine of :mod:`hp_mini.pursuit` through its documented interface, :mod:`hp_mini.pursuit.engine`:
a criterion written in a test, the columns left out of the float32 products, the blocks of atoms."""

from __future__ import annotations

import math

import pytest
import torch

import hp_mini
from hp_mini.pursuit.engine import (
    CHUNK,
    CRITERIA,
    UP,
    L1Criterion,
    L2Criterion,
    Problem,
    down,
    factor,
    pick,
    pursue,
    up,
)
from hp_mini.pursuit.reference import reference_somp


def random_dictionary(v, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(v, d, generator=g, dtype=torch.float64), dim=1)


def heavy_tailed(n, d, seed):
    """Samples whose L2, L1 and largest-correlation rankings of the atoms disagree."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) ** 6
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + torch.randn(d, generator=g, dtype=torch.float64)


def problem_of(X: torch.Tensor, **kwargs) -> Problem:
    Z, W = factor(X - X.mean(0))
    return Problem(W=W, M=Z.T @ Z, Z=Z, n=len(X), **kwargs)


class LinfCriterion:
    """The largest absolute correlation of an atom with the residual over the samples.

    A criterion written against the documented protocol only: the samples are
    whitened as for L1, so ``||p||_inf <= ||p||_2 = ||F_t^T d_j||`` and the
    engine's squared bounds bound it; no bounds of its own.
    """

    name = "linf"
    needs_samples = True
    whitens = True
    factor = staticmethod(L1Criterion.factor)
    group_size = L2Criterion.group_size
    keeps_products = L2Criterion.keeps_products

    def __init__(self, ws):
        self.ws = ws
        self.candidates = 4

    def bound(self, rows, atoms=None):
        b = self.ws.bounds
        s2 = pick(b.G, rows, atoms) + up(b.margin(rows))[:, None]
        return s2.clamp_min(0).sqrt() * UP

    def can_win(self, rows, rest, threshold):
        return rest >= down(threshold)

    def score(self, rows, idx, step):
        a = self.ws.project(rows, idx)
        Z = self.ws.Z if len(rows) == self.ws.Z.shape[0] else self.ws.Z[rows]
        val = (a @ Z.mT).abs().amax(-1)
        self.ws.bounds.set_exact(rows, idx, a.square().sum(-1))
        return self.ws.settle(rows, idx, val)

    def exclude(self, at):
        pass

    def start_step(self, step, delta_c, u, w):
        pass

    def update(self, atoms, c):
        pass

    def reported(self, best):
        return best


def literal_linf(X: torch.Tensor, D: torch.Tensor, k: int) -> tuple[list[int], torch.Tensor]:
    """SOMP with the largest absolute correlation as its score, step by literal step."""
    H = X - X.mean(0)
    R, chosen, evr = H.clone(), [], []
    for _ in range(k):
        score = (D @ R.T).abs().amax(1)
        score[chosen] = -math.inf
        chosen.append(int(score.argmax()))
        DS = D[chosen]
        C = torch.linalg.lstsq(DS.T, H.T).solution.T
        R = H - C @ DS
        evr.append(float(1 - R.square().sum() / H.square().sum()))
    return chosen, torch.tensor(evr, dtype=torch.float64)


@pytest.mark.parametrize("candidates", [None, 1])
@pytest.mark.parametrize("seed", range(3))
def test_a_new_criterion_is_one_object_and_its_test(seed, candidates):
    """The largest absolute correlation, as one class written here, finds the literal
    oracle's atoms and EVR; it is a different criterion from L2 and L1 on these data."""
    D = random_dictionary(2 * CHUNK + 300, 20, 200 + seed)
    X = heavy_tailed(60, 20, 210 + seed)
    (raw,) = pursue(D, [problem_of(X)], n_atoms=10, criterion=LinfCriterion, candidates=candidates)
    atoms, evr = literal_linf(X, D, 10)
    assert raw.atoms.tolist() == atoms
    torch.testing.assert_close(raw.evr, evr, rtol=1e-9, atol=1e-10)
    others = {tuple(reference_somp(X, D, 10, criterion=c).atoms) for c in ("l1", "l2")}
    assert tuple(atoms) not in others


def test_pursue_takes_a_criterion_by_name_or_class():
    D = random_dictionary(500, 16, 220)
    X = heavy_tailed(40, 16, 221)
    for name, kind in CRITERIA.items():
        by_name = pursue(D, [problem_of(X)], n_atoms=6, criterion=name)[0]
        by_class = pursue(D, [problem_of(X)], n_atoms=6, criterion=kind)[0]
        assert by_name.atoms.tolist() == by_class.atoms.tolist() == reference_somp(X, D, 6, criterion=name).atoms
    assert set(CRITERIA) == {"l1", "l2"}


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_l2_first_candidate_from_the_blocks_matches_reference(criterion):
    """More atoms than two blocks (the last one partial): the first candidate of every
    step comes from the blocks' maxima (L2), or from a full search (L1), and the atoms
    are the reference's, also when searching from a single candidate."""
    v = 2 * CHUNK + 77
    D = random_dictionary(v, 24, 230)
    X = heavy_tailed(50, 24, 231)
    want = reference_somp(X, D, 15, criterion=criterion)
    got = hp_mini.somp(X, D, n_atoms=15, criterion=criterion)
    assert got.atoms.tolist() == want.atoms
    torch.testing.assert_close(got.evr, want.evr, rtol=1e-9, atol=1e-10)
    (raw,) = pursue(D, [problem_of(X)], n_atoms=15, criterion=criterion, candidates=1)
    assert raw.atoms.tolist() == want.atoms


def float32_head(seed: int) -> torch.Tensor:
    """A head's float32 contributions ``z W_O^T``: rank 16, up to their rounding."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(150, 16, generator=g) * torch.logspace(0, -2, 16)
    return Z @ torch.randn(96, 16, generator=g).T


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_float64_signals_of_float32_origin_leave_their_rounding_out_of_the_float32_products(criterion):
    """Float64 signals that were float32 keep their full rank (taken as exact), but the
    components of rounding size are left out of the float32 products: the bounds see
    the head's 16 columns, and the atoms, EVR and coefficients are those of the search
    that keeps every column in its products, and the reference's."""
    D = random_dictionary(3000, 96, 240)
    X = float32_head(241).double()
    seen = []

    class Spy(CRITERIA[criterion]):
        def __init__(self, ws):
            super().__init__(ws)
            seen.append(ws)

    Xc = X - X.mean(0)
    tail = math.sqrt(max(Xc.shape)) * torch.finfo(torch.float32).eps * float(Xc.norm())
    (split,) = pursue(D, [problem_of(X, tail=tail)], n_atoms=12, criterion=Spy)
    (whole,) = pursue(D, [problem_of(X)], n_atoms=12, criterion=Spy)
    assert seen[0].split is not None and seen[0].split.r == 16 and seen[0].F.shape[2] > 16
    assert seen[1].split is None
    for field in ("atoms", "evr", "R", "U", "QW"):
        assert torch.equal(getattr(split, field), getattr(whole, field)), field
    got = hp_mini.somp(X, D, n_atoms=12, criterion=criterion)
    assert got.atoms.tolist() == split.atoms.tolist() == reference_somp(X, D, 12, criterion=criterion).atoms
    if criterion == "l1":  # the screen keeps the products of the 16 columns only
        assert seen[0].bounds.products.shape == (1, 3000, 16)

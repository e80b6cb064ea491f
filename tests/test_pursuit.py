"""Matching pursuit, OMP and SOMP against independent oracles.

The oracle for SOMP is ``reference_somp`` below: PAPER.md §3 written out
literally, with the full ``v x n`` correlation matrix and a least-squares solve
at every step. The fast path in ``hp_mini.pursuit`` shares no code with it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import hp_mini
from hp_mini.pursuit import PursuitResult


def reference_somp(X, D, n_atoms, criterion="l1", center=True):
    """SOMP as in PAPER.md §3: full correlations and a least-squares refit every step."""
    X, D = X.double(), D.double()
    H = X - X.mean(0) if center else X
    R, S, evr, scores = H.clone(), [], [], []
    total = H.square().sum()
    C = None
    for _ in range(n_atoms):
        P = D @ R.T  # v x n
        score = P.abs().sum(1) if criterion == "l1" else P.square().sum(1).sqrt()
        score[S] = -float("inf")
        p = int(score.argmax())
        scores.append(float(score[p]))
        S.append(p)
        DS = D[S]  # k x d
        C = torch.linalg.lstsq(DS.T, H.T).solution.T  # n x k:  H ~ C D[S]
        R = H - C @ DS
        evr.append(float(1 - R.square().sum() / total))
    return S, torch.tensor(evr, dtype=torch.float64), C, torch.tensor(scores, dtype=torch.float64)


def random_dictionary(v, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(v, d, generator=g, dtype=torch.float64), dim=1)


def low_rank_data(n, d, r, seed):
    """Head-like data: n samples in an r-dimensional subspace of R^d, with an offset."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64) + torch.randn(d, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- #
# Fast path == reference
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize(
    ("n", "d", "r", "v", "k", "seed"),
    [(60, 24, 24, 300, 20, 0), (200, 48, 8, 500, 30, 1), (7, 32, 32, 400, 12, 2), (100, 64, 64, 2000, 40, 3)],
)
def test_somp_matches_reference(criterion, n, d, r, v, k, seed):
    D = random_dictionary(v, d, seed)
    X = low_rank_data(n, d, r, seed + 100)
    k = min(k, min(n - 1, r))  # never past the rank: the reference's choice there is arbitrary
    atoms, evr, coef, scores = reference_somp(X, D, k, criterion)
    result = hp_mini.somp(X, D, n_atoms=k, criterion=criterion)
    assert result.atoms.tolist() == atoms
    torch.testing.assert_close(result.evr, evr, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(result.scores, scores, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.coefficients, coef, rtol=1e-7, atol=1e-8)
    # EVR never decreases, and the mean was removed
    assert (result.evr.diff() >= -1e-12).all()
    torch.testing.assert_close(result.mean, X.mean(0))


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_somp_uncentred_matches_reference(criterion):
    D = random_dictionary(300, 20, 5)
    X = low_rank_data(40, 20, 20, 6)
    atoms, evr, coef, _ = reference_somp(X, D, 15, criterion, center=False)
    result = hp_mini.somp(X, D, n_atoms=15, criterion=criterion, center=False)
    assert result.atoms.tolist() == atoms
    torch.testing.assert_close(result.evr, evr, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(result.coefficients, coef, rtol=1e-7, atol=1e-8)
    assert result.mean is None


def test_l1_and_l2_can_disagree():
    """The two criteria are different functions: on heavy-tailed data they pick different atoms."""
    D = random_dictionary(400, 16, 7)
    g = torch.Generator().manual_seed(8)
    X = torch.randn(50, 16, generator=g, dtype=torch.float64) * torch.rand(50, 1, generator=g, dtype=torch.float64) ** 4
    a1 = hp_mini.somp(X, D, n_atoms=10, criterion="l1").atoms.tolist()
    a2 = hp_mini.somp(X, D, n_atoms=10, criterion="l2").atoms.tolist()
    assert a1 == reference_somp(X, D, 10, "l1")[0]
    assert a2 == reference_somp(X, D, 10, "l2")[0]
    assert a1 != a2


@pytest.mark.parametrize("seed", range(4))
def test_l1_pruning_bound_never_skips_the_winner(seed):
    """The exact L1 search starting from a single candidate still finds the reference's atoms."""
    from hp_mini.pursuit import _factor, _Head, _pursue

    D = random_dictionary(1500, 16, 40 + seed)
    g = torch.Generator().manual_seed(60 + seed)
    # Heavy-tailed samples: the L2 and L1 rankings of the atoms disagree.
    X = torch.randn(80, 16, generator=g, dtype=torch.float64) * torch.rand(80, 1, generator=g, dtype=torch.float64) ** 6
    Xc = X - X.mean(0)
    Z, W = _factor(Xc)
    raw = _pursue(D, [_Head(W=W, M=Z.T @ Z, Z=Z, n=80)], n_atoms=12, criterion="l1", candidates=1)[0]
    assert raw["atoms"].tolist() == reference_somp(X, D, 12, "l1")[0]


@pytest.mark.parametrize("seed", [70, 80, 90])
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_float32_bounds_never_skip_a_near_tie(criterion, seed):
    """Atoms that differ below float32 resolution: the bounds' float32 products cannot
    order them, so only a valid rounding margin lets the search find the float64 winner
    (searching from a single candidate per step)."""
    from hp_mini.pursuit import _factor, _Head, _pursue

    base = random_dictionary(150, 48, seed)
    g = torch.Generator().manual_seed(seed + 1)
    twins = torch.nn.functional.normalize(base + 2e-9 * torch.randn(base.shape, generator=g, dtype=torch.float64), dim=1)
    D = torch.cat([base, twins])[torch.randperm(300, generator=g)]
    X = low_rank_data(90, 48, 12, seed + 2)
    Xc = X - X.mean(0)
    Z, W = _factor(Xc)
    raw = _pursue(D, [_Head(W=W, M=Z.T @ Z, Z=Z, n=90)], n_atoms=12, criterion=criterion, candidates=1)[0]
    assert raw["atoms"].tolist() == reference_somp(X, D, 12, criterion)[0]


def test_reconstruction_and_order():
    D = random_dictionary(200, 30, 9)
    X = low_rank_data(80, 30, 30, 10)
    r = hp_mini.somp(X, D, n_atoms=25, criterion="l2")
    resid = (X - r.mean) - r.coefficients @ D[r.atoms]
    torch.testing.assert_close(1 - resid.square().sum() / (X - X.mean(0)).square().sum(), r.evr[-1])
    norms = r.coefficients.norm(dim=0)
    torch.testing.assert_close(r.coefficient_norms, norms)
    assert r.order.tolist() == r.atoms[torch.argsort(norms, descending=True)].tolist()
    assert len(set(r.atoms.tolist())) == len(r.atoms)  # never twice
    assert r.labels == [str(int(a)) for a in r.atoms]


def test_float32_input_gives_float32_output():
    D = random_dictionary(100, 12, 11).float()
    X = low_rank_data(30, 12, 12, 12).float()
    r = hp_mini.somp(X, D, n_atoms=5)
    assert r.coefficients.dtype == torch.float32 and r.evr.dtype == torch.float32
    assert r.atoms.tolist() == reference_somp(X, D, 5)[0]


def test_somp_accepts_a_dictionary_object():
    D = random_dictionary(50, 10, 13)
    dic = hp_mini.Dictionary(D, [f"tok{i}" for i in range(50)])
    X = low_rank_data(20, 10, 10, 14)
    r = hp_mini.somp(X, dic, n_atoms=4)
    assert r.labels == [f"tok{int(a)}" for a in r.atoms]


# --------------------------------------------------------------------------- #
# Planted support
# --------------------------------------------------------------------------- #


def planted(n=200, d=64, v=500, k=6, correlated=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(v, d, generator=g, dtype=torch.float64), dim=1)
    support = torch.randperm(v, generator=g)[:k]
    if correlated:
        # Near-copies of the strongest planted atom: the logit lens ranks them
        # above the weaker planted atoms, although they add nothing.
        for j, idx in enumerate(torch.randperm(v, generator=g)[: 3 * k]):
            if idx in support:
                continue
            D[idx] = torch.nn.functional.normalize(D[support[0]] + 0.25 * torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    weights = torch.linspace(3.0, 1.0, k, dtype=torch.float64)
    coef = torch.randn(n, k, generator=g, dtype=torch.float64) * weights
    return D, support.tolist(), coef @ D[support]


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_somp_recovers_planted_support(criterion, seed):
    D, support, X = planted(seed=seed)
    r = hp_mini.somp(X, D, n_atoms=len(support), criterion=criterion, center=False)
    assert sorted(r.atoms.tolist()) == sorted(support)
    assert float(r.evr[-1]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_somp_recovers_support_with_correlated_atoms_but_logit_lens_does_not(criterion):
    D, support, X = planted(correlated=True, seed=3)
    k = len(support)
    r = hp_mini.somp(X, D, n_atoms=k, criterion=criterion, center=False)
    assert sorted(r.atoms.tolist()) == sorted(support)
    # top-k logit lens: the k atoms with the largest mean |logit| over samples
    lens = (X @ D.T).abs().mean(0).topk(k).indices.tolist()
    assert sorted(lens) != sorted(support)
    assert len(set(lens) - set(support)) >= 2


def test_planted_support_too_many_atoms_stops_with_warning():
    D, support, X = planted(seed=4)
    with pytest.warns(RuntimeWarning, match="residual is zero"):
        r = hp_mini.somp(X, D, n_atoms=len(support) + 3, center=False)
    assert sorted(r.atoms.tolist()) == sorted(support)
    assert r.coefficients.shape == (X.shape[0], len(support))


# --------------------------------------------------------------------------- #
# Single signal: OMP vs scikit-learn, matching pursuit
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", range(5))
def test_omp_matches_sklearn(seed):
    from sklearn.linear_model import orthogonal_mp

    D = random_dictionary(120, 40, seed)
    g = torch.Generator().manual_seed(seed + 50)
    x = torch.randn(40, generator=g, dtype=torch.float64)
    k = 10
    r = hp_mini.omp(x, D, n_atoms=k)
    coef = orthogonal_mp(D.T.numpy(), x.numpy(), n_nonzero_coefs=k)
    support = np.flatnonzero(coef)
    assert sorted(r.atoms.tolist()) == sorted(support.tolist())
    np.testing.assert_allclose(r.coefficients[0].numpy(), coef[r.atoms.numpy()], rtol=1e-9, atol=1e-12)
    assert r.coefficients.shape == (1, k)
    resid = x - r.coefficients[0] @ D[r.atoms]
    torch.testing.assert_close(r.evr[-1], 1 - resid.square().sum() / x.square().sum())


def test_omp_selection_order_matches_sklearn_path():
    from sklearn.linear_model import orthogonal_mp

    D = random_dictionary(80, 30, 21)
    x = torch.randn(30, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    r = hp_mini.omp(x, D, n_atoms=8)
    path = orthogonal_mp(D.T.numpy(), x.numpy(), n_nonzero_coefs=8, return_path=True)  # [v, k]
    order = []
    for step in range(8):
        new = set(np.flatnonzero(path[:, step]).tolist()) - set(order)
        assert len(new) == 1
        order += list(new)
    assert r.atoms.tolist() == order


def test_matching_pursuit_first_step_is_the_logit_lens_and_can_repeat():
    D = random_dictionary(60, 10, 23)
    x = torch.randn(10, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    r = hp_mini.matching_pursuit(x, D, n_atoms=40)
    assert int(r.atoms[0]) == int((D @ x).abs().argmax())
    assert len(set(r.atoms.tolist())) < len(r.atoms)  # MP revisits atoms; OMP never does
    resid = x - r.coefficients[0] @ D[r.atoms]
    torch.testing.assert_close(r.evr[-1], 1 - resid.square().sum() / x.square().sum())
    assert (r.evr.diff() >= -1e-12).all()
    assert isinstance(r, PursuitResult)


def test_omp_explains_at_least_as_much_as_mp():
    D = random_dictionary(100, 20, 25)
    x = torch.randn(20, generator=torch.Generator().manual_seed(26), dtype=torch.float64)
    mp = hp_mini.matching_pursuit(x, D, n_atoms=8)
    om = hp_mini.omp(x, D, n_atoms=8)
    assert float(om.evr[-1]) >= float(mp.evr[-1]) - 1e-12
    assert int(om.atoms[0]) == int(mp.atoms[0])


# --------------------------------------------------------------------------- #
# Degenerate input
# --------------------------------------------------------------------------- #


def test_degenerate_inputs_fail_clearly():
    D = random_dictionary(30, 8, 27)
    X = low_rank_data(10, 8, 8, 28)
    with pytest.raises(ValueError, match="more than the 30 atoms"):
        hp_mini.somp(X, D, n_atoms=31)
    with pytest.raises(ValueError, match="8 wide"):
        hp_mini.somp(X[:, :6], D, n_atoms=3)
    bad = X.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hp_mini.somp(bad, D, n_atoms=3)
    badD = D.clone()
    badD[0, 0] = float("inf")
    with pytest.raises(ValueError, match="dictionary contains"):
        hp_mini.somp(X, badD, n_atoms=3)
    with pytest.raises(ValueError, match="zero-variance"):
        hp_mini.somp(torch.ones(5, 8) * 3, D, n_atoms=3)
    with pytest.raises(ValueError, match="criterion"):
        hp_mini.somp(X, D, n_atoms=3, criterion="l3")
    with pytest.raises(ValueError, match="positive integer"):
        hp_mini.somp(X, D, n_atoms=0)
    with pytest.raises(ValueError, match="one signal"):
        hp_mini.omp(X, D, n_atoms=2)
    with pytest.raises(ValueError, match="all zeros"):
        hp_mini.matching_pursuit(torch.zeros(8), D, n_atoms=2)


def test_duplicate_atoms_are_never_chosen_twice():
    D = random_dictionary(20, 6, 29)
    D = torch.cat([D, D[:5]])  # exact copies
    X = low_rank_data(15, 6, 6, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = hp_mini.somp(X, D, n_atoms=6, criterion="l2")
    picked = r.atoms.tolist()
    assert len(set(picked)) == len(picked)
    assert not any(a in picked and a + 20 in picked for a in range(5))


# --------------------------------------------------------------------------- #
# Recorded SmolLM2 heads
# --------------------------------------------------------------------------- #

SMOLLM2_HEADS = [(0, 0), (14, 4), (29, 8)]


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_smollm2_heads_full_vocabulary_match_reference(smollm2, smollm2_heads, criterion):
    model, tok = smollm2
    full = hp_mini.unembedding_dictionary(model, tok)
    results = hp_mini.pursue_heads(
        smollm2_heads, full, n_atoms=6, criterion=criterion, heads=SMOLLM2_HEADS, progress=False
    )
    for head in SMOLLM2_HEADS:
        X = smollm2_heads.head(*head)
        atoms, evr, coef, _ = reference_somp(X, full.atoms, 6, criterion)
        assert results[head].atoms.tolist() == atoms, head
        torch.testing.assert_close(results[head].evr.double(), evr, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[head].coefficients.double(), coef, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_smollm2_heads_concept_dictionary_match_reference(smollm2, smollm2_heads, criterion):
    model, tok = smollm2
    countries = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("countries"), final_norm=True)
    heads = [(layer, head) for layer in (3, 26) for head in range(9)]
    results = hp_mini.pursue_heads(smollm2_heads, countries, n_atoms=20, criterion=criterion, heads=heads, progress=False)
    for head in heads:
        atoms, evr, _, _ = reference_somp(smollm2_heads.head(*head), countries.atoms, 20, criterion)
        assert results[head].atoms.tolist() == atoms, head
        torch.testing.assert_close(results[head].evr.double(), evr, rtol=1e-5, atol=1e-6)

"""Matching pursuit, OMP and SOMP against independent oracles.

The oracle for SOMP is :func:`hp_mini.pursuit.reference.reference_somp`: SOMP
as Head Pursuit states it (Basile et al., NeurIPS 2025, arXiv:2510.21518),
written out literally, with the full ``v x n`` correlation matrix and a
least-squares solve at every step. The engine of ``hp_mini.pursuit`` shares no
code with it; tests reach the engine through :mod:`hp_mini.pursuit.engine`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import hp_mini
from hp_mini.pursuit import PursuitResult, engine
from hp_mini.pursuit.engine import L1Criterion, Problem, factor, pursue
from hp_mini.pursuit.reference import reference_somp


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
    atoms, evr, coef, scores = reference_somp(X, D, k, criterion=criterion)
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
    atoms, evr, coef, _ = reference_somp(X, D, 15, criterion=criterion, center=False)
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
    assert a1 == reference_somp(X, D, 10, criterion="l1")[0]
    assert a2 == reference_somp(X, D, 10, criterion="l2")[0]
    assert a1 != a2


@pytest.mark.parametrize("seed", range(4))
def test_l1_pruning_bound_never_skips_the_winner(seed):
    """The exact L1 search starting from a single candidate still finds the reference's atoms."""
    D = random_dictionary(1500, 16, 40 + seed)
    g = torch.Generator().manual_seed(60 + seed)
    # Heavy-tailed samples: the L2 and L1 rankings of the atoms disagree.
    X = torch.randn(80, 16, generator=g, dtype=torch.float64) * torch.rand(80, 1, generator=g, dtype=torch.float64) ** 6
    Xc = X - X.mean(0)
    Z, W = factor(Xc)
    raw = pursue(D, [Problem(W=W, M=Z.T @ Z, Z=Z, n=80)], n_atoms=12, criterion="l1", candidates=1)[0]
    assert raw.atoms.tolist() == reference_somp(X, D, 12, criterion="l1")[0]


@pytest.mark.parametrize("seed", [70, 80, 90])
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_float32_bounds_never_skip_a_near_tie(criterion, seed):
    """Atoms that differ below float32 resolution: the bounds' float32 products cannot
    order them, so only a valid rounding margin lets the search find the float64 winner
    (searching from a single candidate per step)."""
    base = random_dictionary(150, 48, seed)
    g = torch.Generator().manual_seed(seed + 1)
    twins = torch.nn.functional.normalize(base + 2e-9 * torch.randn(base.shape, generator=g, dtype=torch.float64), dim=1)
    D = torch.cat([base, twins])[torch.randperm(300, generator=g)]
    X = low_rank_data(90, 48, 12, seed + 2)
    Xc = X - X.mean(0)
    Z, W = factor(Xc)
    raw = pursue(D, [Problem(W=W, M=Z.T @ Z, Z=Z, n=90)], n_atoms=12, criterion=criterion, candidates=1)[0]
    assert raw.atoms.tolist() == reference_somp(X, D, 12, criterion=criterion)[0]
    if criterion == "l1":  # the float32 screen of L1 meets the twins too, and must defer to float64
        assert raw.screened > 0


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


INTEGERS = [np.int64(4), np.int32(4), np.uint8(4), torch.tensor(4), torch.tensor(4, dtype=torch.int32), torch.tensor([4])]


@pytest.mark.parametrize("k", INTEGERS, ids=["np.int64", "np.int32", "np.uint8", "torch.int64", "torch.int32", "torch.int64[1]"])
def test_n_atoms_accepts_numpy_and_torch_integers(k):
    D = random_dictionary(40, 8, 31)
    X = low_rank_data(12, 8, 8, 32)
    assert hp_mini.somp(X, D, n_atoms=k).atoms.tolist() == hp_mini.somp(X, D, n_atoms=4).atoms.tolist()
    assert hp_mini.omp(X[0], D, n_atoms=k).atoms.tolist() == hp_mini.omp(X[0], D, n_atoms=4).atoms.tolist()
    mp = hp_mini.matching_pursuit(X[0], D, n_atoms=k)
    assert mp.atoms.tolist() == hp_mini.matching_pursuit(X[0], D, n_atoms=4).atoms.tolist() and len(mp) == 4
    Z, W = X[:, :3], D[:3].T
    with pytest.warns(RuntimeWarning, match="the residual is zero after 3 atoms"):
        got = hp_mini.somp_factored([hp_mini.FactoredSignals(W, Z)], D, n_atoms=k)[0]
    assert len(got) == 3  # the signals span three atoms: the residual is zero after them
    assert sorted(got.atoms.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("k", [3.0, True, "3", torch.tensor(3.0), np.float64(3.0), None])
def test_n_atoms_that_is_not_an_integer_is_a_type_error(k):
    D = random_dictionary(40, 8, 31)
    X = low_rank_data(12, 8, 8, 32)
    for call in (lambda: hp_mini.somp(X, D, n_atoms=k), lambda: hp_mini.omp(X[0], D, n_atoms=k),
                 lambda: hp_mini.matching_pursuit(X[0], D, n_atoms=k)):
        with pytest.raises(TypeError, match="n_atoms must be an integer"):
            call()


@pytest.mark.parametrize("k", [0, -2, np.int64(0), torch.tensor(-1)])
def test_n_atoms_below_one_is_an_error(k):
    D = random_dictionary(40, 8, 31)
    X = low_rank_data(12, 8, 8, 32)
    with pytest.raises(ValueError, match="n_atoms must be a positive integer"):
        hp_mini.somp(X, D, n_atoms=k)
    with pytest.raises(ValueError, match="n_atoms must be a positive integer"):
        hp_mini.matching_pursuit(X[0], D, n_atoms=k)


def test_matching_pursuit_stops_at_a_zero_residual():
    """One atom explains the signal: MP stops there, however many steps were asked for."""
    D = random_dictionary(50, 10, 33)
    x = -2.5 * D[17]
    with pytest.warns(RuntimeWarning, match="residual is zero after 1 atoms"):
        r = hp_mini.matching_pursuit(x, D, n_atoms=10**6)
    assert r.atoms.tolist() == [17]
    torch.testing.assert_close(r.coefficients, torch.tensor([[-2.5]], dtype=torch.float64))
    assert float(r.evr[-1]) == pytest.approx(1.0, abs=1e-12)


def test_matching_pursuit_stops_when_the_signal_is_orthogonal_to_every_atom():
    D = torch.eye(6, dtype=torch.float64)[:4]  # atoms span the first four axes only
    x = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -2.0], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="orthogonal to every atom after 0 atoms"):
        r = hp_mini.matching_pursuit(x, D, n_atoms=1000)
    assert len(r) == 0 and r.evr.numel() == 0


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_upcast(half):
    D = random_dictionary(60, 12, 34).to(half)
    X = low_rank_data(25, 12, 12, 35).to(half)
    for criterion in ("l1", "l2"):
        got = hp_mini.somp(X, D, n_atoms=5, criterion=criterion)
        want = hp_mini.somp(X.double(), D.double(), n_atoms=5, criterion=criterion)  # the same numbers, upcast
        assert got.atoms.tolist() == want.atoms.tolist()
        assert got.evr.dtype == torch.float64 and got.coefficients.dtype == torch.float64
        torch.testing.assert_close(got.evr, want.evr)
    assert hp_mini.omp(X[0], D, n_atoms=4).atoms.tolist() == hp_mini.omp(X[0].double(), D.double(), n_atoms=4).atoms.tolist()
    mp = hp_mini.matching_pursuit(X[0], D, n_atoms=4)
    assert mp.atoms.tolist() == hp_mini.matching_pursuit(X[0].double(), D.double(), n_atoms=4).atoms.tolist()
    assert mp.evr.dtype == torch.float64
    got = hp_mini.somp(X, D, n_atoms=5, dtype=torch.float32)
    assert got.evr.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_a_half_precision_working_dtype_is_an_error(dtype):
    D = random_dictionary(60, 12, 34)
    X = low_rank_data(25, 12, 12, 35)
    for call in (lambda: hp_mini.somp(X, D, n_atoms=3, dtype=dtype), lambda: hp_mini.omp(X[0], D, n_atoms=3, dtype=dtype),
                 lambda: hp_mini.matching_pursuit(X[0], D, n_atoms=3, dtype=dtype),
                 lambda: hp_mini.somp_factored([hp_mini.FactoredSignals(D[:3].T, X[:, :3])], D, n_atoms=3, dtype=dtype)):
        with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
            call()


def test_an_empty_dictionary_is_an_error():
    X = low_rank_data(10, 8, 8, 36)
    for call in (lambda: hp_mini.somp(X, torch.zeros(0, 8), n_atoms=1), lambda: hp_mini.omp(X[0], torch.zeros(0, 8), n_atoms=1),
                 lambda: hp_mini.matching_pursuit(X[0], torch.zeros(0, 8), n_atoms=1)):
        with pytest.raises(ValueError, match="the dictionary is empty"):
            call()


def test_dictionary_preparation_is_kept_and_redone_after_an_in_place_change():
    """What depends only on the dictionary is prepared once; an in-place change (a NaN, a
    rescaling) is seen, and the preparation goes when the atoms are freed."""
    import gc

    atoms = random_dictionary(200, 16, 41).float()
    dic = hp_mini.Dictionary(atoms, [str(i) for i in range(200)])
    X = low_rank_data(30, 16, 16, 42).float()
    first = hp_mini.somp(X, dic, n_atoms=4)
    prepared = engine.PREPARED[id(atoms)]
    assert hp_mini.somp(X, dic, n_atoms=4).atoms.tolist() == first.atoms.tolist()
    assert engine.PREPARED[id(atoms)] is prepared
    atoms[7, 3] = float("nan")
    with pytest.raises(ValueError, match="the dictionary contains 1 NaN"):
        hp_mini.somp(X, dic, n_atoms=4)
    atoms[7, 3] = 0.25
    atoms[:100] *= 3  # longer atoms: other winners, and a larger bound on their norms
    got = hp_mini.somp(X, dic, n_atoms=6, criterion="l2")
    assert got.atoms.tolist() == reference_somp(X, atoms, 6, criterion="l2").atoms
    assert engine.PREPARED[id(atoms)].dmax >= float(atoms.double().norm(dim=1).max())
    key = id(atoms)
    del dic, atoms
    gc.collect()
    assert key not in engine.PREPARED
    # inference-mode tensors keep no version counter: prepared on every call, never stale
    with torch.inference_mode():
        frozen = random_dictionary(200, 16, 41).float()
    assert hp_mini.somp(X, frozen, n_atoms=4).atoms.tolist() == first.atoms.tolist()
    with torch.inference_mode():
        frozen[3, 3] = float("inf")
    with pytest.raises(ValueError, match="the dictionary contains 1 NaN"):
        hp_mini.somp(X, frozen, n_atoms=4)


def test_float32_head_data_keep_their_rank():
    """Float32 contributions z W^T are full rank only through rounding; somp factors them at
    the head's rank and still finds the reference's atoms."""
    D = random_dictionary(3000, 96, 43)
    g = torch.Generator().manual_seed(44)
    Z = torch.randn(200, 16, generator=g) * torch.logspace(0, -2, 16)
    W = torch.randn(96, 16, generator=g)
    X = Z @ W.T  # float32
    for criterion in ("l1", "l2"):
        got = hp_mini.somp(X, D, n_atoms=12, criterion=criterion)
        want = reference_somp(X, D, 12, criterion=criterion)
        assert got.atoms.tolist() == want.atoms
        torch.testing.assert_close(got.evr.double(), want.evr, rtol=1e-6, atol=1e-7)
    Xc = X.double() - X.double().mean(0)
    assert factor(Xc)[0].shape[1] > 16  # the rounding alone gives it full rank
    assert factor(Xc, torch.finfo(torch.float32).eps)[0].shape[1] == 16


# --------------------------------------------------------------------------- #
# The public entry point for factored signals
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_somp_factored_equals_somp_on_the_product(criterion, center):
    D = random_dictionary(300, 24, 37)
    g = torch.Generator().manual_seed(38)
    sets = [hp_mini.FactoredSignals(torch.randn(24, r, generator=g, dtype=torch.float64),
                                    torch.randn(n, r, generator=g, dtype=torch.float64) + 0.3, name=f"set {i}")
            for i, (n, r) in enumerate([(30, 6), (50, 8), (9, 3)])]
    got = hp_mini.somp_factored(sets, D, n_atoms=3, criterion=criterion, center=center, out_dtype=torch.float64)
    for s, r in zip(sets, got):
        X = s.Z @ s.W.T
        want = reference_somp(X, D, 3, criterion=criterion, center=center)
        assert r.atoms.tolist() == want.atoms
        torch.testing.assert_close(r.evr, want.evr, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(r.coefficients, want.coefficients, rtol=1e-7, atol=1e-8)
        if center:
            torch.testing.assert_close(r.mean, X.mean(0))
    if criterion == "l2":  # from moments only: the same pursuit
        light = [hp_mini.FactoredSignals(s.W, n=len(s.Z), mean=s.Z.mean(0),
                                         scatter=(s.Z - s.Z.mean(0)).T @ (s.Z - s.Z.mean(0))) for s in sets]
        for r, m in zip(got, hp_mini.somp_factored(light, D, n_atoms=3, criterion="l2", center=center)):
            assert r.atoms.tolist() == m.atoms.tolist() and m.coefficients is None


def test_somp_factored_bad_input_names_the_set():
    D = random_dictionary(50, 10, 39)
    W, Z = D[:3].T, torch.randn(20, 3, dtype=torch.float64)
    bad = Z.clone()
    bad[4, 1] = float("inf")
    with pytest.raises(ValueError, match="the samples of L2H5 contains 1 NaN or infinite"):
        hp_mini.somp_factored([hp_mini.FactoredSignals(W, bad, name="L2H5")], D, n_atoms=2)
    with pytest.raises(ValueError, match="L0H1: criterion='l1' needs every sample"):
        hp_mini.somp_factored([hp_mini.FactoredSignals(W, n=20, mean=Z.mean(0), scatter=Z.T @ Z, name="L0H1")], D, n_atoms=2)
    with pytest.raises(ValueError, match=r"L0H2: Z must be \[n, 3\]"):
        hp_mini.somp_factored([hp_mini.FactoredSignals(W, Z[:, :2], name="L0H2")], D, n_atoms=2)
    with pytest.raises(ValueError, match="10 wide"):
        hp_mini.somp_factored([hp_mini.FactoredSignals(W[:8], Z)], D, n_atoms=2)


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
        atoms, evr, coef, _ = reference_somp(X, full.atoms, 6, criterion=criterion)
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
        atoms, evr, _, _ = reference_somp(smollm2_heads.head(*head), countries.atoms, 20, criterion=criterion)
        assert results[head].atoms.tolist() == atoms, head
        torch.testing.assert_close(results[head].evr.double(), evr, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_l1_screen_chooses_what_exact_scoring_chooses(monkeypatch, seed):
    """The float32 screen of L1 (on by default in float64), with the sets in one batch
    or one at a time (a memory limit that holds one set's screen), against scoring
    every candidate exactly (the limit set to zero), and the reference:
    same atoms, EVR and coefficients, with far fewer exact scores. Heavy-tailed
    samples, so that the L1 and L2 rankings disagree; one set has fewer samples
    than its rank."""
    D = random_dictionary(3000, 40, 90 + seed)
    g = torch.Generator().manual_seed(95 + seed)
    sets = [
        hp_mini.FactoredSignals(
            torch.randn(40, r, generator=g, dtype=torch.float64),
            torch.randn(n, r, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64) ** 4,
            name=f"set {i}",
        )
        for i, (n, r) in enumerate([(120, 16), (7, 12)])
    ]
    screened = hp_mini.somp_factored(sets, D, n_atoms=10, criterion="l1", out_dtype=torch.float64)
    # room for one set's screen only: the sets are pursued one after the other
    monkeypatch.setattr(L1Criterion, "screen_bytes", 3000 * (16 + 10) * 4)
    grouped = hp_mini.somp_factored(sets, D, n_atoms=10, criterion="l1", out_dtype=torch.float64)
    monkeypatch.setattr(L1Criterion, "screen_bytes", 0)
    exact = hp_mini.somp_factored(sets, D, n_atoms=10, criterion="l1", out_dtype=torch.float64)
    for s, a, c, b in zip(sets, screened, grouped, exact):
        want = reference_somp(s.Z @ s.W.T, D, 10, criterion="l1")
        assert a.atoms.tolist() == b.atoms.tolist() == want.atoms
        assert c.atoms.tolist() == want.atoms and c.screened_scores > 0
        torch.testing.assert_close(c.coefficients, a.coefficients, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.evr, want.evr, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(a.coefficients, want.coefficients, rtol=1e-7, atol=1e-8)
        assert a.screened_scores > 0 and b.screened_scores == 0
        assert a.exact_scores < b.exact_scores


def test_l1_in_float32_scores_without_the_screen():
    """In float32 working precision the screen has nothing to save: every candidate
    is scored in float32, and the atoms are still the reference's."""
    D = random_dictionary(800, 24, 5)
    g = torch.Generator().manual_seed(6)
    X = torch.randn(60, 6, generator=g, dtype=torch.float64) @ D[[3, 50, 77, 400, 512, 640]] * 3
    X = X + 0.05 * low_rank_data(60, 24, 24, 7)
    got = hp_mini.somp(X.float(), D.float(), n_atoms=6, criterion="l1", dtype=torch.float32)
    assert got.atoms.tolist() == reference_somp(X, D, 6, criterion="l1").atoms
    assert got.screened_scores == 0 and got.exact_scores >= 6


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_exact_scores_counts_what_the_bounds_left(criterion):
    # Head-like data with a planted support: the bounds rule out most atoms at
    # most steps, and every step computes at least the winner's exact score.
    v, k = 2000, 10
    D = random_dictionary(v, 32, 7)
    g = torch.Generator().manual_seed(8)
    X = torch.randn(150, k, generator=g, dtype=torch.float64) @ D[:k] * 5 + 0.01 * low_rank_data(150, 32, 32, 9)
    result = hp_mini.somp(X, D, n_atoms=k, criterion=criterion)
    assert sorted(result.atoms.tolist()) == list(range(k))
    assert k <= result.exact_scores < k * v // 4
    if criterion == "l2":  # the L2 bounds are tight enough here to leave the winner alone
        assert result.exact_scores == k
    assert hp_mini.matching_pursuit(X[0], D, n_atoms=3).exact_scores is None

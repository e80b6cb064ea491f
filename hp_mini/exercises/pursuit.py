"""Checkers for the chapter "The signal-processing view"."""

from __future__ import annotations

import torch

from ..reference import reference_somp
from . import checker


def _dictionary(seed: int, v: int = 60, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(v, d, generator=g, dtype=torch.float64)
    return D / D.norm(dim=1, keepdim=True)


@checker("pursuit.mp_step")
def _check_mp_step(mp_step) -> None:
    D = _dictionary(0)
    g = torch.Generator().manual_seed(1)
    # The strongest atom enters with a negative sign: an answer without abs() picks another one.
    r = -3.0 * D[5] + 1.0 * D[9] + 0.01 * torch.randn(D.shape[1], generator=g, dtype=torch.float64)
    j, new_r = mp_step(r.clone(), D)
    scores = D @ r
    expected = int(scores.abs().argmax())
    if int(j) == int(scores.argmax()) and int(j) != expected:
        raise AssertionError(f"picked atom {int(j)}, the largest *signed* correlation; use the largest absolute one ({expected})")
    assert int(j) == expected, f"picked atom {int(j)}, expected {expected} (largest |D @ r|)"
    new_r = torch.as_tensor(new_r, dtype=torch.float64)
    want = r - scores[expected] * D[expected]
    assert new_r.shape == r.shape, f"the new residual has shape {tuple(new_r.shape)}, expected {tuple(r.shape)}"
    assert torch.allclose(new_r, want, atol=1e-6), (
        "the new residual is wrong: subtract (D[j] @ r) * D[j]; it should be orthogonal to D[j]"
    )


@checker("pursuit.somp")
def _check_somp(somp_support) -> None:
    D = _dictionary(2, v=80, d=20)
    g = torch.Generator().manual_seed(3)
    support = [4, 17, 33, 61]
    C = torch.randn(30, 4, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    H = C @ D[support] + 0.02 * torch.randn(30, 20, generator=g, dtype=torch.float64)
    expected = reference_somp(H, D, 6, criterion="l1", center=False).atoms
    got = [int(a) for a in somp_support(H.clone(), D.clone(), 6)]
    assert len(got) == 6, f"returned {len(got)} atoms, expected 6"
    assert len(set(got)) == len(got), f"an atom was chosen twice: {got}; exclude the chosen atoms from the argmax"
    assert set(got[:4]) == set(support), f"the first four atoms {got[:4]} should be the planted support {support}"
    assert got == expected, (
        f"chose {got}, expected {expected}: refit all chosen atoms by least squares at every step "
        "and score atoms by the sum of absolute correlations over samples"
    )


@checker("pursuit.evr")
def _check_evr(evr) -> None:
    D = _dictionary(4, v=30, d=10)
    g = torch.Generator().manual_seed(5)
    H = torch.randn(25, 3, generator=g, dtype=torch.float64) @ D[[1, 2, 3]] + 2.0 + 0.3 * torch.randn(25, 10, generator=g, dtype=torch.float64)
    atoms = [1, 2]
    Hc = H - H.mean(0)
    A = D[atoms]
    W = torch.linalg.lstsq(A.T, Hc.T).solution.T
    expected = float(1 - (Hc - W @ A).pow(2).sum() / Hc.pow(2).sum())
    got = float(evr(H.clone(), D, atoms))
    Wu = torch.linalg.lstsq(A.T, H.T).solution.T
    uncentred = float(1 - (H - Wu @ A).pow(2).sum() / H.pow(2).sum())
    if abs(got - uncentred) < 1e-6:
        raise AssertionError("that is the EVR of the uncentred data: subtract H.mean(0) first")
    assert abs(got - expected) < 1e-6, f"returned {got:.6f}, expected {expected:.6f}"


@checker("pursuit.order")
def _check_order(by_coefficient_norm) -> None:
    atoms = torch.tensor([40, 7, 19, 3])
    coefficients = torch.tensor([[0.1, -5.0, 1.0, 0.0], [0.2, 0.5, -2.0, 0.3], [0.0, 0.1, 1.5, -0.1]])
    norms = coefficients.norm(dim=0)
    expected = [int(atoms[i]) for i in norms.argsort(descending=True)]
    got = [int(a) for a in by_coefficient_norm(atoms, coefficients)]
    signed = [int(atoms[i]) for i in coefficients.sum(0).argsort(descending=True)]
    if got == signed and got != expected:
        raise AssertionError("you sorted by the signed sum of the coefficients; use the L2 norm of each column")
    if got == expected[::-1]:
        raise AssertionError("the order is reversed: largest norm first")
    if got == [int(atoms[i]) for i in coefficients.norm(dim=1).argsort(descending=True)[: len(atoms)]]:
        raise AssertionError("you took norms of rows (samples); take the norm of each column (atom)")
    assert got == expected, f"returned {got}, expected {expected} (atoms sorted by column norm, largest first)"


@checker("pursuit.copy_score")
def _check_copy_score(copy_score) -> None:
    from ..activations import HeadActivations

    g = torch.Generator().manual_seed(7)
    vocab, d_model, d_head, n = 30, 12, 4, 6
    U = torch.randn(vocab, d_model, generator=g)
    W_O = torch.randn(1, 2, d_model, d_head, generator=g)
    z = torch.randn(n, 1, 2, d_head, generator=g)
    acts = HeadActivations(z, W_O, None, [0])
    token_ids = [[int(t) for t in torch.randint(0, vocab, (3,), generator=g)] for _ in range(n)]
    x = acts.head(0, 1)
    targets = torch.stack([U[torch.tensor(ids)].mean(0) for ids in token_ids])
    expected = float(torch.nn.functional.cosine_similarity(x, targets, dim=1).mean())
    got = float(copy_score(acts, 0, 1, token_ids, U))
    dots = float((x * targets).sum(1).mean())
    if abs(got - dots) < 1e-4:
        raise AssertionError("that is a mean dot product; normalise both vectors (cosine similarity)")
    other = float(torch.nn.functional.cosine_similarity(acts.head(0, 0), targets, dim=1).mean())
    if abs(got - other) < 1e-5:
        raise AssertionError("you scored the wrong head: use acts.head(layer, head)")
    assert abs(got - expected) < 1e-4, f"returned {got:.4f}, expected {expected:.4f}"

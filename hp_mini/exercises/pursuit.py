"""Checkers for the chapters "The signal-processing view" and "Pursuing heads"."""

from __future__ import annotations

from functools import lru_cache

import torch

from hp_mini.pursuit import matching_pursuit, omp, somp
from hp_mini.pursuit.reference import reference_somp
from hp_mini.exercises import checker, head_answer


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


def _participation_ratio(X: torch.Tensor) -> float:
    Xc = X.double() - X.double().mean(0)
    power = torch.linalg.svdvals(Xc).pow(2)
    return float(power.sum() ** 2 / power.pow(2).sum())


@checker("pursuit.effective_rank")
def _check_effective_rank(effective_rank) -> None:
    g = torch.Generator().manual_seed(11)
    # Three directions with variances 9, 4, 1 plus a large constant offset.
    basis = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64)).Q.T
    C = torch.randn(200, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    X = C @ basis + 5.0 * torch.randn(12, generator=g, dtype=torch.float64)
    expected = _participation_ratio(X)
    got = float(effective_rank(X.clone()))
    s = torch.linalg.svdvals(X - X.mean(0))
    if abs(got - float(s.sum() ** 2 / s.pow(2).sum())) < 1e-6:
        raise AssertionError("you used the singular values; use their squares (the variances along each direction)")
    power = torch.linalg.svdvals(X).pow(2)
    if abs(got - float(power.sum() ** 2 / power.pow(2).sum())) < 1e-6:
        raise AssertionError("subtract the mean over samples first: the constant offset is not variation")
    assert abs(got - expected) < 1e-6, f"returned {got:.4f}, expected {expected:.4f}"
    one = torch.randn(50, 1, generator=g, dtype=torch.float64) @ basis[:1]
    assert abs(float(effective_rank(one)) - 1.0) < 1e-6, "writes along a single direction have effective rank 1"


@checker("pursuit.lowest_rank_layer")
def _check_lowest_rank_layer(answer) -> None:
    from hp_mini.record.activations import HeadActivations

    try:
        layer, acts = answer
    except (TypeError, ValueError):
        raise AssertionError("pass a pair: (the layer you found, the HeadActivations you searched)") from None
    assert isinstance(acts, HeadActivations), "the second item must be the chapter's HeadActivations (acts)"
    means = [
        sum(_participation_ratio(acts.head(lay, h)) for h in range(acts.n_heads)) / acts.n_heads
        for lay in acts.layers
    ]
    best = acts.layers[min(range(len(means)), key=means.__getitem__)]
    highest = acts.layers[max(range(len(means)), key=means.__getitem__)]
    if int(layer) == highest and highest != best:
        raise AssertionError(f"layer {highest} has the *highest* mean effective rank; look for the lowest")
    assert int(layer) == best, (
        f"layer {int(layer)} has mean effective rank {means[acts.layers.index(int(layer))]:.2f}, "
        f"but another layer is lower: average effective_rank(acts.head(layer, h)) over a layer's heads"
    )


@checker("pursuit.fool_mp")
def _check_fool_mp(answer) -> None:
    if not isinstance(answer, tuple) or len(answer) != 3:
        raise AssertionError("answer with a tuple (x, D, support): the signal, the dictionary and three atom indices")
    x, D, support = answer
    x = torch.as_tensor(x, dtype=torch.float64)
    D = torch.as_tensor(D, dtype=torch.float64)
    assert D.ndim == 2 and x.ndim == 1 and x.shape[0] == D.shape[1], (
        f"D must be [v, d] and x [d]; got D {tuple(D.shape)} and x {tuple(x.shape)}"
    )
    norms = D.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), "every atom (row of D) must have unit norm"
    support = [int(j) for j in support]
    assert len(support) == 3 and len(set(support)) == 3, "support must name three different atoms"
    assert all(0 <= j < len(D) for j in support), f"an atom of the support is outside the dictionary's {len(D)} rows"
    coef = torch.linalg.lstsq(D[support].T, x[:, None]).solution[:, 0]
    residual = float((x - coef @ D[support]).norm() / x.norm())
    assert residual < 1e-6, f"x is not a combination of the support's atoms (relative residual {residual:.2e})"
    mp = set(matching_pursuit(x, D, n_atoms=3).atoms.tolist())
    found = set(omp(x, D, n_atoms=3).atoms.tolist())
    if mp == set(support):
        raise AssertionError("three steps of MP found the whole support: make the support's atoms correlated, "
                             "so that MP's residual still points at an atom it has already chosen")
    assert found == set(support), (
        f"OMP found {sorted(found)}, not the support {sorted(support)}: keep a decoy-free dictionary so that OMP succeeds"
    )


def _top_atoms(scores: torch.Tensor, k: int) -> list[int]:
    return [int(j) for j in scores.topk(k).indices]


@checker("pursuit.centred_lens")
def _check_centred_lens(centred_lens) -> None:
    g = torch.Generator().manual_seed(21)
    d, n = 16, 200
    atoms = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q.T[:12]  # orthonormal rows
    coef = torch.zeros(n, len(atoms), dtype=torch.float64)
    coef[:, 0] = 8.0  # a large constant write along atom 0: no variation
    coef[:, 1] = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)  # steady variation along atom 1
    coef[0, 2] = 25.0  # one very large write along atom 2, on a single prompt
    coef[:, 3] = 0.6 * torch.randn(n, generator=g, dtype=torch.float64)
    X = coef @ atoms + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    logits = (X - X.mean(0)) @ atoms.T
    expected = _top_atoms(logits.abs().mean(0), 3)
    got = [int(j) for j in centred_lens(X.clone(), atoms.clone(), 3)]
    assert len(got) == 3, f"returned {len(got)} atoms, expected k = 3"
    if got[0] == _top_atoms(X.mean(0) @ atoms.T, 1)[0] and expected[0] != got[0]:
        raise AssertionError("atom 0 has the largest mean logit but never varies: centre X (subtract X.mean(0)) first")
    if got[:2] == _top_atoms(logits.pow(2).mean(0), 2) and got[:2] != expected[:2]:
        raise AssertionError("that is the order of the mean *squared* logit, led by one prompt; "
                             "use the mean absolute logit (SOMP's L1 criterion)")
    assert got == expected, (
        f"returned atoms {got}, expected {expected}: the k atoms with the largest mean |logit| "
        "over the centred rows, largest first"
    )


@lru_cache(maxsize=1)
def mean_token_direction() -> torch.Tensor:
    """The unit mean of SmolLM2's unit unembedding rows (float64): the direction all tokens share."""
    from hp_mini.model.loading import load_model
    from hp_mini.read.dictionary import unembedding_dictionary

    model, tokenizer = load_model(progress=False)
    mean = unembedding_dictionary(model, tokenizer).atoms.double().mean(0)
    return mean / mean.norm()


@checker("pursuit.projection_drop")
def _check_projection_drop(answer) -> None:
    from hp_mini.read.dictionary import Dictionary
    from hp_mini.record.activations import HeadActivations

    if not (isinstance(answer, (tuple, list)) and len(answer) == 3):
        raise AssertionError("pass a triple: (your head, the HeadActivations (acts), the control dictionary)")
    head, acts, control = answer
    assert isinstance(acts, HeadActivations), "the second item must be the chapter's HeadActivations (acts)"
    assert isinstance(control, Dictionary), (
        "the third item must be the control dictionary: same_size['tokens never in the prompts']"
    )
    layer, head = head_answer(head, (acts.n_layers, acts.n_heads))
    assert layer == 0, f"L{layer}H{head} is not in layer 0: the question is about layer 0's heads"
    u = mean_token_direction()
    assert u.shape[0] == acts.d_model, (
        f"these activations are {acts.d_model} wide, SmolLM2's token rows {u.shape[0]}: record SmolLM2's heads"
    )
    n_atoms = min(20, len(control))
    before, drops = [], []
    for h in range(acts.n_heads):
        X = acts.head(0, h).double()
        kept = X - (X @ u)[:, None] * u
        evr = [float(somp(x, control, n_atoms=n_atoms).evr[-1]) for x in (X, kept)]
        before.append(evr[0])
        drops.append(evr[0] - evr[1])
    best = max(range(acts.n_heads), key=drops.__getitem__)
    if head != best and drops[head] < drops[best] - 1e-6:
        if head == max(range(acts.n_heads), key=before.__getitem__):
            raise AssertionError(f"L0H{head} has the highest generic EVR as recorded; the question is which head "
                                 "*loses* the most when the direction is projected out")
        raise AssertionError(
            f"L0H{head} loses {drops[head]:.3f} of EVR, but another head of layer 0 loses more: compare, head by "
            f"head, the EVR after {n_atoms} atoms with and without the shared direction"
        )

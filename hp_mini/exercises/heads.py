"""Checkers for the chapter "Heads and the residual stream"."""

from __future__ import annotations

import torch

from . import checker


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@checker("heads.contribution")
def _check_contribution(head_contributions) -> None:
    n_heads, d_model, d_head = 3, 10, 4
    g = _gen(0)
    W_O = torch.randn(n_heads, d_model, d_head, generator=g)
    z = torch.randn(n_heads * d_head, generator=g)
    expected = torch.stack([W_O[h] @ z[h * d_head : (h + 1) * d_head] for h in range(n_heads)])
    got = head_contributions(z, W_O)
    got = torch.as_tensor(got)
    assert tuple(got.shape) == (n_heads, d_model), (
        f"returned shape {tuple(got.shape)}, expected {(n_heads, d_model)}: one d_model-wide vector per head"
    )
    # The typical slip: applying the whole projection (or a transposed block) to all of z.
    if torch.allclose(got.sum(0), expected.sum(0), atol=1e-4) and not torch.allclose(got, expected, atol=1e-4):
        raise AssertionError("the rows add up to the layer output but are not the per-head pieces: "
                             "did you split z into heads in the right order (head h is z[h*d_head:(h+1)*d_head])?")
    assert torch.allclose(got, expected, atol=1e-4), (
        "the contributions are wrong: head h's piece is W_O[h] @ z_h, with z_h = z[h*d_head:(h+1)*d_head]"
    )
    assert torch.allclose(got.sum(0), W_O.permute(1, 0, 2).reshape(d_model, -1) @ z, atol=1e-4)


@checker("heads.direct_logits")
def _check_direct_logits(direct_logits) -> None:
    g = _gen(1)
    n, d_model, vocab, eps = 5, 8, 20, 1e-5
    x = torch.randn(n, d_model, generator=g)
    U = torch.randn(vocab, d_model, generator=g)
    gamma = torch.rand(d_model, generator=g) + 0.5
    resid = 3 * torch.randn(d_model, generator=g)
    token = 7
    inv_rms = 1 / torch.sqrt(resid.pow(2).mean() + eps)
    expected = (x * gamma * inv_rms) @ U[token]
    got = torch.as_tensor(direct_logits(x, U, gamma, resid, token, eps))
    assert got.shape == (n,), f"returned shape {tuple(got.shape)}, expected ({n},): one logit per piece"
    if torch.allclose(got, (x * gamma) @ U[token], atol=1e-4):
        raise AssertionError("the logits miss the final norm's scale: divide by sqrt(mean(resid**2) + eps)")
    if torch.allclose(got, (x * inv_rms) @ U[token], atol=1e-4):
        raise AssertionError("the logits miss the final norm's weight: multiply the pieces by gamma")
    if torch.allclose(got, (x * gamma / torch.sqrt(x.pow(2).mean(1, keepdim=True) + eps)) @ U[token], atol=1e-4):
        raise AssertionError("each piece was normalised by its own rms: the scale must come from the full residual `resid`")
    assert torch.allclose(got, expected, atol=1e-4), "the logits are wrong: (x * gamma / rms(resid)) @ U[token_id]"


@checker("heads.subspace")
def _check_subspace(subspace_fraction) -> None:
    g = _gen(2)
    d_model, d_head = 12, 3
    W = torch.randn(d_model, d_head, generator=g)
    inside = W @ torch.randn(d_head, generator=g)
    got = float(subspace_fraction(inside, W))
    assert abs(got - 1.0) < 1e-4, f"a vector in the column space of W gave {got:.4f}, expected 1"
    v = torch.randn(d_model, generator=g)
    Q, _ = torch.linalg.qr(W)
    expected = float((Q.T @ v).pow(2).sum() / v.pow(2).sum())
    got = float(subspace_fraction(v, W))
    naive = float((W.T @ v).pow(2).sum() / v.pow(2).sum())
    if abs(got - naive) < 1e-6 and abs(naive - expected) > 1e-4:
        raise AssertionError("you projected on the columns of W as if they were orthonormal: "
                             "orthonormalise them first (torch.linalg.qr)")
    assert abs(got - expected) < 1e-4, f"returned {got:.4f}, expected {expected:.4f} (||Q^T v||^2 / ||v||^2)"
    assert 0 <= got <= 1 + 1e-6, f"a fraction must lie in [0, 1], got {got}"

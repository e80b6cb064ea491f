import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def test_contribution_accepts_correct_and_rejects_wrong_order():
    def good(z, W_O):
        h, d, k = W_O.shape
        return torch.einsum("hdk,hk->hd", W_O, z.reshape(h, k))

    assert check("heads.contribution", good, quiet=True)

    def wrong_split(z, W_O):  # interleaves the heads: sums still match, pieces do not
        h, d, k = W_O.shape
        return torch.einsum("hdk,hk->hd", W_O, z.reshape(k, h).T)

    with pytest.raises(ExerciseError, match="shape|contributions are wrong|split z"):
        check("heads.contribution", wrong_split, quiet=True)

    def whole_layer(z, W_O):
        h, d, k = W_O.shape
        return W_O.permute(1, 0, 2).reshape(d, h * k) @ z

    with pytest.raises(ExerciseError, match="returned shape"):
        check("heads.contribution", whole_layer, quiet=True)


def test_direct_logits_names_the_missing_scale():
    def good(x, U, gamma, resid, token_id, eps):
        return (x * gamma * torch.rsqrt(resid.pow(2).mean() + eps)) @ U[token_id]

    assert check("heads.direct_logits", good, quiet=True)

    def no_norm(x, U, gamma, resid, token_id, eps):
        return (x * gamma) @ U[token_id]

    with pytest.raises(ExerciseError, match="final norm's scale"):
        check("heads.direct_logits", no_norm, quiet=True)


def test_subspace_fraction_rejects_non_orthonormal_projection():
    def good(v, W):
        Q, _ = torch.linalg.qr(W)
        return float((Q.T @ v).pow(2).sum() / v.pow(2).sum())

    assert check("heads.subspace", good, quiet=True)

    def naive(v, W):
        return float((W.T @ v).pow(2).sum() / v.pow(2).sum())

    with pytest.raises(ExerciseError):
        check("heads.subspace", naive, quiet=True)

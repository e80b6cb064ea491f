import pytest
import torch

from helpers import direct_logits_by_hook

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
    def good(x, U, gamma, resid, eps):
        return (x * gamma * torch.rsqrt(resid.pow(2).mean() + eps)) @ U.T

    assert check("heads.direct_logits", good, quiet=True)

    def no_norm(x, U, gamma, resid, eps):
        return (x * gamma) @ U.T

    with pytest.raises(ExerciseError, match="final norm's scale"):
        check("heads.direct_logits", no_norm, quiet=True)

    def own_rms(x, U, gamma, resid, eps):
        return (x * gamma * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) @ U.T

    with pytest.raises(ExerciseError, match="its own rms"):
        check("heads.direct_logits", own_rms, quiet=True)

    def batch_only(x, U, gamma, resid, eps):  # works on [n, d] but not on one piece [d]
        return torch.einsum("nd,vd->nv", x * gamma * torch.rsqrt(resid.pow(2).mean() + eps), U)

    with pytest.raises((ExerciseError, RuntimeError)):
        check("heads.direct_logits", batch_only, quiet=True)


def test_subspace_fraction_rejects_non_orthonormal_projection():
    def good(v, W):
        Q, _ = torch.linalg.qr(W)
        return float((Q.T @ v).pow(2).sum() / v.pow(2).sum())

    assert check("heads.subspace", good, quiet=True)

    def naive(v, W):
        return float((W.T @ v).pow(2).sum() / v.pow(2).sum())

    with pytest.raises(ExerciseError):
        check("heads.subspace", naive, quiet=True)


def _shares(z, W_O, w, eps, gain=lambda w: 1 + w, own_rms=False):
    h, d, k = W_O.shape
    pieces = torch.einsum("hdk,thk->thd", W_O, z.view(len(z), h, k))
    ref = pieces if own_rms else pieces.sum(1, keepdim=True)
    return gain(w) * pieces / (ref.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def test_post_norm_shares_accepts_formula_and_names_each_slip():
    assert check("heads.post_norm_shares", _shares, quiet=True)
    with pytest.raises(ExerciseError, match="1 \\+ w"):
        check("heads.post_norm_shares", lambda z, W, w, e: _shares(z, W, w, e, gain=lambda w: w), quiet=True)
    with pytest.raises(ExerciseError, match="whole attention output"):
        check("heads.post_norm_shares", lambda z, W, w, e: _shares(z, W, w, e, own_rms=True), quiet=True)
    with pytest.raises(ExerciseError, match="returned shape"):
        check("heads.post_norm_shares", lambda z, W, w, e: _shares(z, W, w, e).sum(1), quiet=True)


def test_name_mover_matches_an_independent_hook(smollm2):
    import hp_mini
    from hp_mini.exercises.heads import NAME_MOVER_PROMPT

    model, tok = smollm2
    sites = hp_mini.attention_heads(model)
    logit = direct_logits_by_hook(model, tok, NAME_MOVER_PROMPT, " Mary")
    flat = logit.flatten().argsort(descending=True)
    best, second = (divmod(int(i), sites[0].n_heads) for i in flat[:2])
    assert check("heads.name_mover", best, quiet=True)
    assert check("heads.name_mover", hp_mini.head_label(*best), quiet=True)
    with pytest.raises(ExerciseError, match="number 2 by its direct logit"):
        check("heads.name_mover", second, quiet=True)
    worst = divmod(int(flat[-1]), sites[0].n_heads)
    with pytest.raises(ExerciseError, match="negative"):
        check("heads.name_mover", worst, quiet=True)
    with pytest.raises(ExerciseError, match="does not exist"):
        check("heads.name_mover", (len(sites), 0), quiet=True)
    with pytest.raises(ExerciseError, match="label like 'L3H5'"):
        check("heads.name_mover", "layer 3", quiet=True)


def test_direct_head_logits_is_the_logit_lens_of_the_last_position(smollm2):
    from hp_mini.exercises.heads import NAME_MOVER_PROMPT, direct_head_logits

    model, tok = smollm2
    by_hook = direct_logits_by_hook(model, tok, NAME_MOVER_PROMPT, " Mary").double()
    got = direct_head_logits(NAME_MOVER_PROMPT, " Mary")
    assert got.shape == by_hook.shape == (30, 9)
    torch.testing.assert_close(got, by_hook, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.flatten().argsort(descending=True)[:5], by_hook.flatten().argsort(descending=True)[:5])


def test_post_norm_ablation_rejects_malformed_answers_before_any_model_runs():
    with pytest.raises(ExerciseError, match="keys 'head'"):
        check("heads.post_norm_ablation", {"head": (0, 0), "residual": 0.1}, quiet=True)
    with pytest.raises(ExerciseError, match="not a probability"):
        check("heads.post_norm_ablation", {"head": (0, 0), "residual": 3.2, "pre_norm": 0.1}, quiet=True)
    with pytest.raises(ExerciseError, match="pair"):
        check("heads.post_norm_ablation", {"head": 5, "residual": 0.1, "pre_norm": 0.1}, quiet=True)

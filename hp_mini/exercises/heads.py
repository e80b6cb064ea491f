"""Checkers for the chapters "Heads and the residual stream" and "Post-norm models".

The two investigations (``heads.name_mover`` and ``heads.post_norm_ablation``)
check the learner's finding against the library on the real models, which are
loaded once per process.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from hp_mini.exercises import checker, head_answer


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
    inv_rms = 1 / torch.sqrt(resid.pow(2).mean() + eps)
    expected = (x * gamma * inv_rms) @ U.T
    got = torch.as_tensor(direct_logits(x, U, gamma, resid, eps))
    assert tuple(got.shape) == (n, vocab), (
        f"returned shape {tuple(got.shape)}, expected {(n, vocab)}: one logit per piece and token"
    )
    if torch.allclose(got, (x * gamma) @ U.T, atol=1e-4):
        raise AssertionError("the logits miss the final norm's scale: divide by sqrt(mean(resid**2) + eps)")
    if torch.allclose(got, (x * inv_rms) @ U.T, atol=1e-4):
        raise AssertionError("the logits miss the final norm's weight: multiply the pieces by gamma")
    if torch.allclose(got, (x * gamma / torch.sqrt(x.pow(2).mean(1, keepdim=True) + eps)) @ U.T, atol=1e-4):
        raise AssertionError("each piece was normalised by its own rms: the scale must come from the full residual `resid`")
    assert torch.allclose(got, expected, atol=1e-4), "the logits are wrong: (x * gamma / rms(resid)) @ U.T"
    one = torch.as_tensor(direct_logits(x[0], U, gamma, resid, eps))
    assert tuple(one.shape) == (vocab,) and torch.allclose(one, expected[0], atol=1e-4), (
        "a single piece x of shape [d_model] must give [vocab] logits: let the matmul handle any leading shape"
    )


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


@checker("heads.post_norm_shares")
def _check_post_norm_shares(head_shares) -> None:
    g = _gen(3)
    tokens, n_heads, d_model, d_head, eps = 4, 3, 10, 2, 1e-6
    z = torch.randn(tokens, n_heads * d_head, generator=g)
    W_O = torch.randn(n_heads, d_model, d_head, generator=g)
    w = 0.5 * torch.randn(d_model, generator=g)
    pieces = torch.einsum("hdk,thk->thd", W_O, z.view(tokens, n_heads, d_head))  # [t, H, d]
    o = pieces.sum(1, keepdim=True)
    rms = (o.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    expected = (1 + w) * pieces / rms
    got = torch.as_tensor(head_shares(z, W_O, w, eps))
    assert tuple(got.shape) == (tokens, n_heads, d_model), (
        f"returned shape {tuple(got.shape)}, expected {(tokens, n_heads, d_model)}: [tokens, heads, d_model]"
    )
    if torch.allclose(got, w * pieces / rms, atol=1e-4):
        raise AssertionError("the gain is 1 + w on Gemma, not the stored weight w")
    if torch.allclose(got, (1 + w) * pieces, atol=1e-4):
        raise AssertionError("the shares miss the norm's 1 / rms(o)")
    if torch.allclose(got, (1 + w) * pieces / (pieces.pow(2).mean(-1, keepdim=True) + eps).sqrt(), atol=1e-4):
        raise AssertionError("each piece was divided by its own rms: use the rms of the whole attention output o")
    assert torch.allclose(got, expected, atol=1e-4), "the shares are wrong: (1 + w) * W_O[h] z_h / rms(o)"


@lru_cache(maxsize=2)
def _model(name: str):
    from hp_mini.model.loading import load_model

    return load_model(name, progress=False)


@lru_cache(maxsize=8)
def direct_head_logits(prompt: str, word: str) -> torch.Tensor:
    """Each SmolLM2 head's direct logit for ``word`` at the last position of ``prompt``, ``[L, H]``.

    The logit lens (:func:`hp_mini.read.lens.logit_lens`) of the heads'
    writes at that position, read through the unembedding row of ``word``'s
    first token with the final norm's gain folded in; the norm's 1 / rms, one
    positive number per prompt, is left out: it orders no head differently.
    The investigations' checkers share it (and one loaded model).
    """
    from hp_mini.model.architectures import model_parts
    from hp_mini.read.dictionary import Dictionary
    from hp_mini.read.lens import logit_lens
    from hp_mini.record.activations import record_heads

    model, tokenizer = _model("smollm2-135m")
    parts = model_parts(model)
    token = tokenizer.encode(word, add_special_tokens=False)[0]
    with torch.no_grad():
        acts = record_heads(model, tokenizer, [prompt], pool="last", progress=False)
        atom = parts.unembedding.weight[token].float() * parts.final_norm.gain.float()  # gamma * U[word]
    return logit_lens(acts, Dictionary(atom[None], [word])).logits[..., 0]


#: The investigation of "Heads and the residual stream": who writes the indirect object?
NAME_MOVER_PROMPT = "When Mary and John went to the store, John gave a drink to"


@checker("heads.name_mover")
def _check_name_mover(answer) -> None:
    mary = direct_head_logits(NAME_MOVER_PROMPT, " Mary")
    john = direct_head_logits(NAME_MOVER_PROMPT, " John")
    n_heads = mary.shape[1]
    layer, head = head_answer(answer, mary.shape)

    best = divmod(int(mary.flatten().argmax()), n_heads)
    if (layer, head) == best:
        return
    if (layer, head) == divmod(int(mary.flatten().argmin()), n_heads):
        raise AssertionError("that head adds the most *negative* logit to ' Mary': it pushes the answer down")
    if (layer, head) == divmod(int(john.flatten().argmax()), n_heads):
        raise AssertionError("that head writes ' John', the subject; the question asks for ' Mary'")
    rank = int((mary.flatten() > mary[layer, head]).sum()) + 1
    raise AssertionError(
        f"L{layer}H{head} is number {rank} by its direct logit for ' Mary' on this prompt; "
        "record the last position of the prompt and rank all heads by (gamma * x_h) @ U[' Mary']"
    )


#: The investigation of "Post-norm models": an ablation, two ways.
ABLATION_PROMPT = "The capital of France is"


@lru_cache(maxsize=8)
def _post_norm_probability(layer: int, head: int, mode: str | None) -> float:
    from hp_mini.edit.scaling import scale_heads

    model, tokenizer = _model("gemma3-270m")
    batch = tokenizer(ABLATION_PROMPT, return_tensors="pt")
    paris = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    with torch.no_grad():
        if mode is None:
            logits = model(**batch).logits
        else:
            with scale_heads(model, {(layer, head): 0.0}, mode=mode):
                logits = model(**batch).logits
    return float(logits[0, -1].float().softmax(-1)[paris])


@checker("heads.post_norm_ablation")
def _check_post_norm_ablation(answer) -> None:
    assert isinstance(answer, dict) and {"head", "residual", "pre_norm"} <= set(answer), (
        "pass a dict with keys 'head' (layer, head), 'residual' and 'pre_norm' "
        "(the probability of ' Paris' under each edit)"
    )
    layer, head = head_answer(answer["head"])
    got = {mode: float(answer[mode]) for mode in ("residual", "pre_norm")}
    for mode, p in got.items():
        assert 0 <= p <= 1, f"the {mode!r} value {p:.3g} is not a probability: apply a softmax to the logits"
    want = {mode: _post_norm_probability(layer, head, mode) for mode in got}
    base = _post_norm_probability(layer, head, None)

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-3 + 1e-2 * b

    if close(got["residual"], want["pre_norm"]) and close(got["pre_norm"], want["residual"]) and not close(
        want["residual"], want["pre_norm"]
    ):
        raise AssertionError("the two values are swapped: mode='residual' is the exact edit, mode='pre_norm' scales z_h")
    for mode in got:
        if not close(got[mode], want[mode]):
            hint = " (that is the unedited model's probability)" if close(got[mode], base) else ""
            raise AssertionError(
                f"with L{layer}H{head} set to alpha = 0 by mode={mode!r}, P(' Paris') is {want[mode]:.4f}, "
                f"you gave {got[mode]:.4f}{hint}"
            )

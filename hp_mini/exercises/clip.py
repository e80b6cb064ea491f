"""Checkers for the exercises of the chapter on CLIP heads (``book/07_clip_heads.md``)."""

from __future__ import annotations

import functools

import torch

from hp_mini.exercises import checker


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@checker("clip.head_split")
def _check_head_split(head_contributions) -> None:
    """``head_contributions(z [n, H*dh], weight [d, H*dh], n_heads) -> [n, H, d]``."""
    n, n_heads, d_head, d_model = 3, 4, 5, 7
    z = torch.randn(n, n_heads * d_head, generator=_gen(0))
    weight = torch.randn(d_model, n_heads * d_head, generator=_gen(1))
    bias = torch.randn(d_model, generator=_gen(2))
    got = head_contributions(z, weight, n_heads)
    assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}; expected a tensor"
    assert tuple(got.shape) == (n, n_heads, d_model), (
        f"returned shape {tuple(got.shape)}, expected {(n, n_heads, d_model)} = [n, n_heads, d_model]"
        + (": did you forget to multiply by the head's slice of the weight?" if got.shape[-1] == d_head else "")
    )
    expected = torch.stack(
        [z[:, h * d_head : (h + 1) * d_head] @ weight[:, h * d_head : (h + 1) * d_head].T for h in range(n_heads)], 1
    )
    full = z @ weight.T + bias
    if not torch.allclose(got.sum(1) + bias, full, atol=1e-4):
        raise AssertionError(
            "the heads' contributions plus the bias do not add up to the projection's output "
            "z @ weight.T + bias: head h owns the columns h*d_head:(h+1)*d_head of the weight, "
            "in the same order as its slice of z"
        )
    if not torch.allclose(got, expected, atol=1e-4):
        raise AssertionError(
            "the contributions add up to the output but are not split by head: head h must use only "
            "its own slice z[:, h*d_head:(h+1)*d_head] and weight[:, h*d_head:(h+1)*d_head]"
        )


@checker("clip.to_joint")
def _check_to_joint(to_joint) -> None:
    """``to_joint(x [n, d], ln_weight [d], proj [d, e], sigma [n]) -> [n, e]``."""
    n, d, e = 4, 6, 3
    x = torch.randn(n, d, generator=_gen(3)) + 2.0  # a non-zero mean, so forgetting the centring shows
    g = 1 + 0.3 * torch.randn(d, generator=_gen(4))
    proj = torch.randn(d, e, generator=_gen(5))
    sigma = 0.5 + torch.rand(n, generator=_gen(6))
    got = to_joint(x, g, proj, sigma)
    assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}; expected a tensor"
    assert tuple(got.shape) == (n, e), f"returned shape {tuple(got.shape)}, expected {(n, e)} = [n, embed_dim]"
    expected = ((x - x.mean(-1, keepdim=True)) * g / sigma[:, None]) @ proj
    if torch.allclose(got, expected, atol=1e-4):
        return
    if torch.allclose(got, (x * g / sigma[:, None]) @ proj, atol=1e-4):
        raise AssertionError(
            "LayerNorm subtracts the mean over features before scaling: the linear part of ln_post is "
            "g * (x - x.mean(-1)) / sigma; you left out the centring"
        )
    if torch.allclose(got, ((x - x.mean(-1, keepdim=True)) * g) @ proj, atol=1e-4):
        raise AssertionError("divide by each image's sigma: ln_post scales the whole residual stream by 1/sigma")
    if torch.allclose(got, ((x - x.mean(-1, keepdim=True)) / sigma[:, None]) @ proj, atol=1e-4):
        raise AssertionError("multiply by ln_post's weight g (elementwise) before the projection")
    raise AssertionError(
        "the result does not match ((x - mean) * g / sigma) @ proj; the ln_post bias belongs to no head "
        "and must not be added"
    )


@checker("clip.zero_shot")
def _check_zero_shot(zero_shot) -> None:
    """``zero_shot(image_emb [n, e], text_emb [v, e]) -> LongTensor [n]`` by cosine similarity."""
    gen = _gen(7)
    text = torch.randn(5, 8, generator=gen)
    text[0] *= 20.0  # a long text embedding: a raw dot product would favour it
    images = torch.randn(30, 8, generator=gen) * (1 + 5 * torch.rand(30, 1, generator=gen))
    got = zero_shot(images, text)
    assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}; expected a LongTensor of class indices"
    assert tuple(got.shape) == (30,), f"returned shape {tuple(got.shape)}, expected (30,): one class per image"
    expected = (torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T).argmax(-1)
    if torch.equal(got.long(), expected):
        return
    if torch.equal(got.long(), (images @ text.T).argmax(-1)):
        raise AssertionError(
            "CLIP compares directions: normalise the text embeddings (and the images') before the dot "
            "product, otherwise a long text embedding wins for every image"
        )
    raise AssertionError("the predictions differ from the argmax of cosine similarities between images and prompts")


@functools.lru_cache(maxsize=1)
def _digits_clip():
    """``digits-clip``, its held-out digits and its SOMP ranking, computed once per process for the checks."""
    from hp_mini.model.loading import load_model
    from hp_mini.rank.ranking import rank_heads
    from hp_mini.vision import digits, digits_clip
    from hp_mini.record.images import record_image_heads
    from hp_mini.vision.zero_shot import text_dictionary

    model, processor = load_model("digits-clip")
    test = digits.digits_dataset("test")
    acts = record_image_heads(model, processor, test["image"], pool="cls", space="joint")
    dictionary = text_dictionary(model, processor, digits_clip.class_prompts())
    somp = rank_heads(acts, dictionary, n_atoms=len(dictionary), progress=False)
    return model, processor, test, digits.digits_dataset("test", per_class=10), somp


@checker("clip.worst_head")
def _check_worst_head(answer) -> None:
    """``{"head": (layer, head), "somp_rank": int, "top_digit": int}`` for digits-clip."""
    from hp_mini.edit.scaling import scale_heads
    from hp_mini.model.sites import head_label
    from hp_mini.vision import digits_clip
    from hp_mini.experiments.classification import one_head_at_a_time

    keys = {"head", "somp_rank", "top_digit"}
    assert isinstance(answer, dict) and keys <= set(answer), (
        f"pass a dict with the keys {sorted(keys)}; got {answer!r:.80}"
    )
    try:
        head = tuple(int(v) for v in answer["head"])
        rank, top = int(answer["somp_rank"]), int(answer["top_digit"])
    except (TypeError, ValueError):
        raise AssertionError(
            "answer['head'] must be a (layer, head) pair of ints, answer['somp_rank'] and answer['top_digit'] ints"
        ) from None
    model, processor, test, small, somp = _digits_clip()
    assert len(head) == 2 and head in somp.heads, f"{answer['head']!r} is not a head of digits-clip's image encoder"
    scan = one_head_at_a_time(model, digits_clip.evaluator(model, processor, small["image"], small["label"]), somp.heads)
    worst = set(scan.index[scan["accuracy"] == scan["accuracy"].min()])  # ties: any of them
    assert head_label(*head) in worst, (
        f"inverting {head_label(*head)} alone leaves {scan.loc[head_label(*head), 'accuracy']:.2f} of the "
        f"zero-shot accuracy on {len(small['label'])} held-out digits, but another head leaves {scan['accuracy'].min():.2f}: "
        "invert every head in turn (hp_mini.experiments.classification.one_head_at_a_time) and take the one that leaves least"
    )
    want_rank = somp.heads.index(head) + 1
    if rank == want_rank - 1:
        raise AssertionError(f"somp_rank counts from 1 (the best head is rank 1); {head_label(*head)} is {want_rank}")
    assert rank == want_rank, (
        f"somp_rank = {rank}, but the SOMP ranking of the ten digit prompts (on the held-out digits) "
        f"puts {head_label(*head)} at rank {want_rank}"
    )
    evaluate = digits_clip.evaluator(model, processor, test["image"], test["label"])
    with scale_heads(model, {head: -1.0}):
        evaluate()
    counts = torch.bincount(evaluate.predictions, minlength=10)
    assert counts[top] == counts.max(), (
        f"with {head_label(*head)} inverted the model predicts {top} for {int(counts[top])} of the {len(test['label'])} "
        f"held-out digits, but {int(counts.argmax())} for {int(counts.max())}: count the predictions "
        "(evaluate.predictions), not the labels"
    )


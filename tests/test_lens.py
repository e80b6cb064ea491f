"""hp_mini.read.lens: the logit lens of every head, checked against per-head sums, and its callers."""

from __future__ import annotations

import pytest
import torch

import hp_mini
from hp_mini.read.dictionary import Dictionary
from hp_mini.read.lens import LogitLens, check_dictionary, logit_lens
from hp_mini.record.activations import HeadActivations, HeadMoments


def synthetic(n=12, layers=(2, 5), n_heads=3, d_head=4, d_model=10, v=25, seed=0):
    """Random heads of two layers numbered 2 and 5, and a random dictionary."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(v, d_model, generator=g)
    W_O = torch.randn(len(layers), n_heads, d_model, d_head, generator=g)
    z = torch.randn(n, len(layers), n_heads, d_head, generator=g) + 0.2
    acts = HeadActivations(z, W_O, None, list(layers), None, [f"prompt {i}" for i in range(n)])
    return acts, Dictionary(D, [f"t{i}" for i in range(v)])


def moments_only(acts: HeadActivations) -> HeadActivations:
    z = acts.z.double()
    moments = HeadMoments(z.shape[0], z.sum(0), torch.einsum("nlhk,nlhj->lhkj", z, z))
    return HeadActivations(None, acts.W_O, None, list(acts.layers), moments)


def test_logits_are_each_heads_mean_logit_for_each_atom():
    acts, dic = synthetic()
    lens = logit_lens(acts, dic)
    assert isinstance(lens, LogitLens) and lens.logits.shape == (2, 3, 25) and lens.logits.dtype == torch.float64
    assert lens.heads == acts.heads == [(2, 0), (2, 1), (2, 2), (5, 0), (5, 1), (5, 2)]
    for row, layer in enumerate(acts.layers):
        for head in range(3):
            # the prompts' logits one by one, then their mean: an independent sum
            Z, W = acts.factors(layer, head)
            by_prompt = (Z.double() @ W.double().T) @ dic.atoms.double().T  # [n, v]
            torch.testing.assert_close(lens.logits[row, head], by_prompt.mean(0), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(lens.head_logits(layer, head), by_prompt.mean(0), rtol=1e-12, atol=1e-12)
            assert lens.scores[row, head].item() == pytest.approx(by_prompt.mean().item(), rel=1e-12)


def test_moments_give_the_same_lens_as_samples():
    acts, dic = synthetic(seed=1)
    torch.testing.assert_close(logit_lens(moments_only(acts), dic).logits, logit_lens(acts, dic).logits)


def test_one_prompt_is_enough():
    acts, dic = synthetic(n=1, seed=2)
    lens = logit_lens(acts, dic)
    Z, W = acts.factors(5, 2)
    torch.testing.assert_close(lens.logits[1, 2], (W.double() @ Z[0].double()) @ dic.atoms.double().T)


def test_top_and_top_atoms_are_the_largest_mean_logits():
    acts, dic = synthetic(seed=3)
    lens = logit_lens(acts, dic)
    top = lens.top_atoms(4)
    assert list(top) == acts.heads
    for layer, head in acts.heads:
        logits = lens.logits[acts.layers.index(layer), head].tolist()
        best = sorted(range(len(dic)), key=lambda j: -logits[j])[:4]
        assert top[(layer, head)] == [dic.labels[j] for j in best]
        labels, values = lens.top(layer, head, 4)
        assert labels == top[(layer, head)]
        assert values.tolist() == pytest.approx([logits[j] for j in best], rel=1e-12)
    assert lens.top_atoms(0)[(2, 0)] == [] and len(lens.top_atoms(1000)[(2, 0)]) == len(dic)
    assert len(lens.top(2, 0, 1000)[0]) == len(dic)


def test_scores_are_exactly_the_scores_rank_heads_sorts():
    acts, dic = synthetic(seed=4)
    ranking = hp_mini.rank_heads(acts, dic, method="logit_lens", out_dtype=torch.float64, progress=False)
    lens = logit_lens(acts, dic)
    for (layer, head), score in zip(ranking.heads, ranking.scores.tolist()):
        assert score == lens.scores[acts.layers.index(layer), head].item()


def test_a_bad_dictionary_is_refused_with_what_to_do():
    acts, dic = synthetic()
    with pytest.raises(ValueError, match="the dictionary is empty.*dictionary.missing"):
        logit_lens(acts, dic.atoms[:0])
    with pytest.raises(ValueError, match="atoms are 7 wide but the heads write 10-wide"):
        logit_lens(acts, torch.randn(5, 7))
    nan = dic.atoms.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="contain 1 NaN or infinite values; rebuild"):
        logit_lens(acts, nan)
    assert check_dictionary(nan, 10, finite=False).atoms is nan


def test_bad_activations_are_refused():
    acts, dic = synthetic()
    with pytest.raises(TypeError, match="acts must be HeadActivations"):
        logit_lens(dic, dic)
    with pytest.raises(ValueError, match="neither samples nor moments"):
        logit_lens(HeadActivations(None, acts.W_O, None, list(acts.layers)), dic)
    acts.z[0, 1, 2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"the mean write of 1 head \(L5H2\) is NaN or infinite"):
        logit_lens(acts, dic)


def test_a_head_or_count_out_of_range_is_refused():
    acts, dic = synthetic()
    lens = logit_lens(acts, dic)
    with pytest.raises(IndexError, match="layer 3 was not read; the lens has layers \\[2, 5\\]"):
        lens.top(3, 0, 2)
    with pytest.raises(IndexError, match="head 3 is out of range"):
        lens.head_logits(2, 3)
    with pytest.raises(ValueError, match="k must be at least 0"):
        lens.top_atoms(-1)
    with pytest.raises(TypeError, match="k must be an integer"):
        lens.top(2, 0, 1.5)

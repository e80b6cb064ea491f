"""The vision experiments' dictionaries and image attention (hp_mini.experiments.vision)."""

from __future__ import annotations

import pytest
import torch

import hp_mini
from hp_mini.experiments import vision


def test_top_heads_orders_a_grid_best_first():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert vision.top_heads(scores) == [(0, 1), (1, 0), (1, 1), (0, 0)]
    assert vision.top_heads(scores, 2) == [(0, 1), (1, 0)]


def test_top_heads_refuses_a_flat_score_list_and_a_bad_k():
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        vision.top_heads(torch.ones(4))
    with pytest.raises(ValueError, match="between 0 and 4"):
        vision.top_heads(torch.ones(2, 2), 5)


def test_somp_and_lens_rankings_leave_out_the_first_layers_of_both_rankings(smollm2, smollm2_heads):
    model, tok = smollm2
    dictionary = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("colours"))
    found = vision.somp_and_lens_rankings(smollm2_heads, dictionary, skip_layers=2)
    somp = hp_mini.rank_heads(smollm2_heads, dictionary, method="somp", n_atoms=len(dictionary), progress=False)
    lens = hp_mini.rank_heads(smollm2_heads, dictionary, method="logit_lens", progress=False)
    assert list(found) == ["SOMP", "logit lens"]
    for name, full in (("SOMP", somp), ("logit lens", lens)):
        kept = [(h, s) for h, s in zip(full.heads, full.scores.tolist()) if h[0] >= 2]
        assert list(zip(found[name].heads, found[name].scores.tolist())) == kept
        assert len(found[name].heads) == len(full.heads) - 2 * 9  # two layers of 9 heads left out


def test_concept_dictionary_refuses_an_unknown_concept():
    with pytest.raises(ValueError, match="'digits' or one of"):
        vision.concept_dictionary(None, None, "shapes")


@pytest.mark.slow
def test_concept_dictionary_keeps_digit_names_and_bare_numerals(smollm2):
    model, tokenizer = smollm2
    d = vision.concept_dictionary(model, tokenizer, "digits")
    labels = list(d.labels)
    # every name is one token with and without a space; " 7" is a space and "7", so only "7" is an atom
    assert {" seven", "seven", "7"} <= set(labels) and " 7" not in labels
    assert len(labels) == 30
    colours = vision.concept_dictionary(model, tokenizer, "colour")
    assert {" red", "red", " purple"} <= set(colours.labels)


@pytest.fixture(scope="module")
def llava_model():
    return hp_mini.load_model("smollm2-llava", progress=False)


@pytest.mark.slow
def test_image_attention_is_a_share_and_zero_before_the_image(llava_model):
    from hp_mini.vision import digits, llava

    model, processor = llava_model
    images = digits.digits_dataset("test", per_class=1)["image"][:3]
    text = llava.prompt(processor, "name")
    last = vision.image_attention(model, processor, images, text)
    assert last.shape == (30, 9) and last.dtype == torch.float64
    assert (last >= 0).all() and (last <= 1 + 1e-9).all() and last.max() > 0.05
    # the system turn precedes the image: causal attention cannot reach it
    assert torch.equal(vision.image_attention(model, processor, images, text, position=3), torch.zeros(30, 9))
    with pytest.raises(ValueError, match="outside the prompt"):
        vision.image_attention(model, processor, images, text, position=500)


@pytest.mark.slow
def test_image_attention_puts_the_attention_kernel_back(llava_model):
    from hp_mini.vision import digits, llava

    model, processor = llava_model
    before = model.config._attn_implementation
    vision.image_attention(model, processor, digits.digits_dataset("test", per_class=1)["image"][:1],
                           llava.prompt(processor, "name"))
    assert model.config._attn_implementation == before


def test_ranking_and_scoring_digits_are_disjoint_and_balanced():
    ranking, scoring = vision.ranking_and_scoring_digits(2, 1)
    assert sorted(ranking["label"]) == sorted(list(range(10)) * 2)
    assert sorted(scoring["label"]) == list(range(10))
    assert not set(ranking["index"]) & set(scoring["index"])
    with pytest.raises(ValueError, match="per_class must be a positive int"):
        vision.ranking_and_scoring_digits(2, 0)

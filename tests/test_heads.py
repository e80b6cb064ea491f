"""attention_heads: the declared heads of every family, the architecture layer, and heads given by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hp_mini
from helpers import FAMILIES, KNOWN, TEXT_ARCHITECTURES, at, tiny_model


@pytest.mark.parametrize("arch", FAMILIES)
def test_heads_are_the_declared_output_projections(arch):
    model = tiny_model(arch)
    known = KNOWN[arch]
    sites = hp_mini.attention_heads(model)
    assert [s.module for s in sites] == [at(layer, known.out_proj) for layer in at(model, known.layers)]
    assert all((s.post_norm is not None) == (known.post_norm_gain is not None) for s in sites)


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
def test_head_counts_follow_the_config(arch):
    model = tiny_model(arch)
    cfg = model.config
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    site = hp_mini.attention_heads(model)[0]
    assert site.n_heads == n_heads
    assert site.W_O.shape == (n_heads, site.d_model, site.d_head)
    # W_O slices are views of the projection: column block h of the weight.
    w = site.weight
    assert torch.equal(site.W_O[1], w[:, site.d_head : 2 * site.d_head])


def test_pieces_sum_to_the_projection_output():
    model = tiny_model("gemma2")  # post-norm: the pieces are not the residual writes, but they sum to o
    site = hp_mini.attention_heads(model)[1]
    z = torch.randn(2, 3, site.n_heads * site.d_head)
    torch.testing.assert_close(site.pieces(z).sum(-2) + site.bias, site.module(z), rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_counts_query_heads():
    model = tiny_model("llama")  # 6 query heads, 2 key/value heads
    site = hp_mini.attention_heads(model)[0]
    assert (site.n_heads, site.d_head) == (6, 8)


def test_unknown_architecture_names_its_class_and_the_registration_call():
    class Strange(nn.Module):
        config = type("Cfg", (), {"model_type": "strange"})()

    with pytest.raises(NotImplementedError, match=r"Strange.*hp_mini\.register_architecture\(model_type"):
        hp_mini.attention_heads(Strange())
    with pytest.raises(NotImplementedError, match=r"Strange.*register_architecture"):
        hp_mini.model_parts(Strange())


def test_a_registered_family_is_known_everywhere():
    model = tiny_model("llama")
    model.config.model_type = "my_llama"
    with pytest.raises(NotImplementedError, match="LlamaForCausalLM"):
        hp_mini.model_parts(model)
    hp_mini.register_architecture("my_llama", layers="model.layers", out_proj="self_attn.o_proj")
    parts = hp_mini.model_parts(model)
    assert parts.final_norm.module is model.model.norm and parts.mlp(1) is model.model.layers[1].mlp
    assert [s.module for s in hp_mini.attention_heads(model)] == [l.self_attn.o_proj for l in model.model.layers]


def test_heads_can_be_given_by_hand_for_an_unknown_model():
    model = tiny_model("llama")
    by_hand = hp_mini.attention_heads(model, layers="model.layers", out_proj="self_attn.o_proj", n_heads=6)
    auto = hp_mini.attention_heads(model)
    assert [s.module for s in by_hand] == [s.module for s in auto]


def test_bare_decoder_without_lm_head_is_supported():
    model = tiny_model("qwen2")
    sites = hp_mini.attention_heads(model.model)
    assert len(sites) == 2 and sites[0].module is model.model.layers[0].self_attn.o_proj


# -- heads by hand: bad input --------------------------------------------------------------- #


@pytest.mark.parametrize("n_heads, error, message", [
    (0, ValueError, "n_heads must be a positive integer, got 0"),
    (-3, ValueError, "n_heads must be a positive integer, got -3"),
    (3, ValueError, "n_heads=3 disagrees with the model's config, which declares 6"),
    (2.5, TypeError, "n_heads must be a positive integer"),
])
def test_by_hand_n_heads_is_checked(n_heads, error, message):
    model = tiny_model("llama")
    with pytest.raises(error, match=message):
        hp_mini.attention_heads(model, layers="model.layers", out_proj="self_attn.o_proj", n_heads=n_heads)


def test_by_hand_a_projection_that_does_not_write_d_model_is_refused():
    model = tiny_model("llama")  # v_proj writes 2 kv heads x 8 = 16 features, the residual has 48
    with pytest.raises(ValueError, match=r"writes 16 features but the residual stream has 48.*o_proj, not v_proj"):
        hp_mini.attention_heads(model, layers="model.layers", out_proj="self_attn.v_proj")


def test_by_hand_conv1d_layout_is_read_from_the_class_or_given_explicitly():
    model = tiny_model("gpt2")
    auto = hp_mini.attention_heads(model)
    by_hand = hp_mini.attention_heads(model, layers="transformer.h", out_proj="attn.c_proj")
    explicit = hp_mini.attention_heads(model, layers="transformer.h", out_proj="attn.c_proj", layout="in_out")
    for sites in (by_hand, explicit):
        assert sites[0].layout == "in_out"
        torch.testing.assert_close(sites[0].W_O, auto[0].W_O)
    with pytest.raises(ValueError, match="layout='out_in' does not fit a Conv1D; pass layout='in_out'"):
        hp_mini.attention_heads(model, layers="transformer.h", out_proj="attn.c_proj", layout="out_in")
    with pytest.raises(ValueError, match="layout must be 'out_in'"):
        hp_mini.attention_heads(model, layers="transformer.h", out_proj="attn.c_proj", layout="rows")


def test_by_hand_paths_that_do_not_exist_are_named():
    model = tiny_model("llama")
    with pytest.raises(AttributeError, match="out_proj='self_attn.out'"):
        hp_mini.attention_heads(model, layers="model.layers", out_proj="self_attn.out")
    with pytest.raises(ValueError, match="pass both"):
        hp_mini.attention_heads(model, layers="model.layers")

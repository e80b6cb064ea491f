"""attention_heads: the declared heads of every family, the architecture layer, and heads given by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hp_mini
import hp_mini.read.copying
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


# --------------------------------------------------------------------------- #
# copy_scores
# --------------------------------------------------------------------------- #


def _copy_oracle(model, tokenizer, texts, U):
    """Prompt by prompt, by hand: each head's write from W_O's columns, the logits of the
    whole vocabulary, standardised, read at the attended tokens with the attention weights."""
    from helpers import CharTokenizer  # noqa: F401  (the same tokenizer as the library call)

    layers = model.model.layers
    n_heads = model.config.num_attention_heads
    total = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    count = 0
    for text in texts:
        ids = torch.tensor([tokenizer._ids(text)])
        seen = {}
        hooks = [
            layer.self_attn.o_proj.register_forward_pre_hook(
                lambda m, args, i=i: seen.__setitem__(i, args[0][0].detach().double())
            )
            for i, layer in enumerate(layers)
        ]
        try:
            with torch.no_grad():
                attentions = model(input_ids=ids, output_attentions=True).attentions
        finally:
            for h in hooks:
                h.remove()
        T = ids.shape[1]
        for i, layer in enumerate(layers):
            W = layer.self_attn.o_proj.weight.detach().double()
            d_head = W.shape[1] // n_heads
            for h in range(n_heads):
                cols = slice(h * d_head, (h + 1) * d_head)
                for t in range(1, T):
                    x = W[:, cols] @ seen[i][t, cols]
                    logits = U.double() @ x
                    standard = (logits - logits.mean()) / logits.std(unbiased=False)
                    a = attentions[i][0, h, t].double()
                    total[i, h] += sum(a[s] * standard[ids[0, s]] for s in range(t + 1))
        count += T - 1
    return total / count


def test_copy_scores_match_a_by_hand_computation():
    from helpers import CharTokenizer

    model = tiny_model("llama")
    tokenizer = CharTokenizer()
    U = torch.randn(model.config.vocab_size, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    texts = ["abcab", "hello there", "xyz"]
    got = hp_mini.read.copying.copy_scores(model, tokenizer, texts, U, batch_size=2)
    expected = _copy_oracle(model, tokenizer, texts, U)
    torch.testing.assert_close(got.scores, expected, rtol=1e-6, atol=1e-8)
    assert got.n_tokens == sum(len(t) - 1 for t in texts)
    # The baseline reads random tokens: reproducible by seed, and not the copy score.
    again = hp_mini.read.copying.copy_scores(model, tokenizer, texts, U, batch_size=3)
    torch.testing.assert_close(again.baseline, got.baseline)
    assert not torch.allclose(got.baseline, got.scores)
    best = got.top(2)
    flat = expected.flatten().argsort(descending=True)[:2]
    assert best == [divmod(int(i), expected.shape[1]) for i in flat]


def test_copy_scores_find_a_planted_copying_head():
    """A head whose value and output maps send each token's embedding back to its own row
    copies by construction: with U the embedding, its score is far above the others'."""
    from helpers import CharTokenizer

    model = tiny_model("llama")
    attn = model.model.layers[0].self_attn
    d_model, d_head = model.config.hidden_size, attn.head_dim
    with torch.no_grad():
        # Head 0 of layer 0: v = first d_head coordinates of the normed input, o = put them back.
        attn.v_proj.weight[:d_head] = torch.eye(d_model)[:d_head]
        attn.o_proj.weight[:, :d_head] = torch.eye(d_model)[:, :d_head]
        model.model.layers[0].input_layernorm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, d_head:] = 0.0  # tokens live in head 0's subspace
    U = model.model.embed_tokens.weight.detach().clone()
    scores = hp_mini.read.copying.copy_scores(model, CharTokenizer(), ["abcdefg", "mnopqrs"], U)
    assert scores.top(1) == [(0, 0)]
    assert scores.scores[0, 0] > 0.5 > scores.baseline[0, 0].abs()


def test_copy_scores_restore_the_attention_and_check_inputs():
    from helpers import CharTokenizer

    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")
    U = torch.randn(model.config.vocab_size, model.config.hidden_size)
    hp_mini.read.copying.copy_scores(model, CharTokenizer(), ["abc"], U)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="wide"):
        hp_mini.read.copying.copy_scores(model, CharTokenizer(), ["abc"], U[:, :3])
    with pytest.raises(TypeError, match="2-D tensor"):
        hp_mini.read.copying.copy_scores(model, CharTokenizer(), ["abc"], U.numpy())
    with pytest.raises(ValueError, match="at least 2"):
        hp_mini.read.copying.copy_scores(model, CharTokenizer(), ["abc", "a"], U)
    with pytest.raises(ValueError, match="no row"):
        hp_mini.read.copying.copy_scores(model, CharTokenizer(), ["xyz"], U[:20])
    with pytest.raises(ValueError, match="at least one prompt"):
        hp_mini.read.copying.copy_scores(model, CharTokenizer(), [], U)


def test_parse_head_label_inverts_head_label():
    from hp_mini import head_label, parse_head_label

    for layer, head in [(0, 0), (23, 4), (117, 63)]:
        assert parse_head_label(head_label(layer, head)) == (layer, head)
    assert parse_head_label(" L3H5 ") == (3, 5)
    for bad in ["3,5", "L3", "H5", "l3h5", "L-1H2", None, ("L3H5",)]:
        with pytest.raises(ValueError, match="not a head label"):
            parse_head_label(bad)

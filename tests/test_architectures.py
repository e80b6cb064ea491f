"""The architecture layer, for every declared family.

Every registered architecture is restated by hand in ``helpers.KNOWN`` (one row per
tiny model); for every row, hp_mini's declaration must agree with the restated facts,
the heads must add up to what the attention really adds to the residual stream,
``scale_heads`` must be the hand edit, and the final norm must be described exactly.
Then: norm conventions read from behaviour, registration, and the real Gemma-3-270M.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import hp_mini
from hp_mini.model.architectures import Norm, heads_function, registered_architectures
from helpers import (
    KNOWN,
    CharTokenizer,
    at,
    check_final_norm_folding,
    check_heads_sum_to_the_residual_write,
    check_pooled_heads_sum_to_the_pooled_write,
    check_scale_heads_is_the_hand_edit,
    inputs_for,
    multiplier,
    tiny_model,
    without_facts,
)

# --------------------------------------------------------------------------- #
# Every registered architecture has its facts restated
# --------------------------------------------------------------------------- #


# Read when the tests are collected, before any test registers an architecture of its own.
@pytest.mark.parametrize("name, kind", list(registered_architectures().items()))
def test_every_registered_architecture_has_restated_facts(name, kind):
    assert not without_facts({name: kind}), (
        f"{name!r} is declared in hp_mini ({kind}) but no row of helpers.KNOWN restates it: "
        "add its tiny model and facts there"
    )


def test_an_architecture_registered_without_facts_is_named():
    registered = {"llama": "text", "made_up": "text", "llava": "text", "open_clip.model.CLIP": "heads"}
    assert without_facts(registered) == ["made_up", "llava"]  # llava is restated as a wrapper, not a text family


# --------------------------------------------------------------------------- #
# Every row: the declaration, the exact split into heads, editing, the final norm
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module", params=list(KNOWN))
def arch_model(request):
    return request.param, tiny_model(request.param)


def test_declaration_matches_the_restated_facts(arch_model):
    arch, model = arch_model
    known = KNOWN[arch]
    layers = at(model, known.layers)
    sites = hp_mini.attention_heads(model)
    assert len(layers) == known.n_layers
    assert [s.module for s in sites] == [at(layer, known.out_proj) for layer in layers]
    assert [(s.n_heads, s.d_head) for s in sites] == [known.heads] * known.n_layers
    for site, layer in zip(sites, layers):
        post_norm = None if site.post_norm is None else (site.post_norm.module, site.post_norm.convention)
        stated = None if known.post_norm_gain is None else (at(layer, known.adds), known.post_norm_gain)
        assert post_norm == stated
        assert torch.equal(torch.as_tensor(site.multiplier), torch.as_tensor(multiplier(model, arch, site.layer)))
    if known.images:
        assert f"{type(model).__module__}.{type(model).__qualname__}" == known.family
        listing = heads_function(model)
        assert listing is not None, f"no function listing the heads of {known.family} is declared"
        assert [s.module for s in listing(model)] == [s.module for s in sites]
        final = Norm.of(at(model, known.final_norm))
    else:
        parts = hp_mini.model_parts(model)
        assert (model.config.model_type, parts.family) == (known.wrapper or known.family, known.family)
        assert [parts.mlp_write(i) for i in range(len(layers))] == [at(layer, known.mlp_adds) for layer in layers]
        assert parts.parallel == known.parallel
        final = parts.final_norm
        assert final.module is at(model, known.final_norm)
        assert (parts.unembedding.scale, parts.unembedding.softcap) == (known.logit_scale, known.softcap)
        assert (parts.image_token_id, parts.needs_token_type_ids) == (known.image_token, known.token_type_ids)
    assert (final.kind, final.convention) == (known.final_norm_kind, known.final_norm_gain)


def test_heads_sum_to_the_residual_write_at_every_position(arch_model):
    check_heads_sum_to_the_residual_write(arch_model[1], arch_model[0])


def test_pooled_heads_sum_to_the_pooled_residual_write(arch_model):
    check_pooled_heads_sum_to_the_pooled_write(arch_model[1], arch_model[0])


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 5.0])
def test_scale_heads_equals_a_hand_edit_of_the_residual(arch_model, alpha):
    check_scale_heads_is_the_hand_edit(arch_model[1], arch_model[0], alpha)


def test_final_norm_folding_equals_the_model_norm(arch_model):
    check_final_norm_folding(arch_model[1], arch_model[0])


@pytest.mark.parametrize("arch", [arch for arch, known in KNOWN.items() if known.images])
def test_split_open_clip_heads_equal_pytorch_attention(arch):
    from hp_mini.model.open_clip import head_split_error

    errors = head_split_error(tiny_model(arch), inputs_for(arch))
    assert len(errors) == KNOWN[arch].n_layers and max(errors) < 1e-5


# --------------------------------------------------------------------------- #
# Norms described by behaviour, writes of the MLPs, registration
# --------------------------------------------------------------------------- #


def _norm_class(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name)


@pytest.mark.parametrize("module, name, convention", [
    ("llama", "LlamaRMSNorm", "w"),
    ("olmo2", "Olmo2RMSNorm", "w"),
    ("gemma", "GemmaRMSNorm", "1+w"),
    ("gemma3", "Gemma3RMSNorm", "1+w"),
    ("gemma3n", "Gemma3nRMSNorm", "w"),  # a Gemma whose gain is w
    ("gemma4", "Gemma4RMSNorm", "w"),
    ("vaultgemma", "VaultGemmaRMSNorm", "1+w"),
])
def test_the_gain_convention_comes_from_the_norm_behaviour(module, name, convention):
    norm = _norm_class(module, name)(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(24))
    described = Norm.of(norm)
    assert (described.kind, described.convention, described.eps) == ("rms", convention, 1e-5)
    x = torch.randn(4, 24)
    with torch.no_grad():
        torch.testing.assert_close(described(x), norm(x), rtol=1e-5, atol=1e-6)


def test_a_norm_without_gain_and_a_layernorm_are_described():
    bare = _norm_class("gemma3n", "Gemma3nRMSNorm")(8, with_scale=False)
    assert Norm.of(bare).convention == "none"
    layer = nn.LayerNorm(8)
    assert (Norm.of(layer).kind, Norm.of(layer).convention) == ("layer", "w")


def test_a_norm_that_is_neither_is_refused_with_its_class():
    class Odd(nn.Module):
        eps = 1e-6

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return 3 * x * self.weight

    with pytest.raises(NotImplementedError, match="Odd scales by neither w nor 1 \\+ w"):
        Norm.of(Odd())


def test_the_model_type_name_does_not_decide_the_convention():
    model = tiny_model("llama")  # a w-convention norm under a gemma-like name
    model.config.model_type = "gemma_lookalike"
    hp_mini.register_architecture("gemma_lookalike", layers="model.layers", out_proj="self_attn.o_proj")
    assert hp_mini.model_parts(model).final_norm.convention == "w"
    folded = hp_mini.unembedding_dictionary(model, CharTokenizer(), normalize=False, final_norm=True)
    torch.testing.assert_close(folded.atoms, model.lm_head.weight.detach() * model.model.norm.weight.detach())


def test_mlp_writes_add_up_with_the_attention_writes_to_the_residual_stream():
    """Embedding + every attention write + every MLP write == the final residual (Gemma 2, post-norm)."""
    model = tiny_model("gemma2")
    parts = hp_mini.model_parts(model)
    sites = hp_mini.attention_heads(model)
    ids = torch.randint(1, 90, (2, 5))
    traces = [hp_mini.Trace(s.module, retain_input=True) for s in sites]
    traces += [hp_mini.Trace(parts.mlp_write(i), retain_output=True) for i in range(len(sites))]
    final = hp_mini.Trace(parts.final_norm.module, retain_input=True)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for trace in [final, *traces]:
            stack.enter_context(trace)
        out = model(input_ids=ids, output_hidden_states=True)
    total = out.hidden_states[0] + sum(
        sites[i].contributions(traces[i].input).sum(-2) + sites[i].bias_share(traces[i].input)
        + parts.residual_multiplier * traces[len(sites) + i].output
        for i in range(len(sites))
    )
    torch.testing.assert_close(total, final.input, rtol=1e-5, atol=1e-5)
    logits = parts.unembedding.logits(parts.final_norm(final.input))
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


def test_register_architecture_refuses_incomplete_declarations():
    with pytest.raises(ValueError, match="needs layers= and out_proj="):
        hp_mini.register_architecture("half", layers="model.layers")
    with pytest.raises(ValueError, match="layout must be"):
        hp_mini.register_architecture("odd", layers="model.layers", out_proj="o", layout="columns")


# --------------------------------------------------------------------------- #
# The real Gemma-3-270M (embedded model, converted once by `make`)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def gemma3_270m():
    model, _ = hp_mini.load_model("gemma3-270m")
    return model


@pytest.mark.slow
def test_real_gemma3_heads_sum_to_the_residual_write(gemma3_270m):
    check_heads_sum_to_the_residual_write(gemma3_270m, "gemma3_text")
    check_pooled_heads_sum_to_the_pooled_write(gemma3_270m, "gemma3_text")


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 5.0])
def test_real_gemma3_scale_heads_equals_a_hand_edit_of_the_residual(gemma3_270m, alpha):
    check_scale_heads_is_the_hand_edit(gemma3_270m, "gemma3_text", alpha)


@pytest.mark.slow
def test_real_gemma3_final_norm_folding(gemma3_270m):
    check_final_norm_folding(gemma3_270m, "gemma3_text")

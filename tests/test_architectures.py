"""The architecture layer: norm conventions from behaviour, unembeddings, wrappers, registration."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import hp_mini
from hp_mini.model.architectures import Norm
from helpers import CharTokenizer, tiny_model


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


@pytest.mark.parametrize("arch, scale, softcap", [("granite", 0.25, None), ("gemma2", 1.0, 30.0),
                                                  ("gemma3_text", 1.0, None), ("llama", 1.0, None)])
def test_the_unembedding_carries_logit_scaling_and_soft_caps(arch, scale, softcap):
    un = hp_mini.model_parts(tiny_model(arch)).unembedding
    assert (un.scale, un.softcap) == (scale, softcap)


@pytest.mark.parametrize("arch, image_token, token_types", [
    ("llava", 96, False), ("qwen2_vl", 151655, False), ("gemma3", 262144, True), ("llama", None, False),
])
def test_wrappers_declare_image_tokens_and_token_type_ids(arch, image_token, token_types):
    parts = hp_mini.model_parts(tiny_model(arch))
    assert parts.image_token_id == image_token and parts.needs_token_type_ids == token_types


def test_parallel_blocks_are_read_from_the_config():
    assert hp_mini.model_parts(tiny_model("gpt_neox")).parallel
    assert not hp_mini.model_parts(tiny_model("gpt_neox_sequential")).parallel


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

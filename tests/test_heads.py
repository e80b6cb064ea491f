"""Every supported architecture: the heads are found, and they decompose the layer exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hp_mini
from conftest import TEXT_ARCHITECTURES, tiny_model


def _capture_projections(model, sites, input_ids):
    """Run the model once and return (input, output) of every output projection."""
    captured = []
    handles = [
        s.module.register_forward_hook(lambda m, args, out: captured.append((args[0].detach(), out.detach())))
        for s in sites
    ]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return captured


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
def test_heads_sum_to_the_projection_output_at_every_position(arch):
    model = tiny_model(arch)
    sites = hp_mini.attention_heads(model)
    assert len(sites) == 2
    input_ids = torch.randint(1, 90, (3, 7))
    for site, (z, out) in zip(sites, _capture_projections(model, sites, input_ids)):
        x = site.contributions(z)  # [B, T, H, d_model]
        assert x.shape == (3, 7, site.n_heads, site.d_model)
        total = x.sum(-2) + (site.bias if site.bias is not None else 0)
        rel = (total - out).norm() / out.norm()
        assert rel < 1e-5, f"{arch} layer {site.layer}: relative error {rel:.2e}"


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


def test_grouped_query_attention_counts_query_heads():
    model = tiny_model("llama")  # 6 query heads, 2 key/value heads
    site = hp_mini.attention_heads(model)[0]
    assert (site.n_heads, site.d_head) == (6, 8)


def test_unknown_architecture_names_its_class_and_the_way_out():
    class Strange(nn.Module):
        config = type("Cfg", (), {"model_type": "strange"})()

    with pytest.raises(NotImplementedError, match=r"Strange.*attention_heads\(model, layers="):
        hp_mini.attention_heads(Strange())


def test_heads_can_be_given_by_hand_for_an_unknown_model():
    model = tiny_model("llama")
    by_hand = hp_mini.attention_heads(model, layers="model.layers", out_proj="self_attn.o_proj", n_heads=6)
    auto = hp_mini.attention_heads(model)
    assert [s.module for s in by_hand] == [s.module for s in auto]


def test_bare_decoder_without_lm_head_is_supported():
    model = tiny_model("qwen2")
    sites = hp_mini.attention_heads(model.model)
    assert len(sites) == 2 and sites[0].module is model.model.layers[0].self_attn.o_proj

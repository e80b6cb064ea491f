"""The embedded Gemma-3-270M: its architecture, its answers, and exact per-head writes on a post-norm model.

All tests here load the real model (``pytest -m slow``). Gemma 3 passes the
attention output through ``post_attention_layernorm`` before the residual add,
so these tests compare hp_mini with the tensor the layer really adds.
"""

from __future__ import annotations

import math

import pytest
import torch

import hp_mini
from hp_mini.model import loading as models

pytestmark = pytest.mark.slow

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "Canada and Mexico share a border with the United States",
    "In June, Japan sent three red cranes to Brazil",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def gemma3():
    model, tok = hp_mini.load_model("gemma3-270m")
    return model, tok


def test_gemma3_is_the_base_270m_model_with_its_documented_architecture(gemma3):
    model, tok = gemma3
    c = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and c.model_type == "gemma3_text"
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (18, 4, 1)
    assert (c.head_dim, c.hidden_size, c.vocab_size, c.intermediate_size) == (256, 640, 262_144, 2048)
    full = [i for i, kind in enumerate(c.layer_types) if kind == "full_attention"]
    assert full == [5, 11, 17], "every 6th layer is global, the others slide"
    assert set(c.layer_types) == {"sliding_attention", "full_attention"} and c.sliding_window == 512
    assert c.query_pre_attn_scalar == 256
    assert c.attn_logit_softcapping is None and c.final_logit_softcapping is None
    # tied embeddings, scaled by sqrt(d_model) on the way in
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[2, 818, 5279]])
    with torch.no_grad():
        embedded = model.model.embed_tokens(ids)
    expected = model.model.embed_tokens.weight[ids] * torch.tensor(math.sqrt(640), dtype=torch.float32)
    torch.testing.assert_close(embedded, expected, rtol=1e-6, atol=0)
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    assert tok("Paris").input_ids[0] == tok.bos_token_id == 2


def test_the_cached_gemma3_carries_the_gemma_notice():
    folder = models.prepare_model("gemma3-270m")
    assert (folder / "NOTICE").read_text().strip() == models.GEMMA_TERMS_NOTICE
    assert "ai.google.dev/gemma/terms" in models.GEMMA_TERMS_NOTICE
    assert not list(folder.glob("*.gguf")), "the assembled GGUF is not kept beside its conversion"


@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("The Eiffel Tower is located in the city of", " Paris"),
        ("The capital of France is Paris. The capital of Germany is", " Berlin"),
        ("Water freezes at a temperature of", " 0 degrees Celsius"),
        ("1, 2, 3, 4,", " 5, 6, 7"),
    ],
)
def test_gemma3_continues_factual_prompts_sensibly(gemma3, prompt, answer):
    model, tok = gemma3
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids.input_ids.shape[1]:]).startswith(answer)


# --------------------------------------------------------------------------- #
# Exactness on the post-norm layers (an oracle written with plain torch hooks)
# --------------------------------------------------------------------------- #


def _added_to_residual(model, ids) -> list[torch.Tensor]:
    """What each layer's attention block adds to the residual: post_attention_layernorm's output."""
    outs = []
    handles = [layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
               for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(**ids)
    finally:
        for h in handles:
            h.remove()
    return outs


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_record_heads_sums_to_what_the_post_norm_layer_adds(gemma3, pool):
    model, tok = gemma3
    acts = hp_mini.record_heads(model, tok, PROMPTS, pool=pool, batch_size=2, progress=False)
    summed = acts.contributions().sum(2)  # [n, layers, d_model]
    if acts.bias_shares() is not None:
        summed = summed + acts.bias_shares()
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt")
        added = torch.stack(_added_to_residual(model, ids))[:, 0]  # [layers, T, d_model]
        want = added.mean(1) if pool == "mean" else added[:, -1]
        assert _relative_error(summed[i], want) < 1e-5, f"prompt {i}"


def _head_share(layer, z: torch.Tensor, head: int) -> torch.Tensor:
    """Head ``head``'s exact share of the layer's write, by hand: (1 + w) * (W_O[h] z_h) / rms(o)."""
    o_proj, norm = layer.self_attn.o_proj, layer.post_attention_layernorm
    d_head = z.shape[-1] // layer.self_attn.config.num_attention_heads
    o = o_proj(z).float()
    rms = (o.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    piece = z[..., head * d_head:(head + 1) * d_head] @ o_proj.weight[:, head * d_head:(head + 1) * d_head].T
    return piece.float() / rms * (1.0 + norm.weight.float())


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 5.0])
def test_scale_heads_on_gemma3_equals_a_hand_edit_of_the_residual(gemma3, alpha):
    model, tok = gemma3
    layer_index, head = 6, 2
    layer = model.model.layers[layer_index]
    ids = tok(PROMPTS[0], return_tensors="pt")

    seen = {}
    pre = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: seen.update(z=args[0].detach()))
    post = layer.post_attention_layernorm.register_forward_hook(
        lambda m, args, out: out + (alpha - 1.0) * _head_share(layer, seen["z"], head)
    )
    try:
        with torch.no_grad():
            by_hand = model(**ids).logits
    finally:
        pre.remove()
        post.remove()
    with torch.no_grad():
        base = model(**ids).logits
        with hp_mini.scale_heads(model, {(layer_index, head): alpha}):
            edited = model(**ids).logits
    assert _relative_error(edited - base, by_hand - base) < 1e-4
    assert _relative_error(edited, by_hand) < 1e-5
    if alpha != 1.0:  # the literal scaling of z before the norm is another edit on this model
        with torch.no_grad(), hp_mini.scale_heads(model, {(layer_index, head): alpha}, mode="pre_norm"):
            literal = model(**ids).logits
        assert _relative_error(literal - base, by_hand - base) > 0.05

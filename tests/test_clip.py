"""shapes-clip and open_clip heads: exact per-head split, the joint-space map, editing, training determinism."""

from __future__ import annotations

import copy

import pytest
import torch

import hp_mini
from helpers import edit_head_by_hand

open_clip = pytest.importorskip("open_clip")

from hp_mini.record.images import record_image_heads
from hp_mini.model.open_clip import HeadwiseAttention, head_split_error, open_clip_heads, split_heads
from hp_mini.vision.scene_prompts import concept_prompts, describe  # noqa: E402
from hp_mini.vision.shapes_clip import ShapesCLIPConfig, WordTokenizer, build_shapes_clip, train_shapes_clip  # noqa: E402
from hp_mini.vision.zero_shot import text_dictionary, zero_shot_accuracies, zero_shot_predict  # noqa: E402

RTOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _shapes_clip_unsplit(seed: int = 0):
    model, processor = build_shapes_clip(ShapesCLIPConfig(seed=seed), split=False)
    with torch.no_grad():  # LayerNorms start at (1, 0); make them matter
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), processor


def _attention_outputs(model, images):
    """Each visual block's attention output, from the unmodified nn.MultiheadAttention modules."""
    outs, handles = [], []
    for block in model.visual.transformer.resblocks:
        assert isinstance(block.attn, torch.nn.MultiheadAttention)
        handles.append(block.attn.register_forward_hook(lambda m, a, o: outs.append(o[0].detach())))
    try:
        with torch.no_grad():
            emb = model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    return outs, emb


def _head_sums(model, images):
    """Per block: sum over heads of x_h plus the bias, from the z that the out_proj pre-hook sees."""
    sites = hp_mini.attention_heads(model)
    zs, handles = {}, []
    for site in sites:
        handles.append(site.module.register_forward_pre_hook(lambda m, a, i=site.layer: zs.__setitem__(i, a[0].detach())))
    try:
        with torch.no_grad():
            emb = model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        sums = [site.contributions(zs[site.layer]).sum(-2) + site.bias for site in sites]
    return sums, emb, sites


def _check_exact_split(original, images):
    expected, emb_before = _attention_outputs(original, images)
    model = split_heads(copy.deepcopy(original))
    got, emb_after, sites = _head_sums(model, images)
    assert len(got) == len(expected) == len(original.visual.transformer.resblocks)
    for layer, (g, e) in enumerate(zip(got, expected)):
        assert _rel(g, e) < RTOL, f"layer {layer}: sum of heads + bias is off by {_rel(g, e):.2e}"
    assert _rel(emb_after, emb_before) < RTOL, "splitting the heads changed the image embedding"
    assert max(head_split_error(model, images)) < RTOL
    return model, sites


def test_vit_b32_random_weights_split_is_exact():
    torch.manual_seed(0)
    original = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    model, sites = _check_exact_split(original, images)
    assert (len(sites), sites[0].n_heads, sites[0].d_head, sites[0].d_model) == (12, 12, 64, 768)
    # the parameters are shared with the wrapped modules, so the state dict is unchanged
    assert list(model.state_dict()) == list(original.state_dict())


def test_shapes_clip_architecture_split_is_exact():
    original, _ = _shapes_clip_unsplit()
    images = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    model, sites = _check_exact_split(original, images)
    cfg = ShapesCLIPConfig()
    assert sites[0].n_heads == cfg.vision_width // cfg.head_width
    # the text tower can be split too (it uses a causal attention mask)
    split_heads(model, towers=("text",))
    tokens = WordTokenizer(["red", "shapes", "three"], 12)(["red shapes", "three red shapes"])
    assert max(head_split_error(model, tokens, tower="text")) < RTOL


def test_headwise_attention_matches_mha_with_masks():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        wrapped = HeadwiseAttention.from_mha(mha)
        x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
        causal = torch.full((5, 5), float("-inf")).triu(1)
        padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
        for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": causal.isinf()}, {"key_padding_mask": padding}):
            expected = mha(x, x, x, need_weights=False, **kwargs)[0]
            got = wrapped(x, x, x, need_weights=False, **kwargs)[0]
            assert torch.allclose(got, expected, atol=1e-6), (batch_first, list(kwargs))
    with pytest.raises(NotImplementedError, match="need_weights"):
        wrapped(x, x, x, need_weights=True)


def test_open_clip_heads_refuses_unsplit_model():
    model, _ = _shapes_clip_unsplit()
    with pytest.raises(RuntimeError, match="split_heads"):
        open_clip_heads(model)


# --------------------------------------------------------------------------- #
# Editing semantics
# --------------------------------------------------------------------------- #

IMAGES = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))


def _split_model():
    model, processor = _shapes_clip_unsplit()
    return split_heads(model), processor


def _embed(model):
    with torch.no_grad():
        return model.encode_image(IMAGES)


def _edit_by_hand(model, layer, head, fn):
    with edit_head_by_hand(hp_mini.attention_heads(model)[layer], head, fn):
        return _embed(model)


def test_alpha_one_is_bit_identical():
    model, _ = _split_model()
    before = _embed(model)
    with hp_mini.scale_heads(model, {(0, 1): 1.0, (3, 7): 1.0}):
        assert torch.equal(_embed(model), before)


@pytest.mark.parametrize("alpha, by_hand", [(0.0, torch.zeros_like), (-1.0, torch.neg)])
def test_alpha_zero_and_minus_one_match_hand_edits(alpha, by_hand):
    model, _ = _split_model()
    expected = _edit_by_hand(model, 2, 5, by_hand)
    with hp_mini.scale_heads(model, {(2, 5): alpha}):
        got = _embed(model)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, _embed(model), atol=1e-4), "the edit changed nothing"


# --------------------------------------------------------------------------- #
# Recording and the joint space
# --------------------------------------------------------------------------- #


def test_joint_space_contributions_are_exact_shares_of_the_embedding():
    """Every write to the CLS residual, mapped through ln_post and proj, sums to the image embedding."""
    model, processor = _split_model()
    visual = model.visual
    writes, handles = {}, []
    handles.append(visual.ln_pre.register_forward_hook(lambda m, a, o: writes.__setitem__("embed", o[:, 0])))
    for i, block in enumerate(visual.transformer.resblocks):
        handles.append(block.attn.register_forward_hook(lambda m, a, o, i=i: writes.__setitem__(("attn", i), o[0][:, 0])))
        handles.append(block.mlp.register_forward_hook(lambda m, a, o, i=i: writes.__setitem__(("mlp", i), o[:, 0])))
    emb = _embed(model)
    for h in handles:
        h.remove()
    acts = record_image_heads(model, processor, IMAGES, pool="cls", space="joint")
    sites = hp_mini.attention_heads(model)
    residual = sum(writes.values())
    sigma = torch.sqrt(residual.var(-1, unbiased=False) + visual.ln_post.eps)
    g, beta, proj = visual.ln_post.weight, visual.ln_post.bias, visual.proj

    def to_joint(x):  # the linear part of ln_post, then proj
        return ((x - x.mean(-1, keepdim=True)) * g / sigma[:, None]) @ proj

    with torch.no_grad():
        heads = acts.contributions()  # [n, L, H, embed_dim]
        for layer, site in enumerate(sites):
            expected = to_joint(writes[("attn", layer)] - site.bias)
            assert _rel(heads[:, layer].sum(1), expected) < 1e-4, f"layer {layer}"
        rest = to_joint(writes["embed"] + sum(writes[("mlp", i)] + sites[i].bias for i in range(len(sites))))
        total = heads.sum((1, 2)) + rest + beta @ proj
    assert _rel(total, emb) < 1e-4


def test_record_image_heads_pools_and_validates():
    model, processor = _split_model()
    sites = hp_mini.attention_heads(model)
    zs = {}
    handle = sites[1].module.register_forward_pre_hook(lambda m, a: zs.__setitem__("z", a[0].detach()))
    _embed(model)
    handle.remove()
    z = sites[1].split(zs["z"])  # [n, T, H, dh]
    for pool, expected in [("cls", z[:, 0]), ("patches", z[:, 1:].mean(1)), ("all", z.mean(1))]:
        acts = record_image_heads(model, processor, IMAGES, pool=pool, layers=[1])
        assert torch.allclose(acts.z[:, 0], expected, atol=1e-6), pool
    moments = record_image_heads(model, processor, IMAGES, store="moments", batch_size=1)
    assert moments.moments.count == 2
    with pytest.raises(ValueError, match="pool='cls'"):
        record_image_heads(model, processor, IMAGES, pool="patches", space="joint")
    with pytest.raises(ValueError, match="pool must be"):
        record_image_heads(model, processor, IMAGES, pool="mean")
    with pytest.raises(IndexError, match="out of range"):
        record_image_heads(model, processor, IMAGES, layers=[9])
    with pytest.raises(ValueError, match=r"store must be 'samples' or 'moments', got 'all'"):
        record_image_heads(model, processor, IMAGES, store="all")
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        record_image_heads(model, processor, IMAGES, batch_size=0)
    with pytest.raises(ValueError, match="got 3 prompts for 2 images"):
        record_image_heads(model, processor, IMAGES, prompts=["a", "b", "c"])


def test_record_image_heads_old_keyword_texts_warns_and_names_prompts():
    model, processor = _split_model()
    with pytest.warns(DeprecationWarning, match="'texts' is now called 'prompts'; write prompts="):
        acts = record_image_heads(model, processor, IMAGES, texts=["a red square", "a blue circle"])
    assert acts.prompts == ["a red square", "a blue circle"]


def test_image_batches_give_the_rows_of_images_recorded_one_at_a_time():
    # The core takes the images batch_size at a time; batching must not change any row.
    model, processor = _split_model()
    for space in ("residual", "joint"):
        together = record_image_heads(model, processor, IMAGES, space=space, batch_size=2)
        alone = record_image_heads(model, processor, IMAGES, space=space, batch_size=1)
        torch.testing.assert_close(together.z, alone.z, rtol=1e-5, atol=1e-6)
        assert torch.equal(together.W_O, alone.W_O)


# --------------------------------------------------------------------------- #
# Text side and training
# --------------------------------------------------------------------------- #


def test_word_tokenizer_end_token_is_pooled():
    tok = WordTokenizer(["red", "shapes"], context_length=6)
    ids = tok(["red shapes", "shapes"])
    assert ids[0].tolist()[:4] == [1, 3, 4, tok.vocab_size - 1]
    assert int(ids[1].argmax()) == 2, "open_clip pools the argmax token: it must be the end token"
    assert tok.decode(ids[0]) == "red shapes"
    with pytest.raises(ValueError, match="context"):
        tok("red red red red red")


def test_descriptions_and_prompts():
    assert describe(colour="red") == "red shapes"
    assert describe(shape="circle") == "circles"
    assert describe(count=1, shape="circle") == "one circle"
    assert describe(count=3, size="small", colour="red", shape="circle", position="left") == (
        "three small red circles on the left"
    )
    values, prompts = concept_prompts("shape")
    assert values == ["circle", "square", "triangle", "diamond"] and prompts[0] == "circles"
    with pytest.raises(ValueError, match="unknown attribute"):
        concept_prompts("texture")


def test_text_dictionary_is_normalised_and_labelled():
    model, processor = _split_model()
    d = text_dictionary(model, processor, ["red shapes", "circles"])
    assert d.labels == ["red shapes", "circles"]
    assert d.atoms.shape == (2, ShapesCLIPConfig().embed_dim)
    assert torch.allclose(d.atoms.norm(dim=1), torch.ones(2), atol=1e-6)


def test_zero_shot_is_the_closest_prompt_by_cosine():
    model, processor = _split_model()
    values, prompts = concept_prompts("colour")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(processor.tokenizer(prompts)), dim=-1)
        image = torch.nn.functional.normalize(model.encode_image(IMAGES), dim=-1)
    expected = (image @ text.T).argmax(-1)
    assert torch.equal(zero_shot_predict(model, processor, IMAGES, prompts, batch_size=1), expected)
    right = [values[int(i)] for i in expected]
    wrong = [values[(int(expected[0]) + 1) % len(values)], right[1]]
    assert zero_shot_accuracies(model, processor, IMAGES, {"colour": right}) == {"colour": 1.0}
    assert zero_shot_accuracies(model, processor, IMAGES, {"colour": wrong}) == {"colour": 0.5}
    with pytest.raises(ValueError, match="1 colour labels for 2 images"):
        zero_shot_accuracies(model, processor, IMAGES, {"colour": right[:1]})


def test_training_is_deterministic():
    cfg = ShapesCLIPConfig(n_train=64, steps=3, batch_size=16, warmup=1)
    a, _, _ = train_shapes_clip(cfg, progress=False)
    b, _, _ = train_shapes_clip(cfg, progress=False)
    untrained, _ = build_shapes_clip(cfg)
    sa, sb, su = a.state_dict(), b.state_dict(), untrained.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.proj"], su["visual.proj"]), "training changed nothing"


def test_load_model_shapes_clip_calls_load_shapes_clip(monkeypatch):
    """The name resolves, on first use, to the one public loader of the model's module."""
    import hp_mini.vision.shapes_clip as shapes_clip

    assert "shapes-clip" in hp_mini.model.loading.model_names()
    calls = []

    def fake(*, dtype, device):
        calls.append((dtype, device))
        return torch.nn.Linear(1, 1).train(), "processor"

    monkeypatch.setattr(shapes_clip, "load_shapes_clip", fake)
    model, processor = hp_mini.load_model("shapes-clip", dtype=torch.float64, device="cpu")
    assert calls == [(torch.float64, "cpu")] and processor == "processor" and not model.training

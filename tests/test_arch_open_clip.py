"""open_clip's ViT: heads sum to the residual write, scale_heads is the hand edit, ln_post is described exactly."""

from __future__ import annotations

import pytest
import torch

import hp_mini
from helpers import rel

open_clip = pytest.importorskip("open_clip")
from hp_mini.model.open_clip import split_heads

IMAGES = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=2, width=32, head_width=8, patch_size=8, image_size=16),
        text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1),
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return split_heads(model)


def _capture(model):
    """Per block: z at the output projection, and the residual after the attention add minus before the block."""
    blocks = model.visual.transformer.resblocks
    seen, handles = {}, []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.__setitem__(("in", i), (args[0] if args else kwargs["q_x"]).clone()),
            with_kwargs=True))
        handles.append(block.ln_2.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("mid", i), args[0].clone())))
        handles.append(block.attn.out_proj.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("z", i), args[0].clone())))
    try:
        with torch.no_grad():
            out = model.encode_image(IMAGES)
    finally:
        for h in handles:
            h.remove()
    return [seen[("z", i)] for i in range(len(blocks))], [seen[("mid", i)] - seen[("in", i)] for i in range(len(blocks))], out


def test_the_open_clip_vit_is_declared_in_the_architecture_layer(clip):
    sites = hp_mini.attention_heads(clip)
    assert [s.module for s in sites] == [b.attn.out_proj for b in clip.visual.transformer.resblocks]
    assert (sites[0].n_heads, sites[0].d_head) == (4, 8)


def test_heads_sum_to_the_residual_write_at_every_position(clip):
    sites = hp_mini.attention_heads(clip)
    zs, writes, _ = _capture(clip)
    for site, z, write in zip(sites, zs, writes):
        total = site.contributions(z).sum(-2) + site.bias_share(z)
        assert rel(total, write) < 1e-5
        pooled = site.contributions(z).mean(-3).sum(-2) + site.bias_share(z).mean(-2)  # mean over positions
        assert rel(pooled, write.mean(-2)) < 1e-5


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 5.0])
def test_scale_heads_equals_a_hand_edit_of_the_residual(clip, alpha):
    block = clip.visual.transformer.resblocks[1]
    proj = block.attn.out_proj
    head, d_head = 2, 8
    sl = slice(head * d_head, (head + 1) * d_head)
    seen = {}

    def keep(m, args):
        seen["z"] = args[0]

    def edit(m, args, out):  # the attention's output is added to the residual as it is (no LayerScale here)
        change = (alpha - 1) * (seen["z"][..., sl] @ proj.weight[:, sl].T)
        return (out[0] + change, *out[1:]) if isinstance(out, tuple) else out + change

    handles = [proj.register_forward_pre_hook(keep), block.attn.register_forward_hook(edit)]
    try:
        with torch.no_grad():
            expected = clip.encode_image(IMAGES)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad(), hp_mini.scale_heads(clip, {(1, head): alpha}):
        got = clip.encode_image(IMAGES)
    with torch.no_grad():
        plain = clip.encode_image(IMAGES)
    assert rel(expected, plain) > 1e-4
    assert rel(got, expected) < 1e-5


def test_final_norm_description_equals_the_model_norm(clip):
    from hp_mini.model.architectures import Norm

    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    norm = Norm.of(clip.visual.ln_post)
    assert (norm.kind, norm.convention) == ("layer", "w")
    with torch.no_grad():
        assert rel(norm(x), clip.visual.ln_post(x)) < 1e-6


def test_heads_sum_to_the_residual_write_through_layer_scale():
    from hp_mini.model.open_clip import head_split_error

    torch.manual_seed(1)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=2, width=32, head_width=8, patch_size=8, image_size=16, ls_init_value=0.5),
        text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1),
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name or name.endswith("gamma"):
                p.add_(0.3 * torch.randn_like(p))
    split_heads(model)
    assert not torch.allclose(model.visual.transformer.resblocks[0].ls_1.gamma, torch.tensor(0.5))
    sites = hp_mini.attention_heads(model)
    zs, writes, _ = _capture(model)
    for site, z, write in zip(sites, zs, writes):
        total = site.contributions(z).sum(-2) + site.bias_share(z)
        assert rel(total, write) < 1e-5
    assert max(head_split_error(model, IMAGES)) < 1e-5

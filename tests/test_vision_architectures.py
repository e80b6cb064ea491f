"""Recording and editing on tiny random vision-language models, built from configs.

For LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Gemma3 and Idefics3 (SmolVLM):

* exactness: at every position of every layer, the per-head pieces
  ``attention_heads(model)[i].pieces(z)`` plus the bias sum to the
  output projection's own output (both hooked directly);
* recording: ``record_heads(..., pool="image")`` (and the mean of the per-token rows,
  ``pool=None``, at the image positions) equals the mean of the hooked
  ``z`` over the image-token positions;
* editing: ``alpha = 1`` leaves the logits bit-identical, ``alpha = 0`` equals
  zeroing that head's ``z`` by hand, ``alpha = -1`` equals flipping its sign.

Inputs are built without processors: the number of image tokens is read from
the model's own ``get_image_features`` and that many placeholders are put
into ``input_ids``. Nothing is downloaded.
"""

from __future__ import annotations


import pytest
import torch

import hp_mini
from helpers import edit_head_by_hand

VOCAB = 128
IMAGE_TOKEN = 120


def _text(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    base.update(kw)
    return base


def _llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8)
    cfg = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_text()), image_token_index=IMAGE_TOKEN,
                      vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg)
    pixels = torch.randn(2, 3, 16, 16)
    return model, {"pixel_values": pixels}, {"pixel_values": pixels}


def _llava_next():
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8)
    cfg = LlavaNextConfig(vision_config=vision, text_config=MistralConfig(**_text()), image_token_index=IMAGE_TOKEN,
                          vision_feature_layer=-1, image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    model = LlavaNextForConditionalGeneration(cfg)
    # Two 16x32 images -> a base view plus a 1x2 grid of crops each (3 views of 16x16).
    pixels = torch.randn(2, 3, 3, 16, 16)
    sizes = torch.tensor([[16, 32], [16, 32]])
    return model, {"pixel_values": pixels, "image_sizes": sizes}, {"pixel_values": pixels, "image_sizes": sizes}


def _qwen_vl(version: str):
    if version == "2":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model
        vision = dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, mlp_ratio=2)
    else:
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
        vision = dict(depth=1, hidden_size=16, out_hidden_size=32, intermediate_size=32, num_heads=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                      fullatt_block_indexes=[0])
    text = _text(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    cfg = Config(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN, video_token_id=121,
                 vision_start_token_id=122, vision_end_token_id=123)
    model = Model(cfg)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])  # two images of 4x4 patches -> 4 tokens each after merging
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 4 * 4)
    return model, {"pixel_values": pixels, "image_grid_thw": grid}, {"pixel_values": pixels, "image_grid_thw": grid}


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=4)
    text = Gemma3TextConfig(**_text(head_dim=8, sliding_window=8))
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN,
                       boi_token_index=121, eoi_token_index=122)
    model = Gemma3ForConditionalGeneration(cfg)
    pixels = torch.randn(2, 3, 16, 16)
    return model, {"pixel_values": pixels}, {"pixel_values": pixels}


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=4)
    cfg = Idefics3Config(vision_config=vision, text_config=LlamaConfig(**_text()).to_dict(),
                         image_token_id=IMAGE_TOKEN, scale_factor=2)
    model = Idefics3ForConditionalGeneration(cfg)
    pixels = torch.randn(2, 1, 3, 16, 16)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    return model, {"pixel_values": pixels, "pixel_attention_mask": mask}, {"pixel_values": pixels,
                                                                           "pixel_attention_mask": mask}


BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": lambda: _qwen_vl("2"),
    "qwen2_5_vl": lambda: _qwen_vl("2.5"),
    "gemma3": _gemma3,
    "idefics3": _idefics3,
}


def _n_image_tokens(model, feature_inputs) -> list[int]:
    """Image tokens per image, as the model's own image encoder produces them."""
    with torch.no_grad():
        out = model.model.get_image_features(**feature_inputs)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, torch.Tensor):
        feats = list(feats.reshape(2, -1, feats.shape[-1])) if feats.ndim == 2 else list(feats)
    return [f.reshape(-1, f.shape[-1]).shape[0] for f in feats]


def _batch(model, feature_inputs, forward_inputs):
    """Two prompts of different lengths, right-padded, with the image placeholders inside."""
    counts = _n_image_tokens(model, feature_inputs)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, n in enumerate(counts):
        before = torch.randint(1, 100, (2,), generator=g).tolist()
        after = torch.randint(1, 100, (3 + 2 * i,), generator=g).tolist()
        rows.append(before + [IMAGE_TOKEN] * n + after)
    t = max(map(len, rows))
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, **forward_inputs}
    if model.config.model_type == "gemma3":
        batch["token_type_ids"] = (ids == IMAGE_TOKEN).long()
    if model.config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        batch["mm_token_type_ids"] = (ids == IMAGE_TOKEN).long()
    return batch


class _FixedProcessor:
    """Stands in for a processor: returns a prebuilt batch (for ``record_heads``)."""

    class _Tok:
        pad_token = "<pad>"
        eos_token = "<pad>"
        padding_side = "right"

    def __init__(self, batch):
        self.batch = batch
        self.tokenizer = self._Tok()

    def __call__(self, text, images, return_tensors="pt", padding=True):
        assert len(text) == len(images) == self.batch["input_ids"].shape[0]
        return dict(self.batch)


@pytest.fixture(scope="module", params=list(BUILDERS))
def vlm(request):
    torch.manual_seed(0)
    model, feature_inputs, forward_inputs = BUILDERS[request.param]()
    model.eval()
    batch = _batch(model, feature_inputs, forward_inputs)
    return request.param, model, batch


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def test_sites_are_the_language_model_heads(vlm):
    name, model, _ = vlm
    sites = hp_mini.attention_heads(model)
    text = model.config.get_text_config()
    assert len(sites) == text.num_hidden_layers
    assert all(s.n_heads == text.num_attention_heads for s in sites)
    lm_modules = set(model.model.language_model.modules()) if hasattr(model.model, "language_model") else set(
        model.model.text_model.modules()
    )
    assert all(s.module in lm_modules for s in sites), f"{name}: a site is outside the language model"


def test_contributions_sum_to_projection_output(vlm):
    name, model, batch = vlm
    sites = hp_mini.attention_heads(model)
    seen = {}

    def make(i):
        def hook(module, args, output):
            seen[i] = (args[0].detach().clone(), output.detach().clone())

        return hook

    handles = [s.module.register_forward_hook(make(i)) for i, s in enumerate(sites)]
    try:
        _logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(sites)
    for i, site in enumerate(sites):
        z, out = seen[i]
        x = site.pieces(z)  # [B, T, H, d_model]: the heads' pieces of the projection's output
        total = x.sum(-2) + (site.bias if site.bias is not None else 0)
        err = (total - out).norm(dim=-1) / out.norm(dim=-1).clamp_min(1e-12)
        assert err.max() < 1e-5, f"{name} layer {i}: max relative error {err.max():.2e} at some position"


def test_record_heads_pools_image_positions(vlm):
    name, model, batch = vlm
    sites = hp_mini.attention_heads(model)
    seen = {}
    handles = [
        s.module.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
        for i, s in enumerate(sites)
    ]
    try:
        _logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    acts = hp_mini.record_heads(
        model, _FixedProcessor(batch), ["a", "b"], images=[None, None], pool="image", progress=False
    )
    mask = (batch["input_ids"] == IMAGE_TOKEN).float()
    for i, site in enumerate(sites):
        z = seen[i]
        if site.post_norm is not None:  # post-norm layers: each token's z carries the norm's 1 / rms(o)
            o = site.module(z)
            z = z / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + site.post_norm.eps)
        expected = torch.einsum("bt,btd->bd", mask / mask.sum(1, keepdim=True), z)
        got = acts.z[:, i].reshape(2, -1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{name} layer {i}")


def test_per_token_rows_at_the_image_positions_average_to_pool_image(vlm):
    name, model, batch = vlm
    processor = _FixedProcessor(batch)
    tokens = hp_mini.record_heads(model, processor, ["a", "b"], images=[None, None], pool=None, progress=False)
    pooled = hp_mini.record_heads(model, processor, ["a", "b"], images=[None, None], pool="image", progress=False)
    real = batch["attention_mask"].bool()
    assert len(tokens.z) == int(real.sum())
    for b in range(2):
        rows = tokens.positions[:, 0] == b
        image = batch["input_ids"][b][real[b]] == IMAGE_TOKEN  # over the prompt's own tokens, in order
        torch.testing.assert_close(tokens.z[rows][image].mean(0), pooled.z[b], rtol=1e-5, atol=1e-6,
                                   msg=f"{name} prompt {b}")


def test_scale_heads_matches_hand_edits(vlm):
    name, model, batch = vlm
    sites = hp_mini.attention_heads(model)
    layer, head = len(sites) - 1, 1
    base = _logits(model, batch)
    with hp_mini.scale_heads(model, {(layer, head): 1.0, (0, 0): 1.0}):
        assert torch.equal(_logits(model, batch), base), f"{name}: alpha=1 changed the logits"
    for alpha, fn in [(0.0, torch.zeros_like), (-1.0, torch.neg)]:
        # Scaling z by hand is the literal pre-norm edit (the residual edit on pre-norm layers).
        with hp_mini.scale_heads(model, {(layer, head): alpha}, mode="pre_norm"):
            edited = _logits(model, batch)
        with edit_head_by_hand(sites[layer], head, fn):
            manual = _logits(model, batch)
        torch.testing.assert_close(edited, manual, rtol=1e-5, atol=1e-6, msg=f"{name}: alpha={alpha}")
        assert not torch.allclose(edited, base), f"{name}: alpha={alpha} left the logits unchanged"
    assert torch.equal(_logits(model, batch), base), f"{name}: hooks were left behind"

"""record_heads: exact pooling, per-token rows, padding-independence, compact storage, streamed moments, the
recorder core, renamed keywords, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

import hp_mini
from helpers import TEXT_ARCHITECTURES, CharTokenizer, tiny_model
from hp_mini.record.activations import HeadActivations, HeadStore
from hp_mini.record.core import Forward, Rows, record_batches

TEXTS = ["a short one", "a much longer prompt here", "mid size", "x"]


def _per_position_z(model, text, tok):
    """[T, layers, heads, d_head]: the heads' outputs at every position of one prompt, by hand.

    On post-norm layers each token's z is multiplied by the norm's factor 1 / rms(o).
    """
    sites = hp_mini.attention_heads(model)
    seen = []
    handles = [s.module.register_forward_hook(lambda m, a, o: seen.append((a[0][0].detach(), o[0].detach())))
               for s in sites]
    try:
        batch = tok([text])
        with torch.no_grad():
            model(input_ids=batch["input_ids"])
    finally:
        for h in handles:
            h.remove()
    zs = []
    for s, (z, o) in zip(sites, seen):
        if s.post_norm is not None:
            z = z / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + s.post_norm.module.eps)
        zs.append(s.split(z))
    return torch.stack(zs, 1)


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_match_prompts_run_one_at_a_time(arch, side):
    model = tiny_model(arch)
    tok = CharTokenizer(side)
    acts = hp_mini.record_heads(model, tok, TEXTS, batch_size=4, progress=False)
    for i, text in enumerate(TEXTS):
        z = _per_position_z(model, text, tok)
        torch.testing.assert_close(acts.z[i], z.mean(0), rtol=1e-5, atol=1e-6)
    last = hp_mini.record_heads(model, tok, TEXTS, pool="last", batch_size=3, progress=False)
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(last.z[i], _per_position_z(model, text, tok)[-1], rtol=1e-5, atol=1e-6)


def test_contributions_are_W_O_times_z_and_sum_to_the_layer_output():
    model = tiny_model("llama")
    tok = CharTokenizer()
    acts = hp_mini.record_heads(model, tok, TEXTS, progress=False)
    x = acts.contributions()
    assert x.shape == (4, 2, 6, 48)
    assert acts.contributions(layer=1).shape == (4, 6, 48)
    torch.testing.assert_close(acts.head(1, 4), x[:, 1, 4])
    # The mean of the projection's output over the prompt equals sum_h x_h + bias.
    site = hp_mini.attention_heads(model)[1]
    outs = []
    h = site.module.register_forward_hook(lambda m, a, o: outs.append(o[0].mean(0)))
    with torch.no_grad():
        model(input_ids=tok([TEXTS[1]])["input_ids"])
    h.remove()
    torch.testing.assert_close(x[1, 1].sum(0), outs[0], rtol=1e-5, atol=1e-6)


def test_storage_is_compact_d_head_wide():
    acts = hp_mini.record_heads(tiny_model("llama"), CharTokenizer(), TEXTS, progress=False)
    assert acts.z.shape == (4, 2, 6, 8)  # d_head, not d_model
    assert acts.W_O.shape == (2, 6, 48, 8)
    assert acts.heads[:2] == [(0, 0), (0, 1)] and acts.labels[-1] == "L1H5"


def test_custom_masks_select_positions():
    model = tiny_model("qwen2")
    tok = CharTokenizer("left")
    masks = [torch.tensor([c == "e" for c in t]) for t in TEXTS[:3]]
    acts = hp_mini.record_heads(model, tok, TEXTS[:3], pool=masks, progress=False)
    for i, text in enumerate(TEXTS[:3]):
        z = _per_position_z(model, text, tok)
        torch.testing.assert_close(acts.z[i], z[masks[i]].mean(0), rtol=1e-5, atol=1e-6)


def test_bad_masks_and_arguments_are_explained():
    model, tok = tiny_model("llama"), CharTokenizer()
    with pytest.raises(ValueError, match="pool mask 0 has 2 entries but the prompt has 11 tokens"):
        hp_mini.record_heads(model, tok, TEXTS[:1], pool=[torch.tensor([True, False])], progress=False)
    with pytest.raises(ValueError, match=r"selects no token of prompt\(s\) \[0\]"):
        hp_mini.record_heads(model, tok, TEXTS[:1], pool=[torch.zeros(11, dtype=torch.bool)], progress=False)
    with pytest.raises(ValueError, match="pool must be"):
        hp_mini.record_heads(model, tok, TEXTS, pool="max", progress=False)
    with pytest.raises(IndexError, match=r"layers \[5\] are out of range"):
        hp_mini.record_heads(model, tok, TEXTS, layers=[5], progress=False)
    with pytest.raises(ValueError, match="image token"):
        hp_mini.record_heads(model, tok, TEXTS, pool="image", progress=False)


def test_layer_subset_keeps_model_layer_indices():
    model, tok = tiny_model("gpt2"), CharTokenizer()
    full = hp_mini.record_heads(model, tok, TEXTS, progress=False)
    sub = hp_mini.record_heads(model, tok, TEXTS, layers=[1], progress=False)
    assert sub.layers == [1] and sub.heads == [(1, h) for h in range(4)]
    torch.testing.assert_close(sub.head(1, 2), full.head(1, 2))
    with pytest.raises(IndexError, match="layer 0 was not recorded"):
        sub.head(0, 0)


def test_streamed_moments_equal_the_moments_of_the_samples():
    model, tok = tiny_model("llama"), CharTokenizer()
    texts = [f"prompt number {i} " * (1 + i % 3) for i in range(11)]
    samples = hp_mini.record_heads(model, tok, texts, batch_size=4, progress=False)
    streamed = hp_mini.record_heads(model, tok, texts, batch_size=3, store="moments", progress=False)
    assert streamed.z is None and streamed.n_prompts == 11
    for layer, head in [(0, 0), (1, 5)]:
        n, mu, cov = streamed.head_moments(layer, head)
        z = samples.factors(layer, head)[0].double()
        zc = z - z.mean(0)
        assert n == 11
        torch.testing.assert_close(mu, z.mean(0), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(cov, zc.T @ zc, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="store='samples'"):
        streamed.contributions()


def test_select_keeps_rows_and_prompts():
    acts = hp_mini.record_heads(tiny_model("llama"), CharTokenizer(), TEXTS, progress=False)
    sub = acts.select([2, 0])
    assert sub.prompts == [TEXTS[2], TEXTS[0]]
    torch.testing.assert_close(sub.z[1], acts.z[0])


# -- bad input ---------------------------------------------------------------------------------- #


def test_an_empty_prompt_is_named_by_its_index():
    model, tok = tiny_model("llama"), CharTokenizer()
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        hp_mini.record_heads(model, tok, ["a", "b", "", "c"], progress=False)
    with pytest.raises(ValueError, match=r"selects no token of prompt\(s\) \[5\]"):
        masks = [torch.ones(1, dtype=torch.bool)] * 5 + [torch.zeros(1, dtype=torch.bool)]
        hp_mini.record_heads(model, tok, list("abcdef"), pool=masks, batch_size=4, progress=False)


@pytest.mark.parametrize("layers, error, message", [
    ([], ValueError, "layers is empty; pass None for every layer"),
    ([0.5], TypeError, "layers must be integer layer indices"),
    (1, TypeError, "layers must be a list of layer indices"),
])
def test_bad_layer_lists_are_explained(layers, error, message):
    with pytest.raises(error, match=message):
        hp_mini.record_heads(tiny_model("llama"), CharTokenizer(), TEXTS, layers=layers, progress=False)


def test_prompts_longer_than_the_context():
    gpt2 = tiny_model("gpt2")  # learned absolute positions: 64
    with pytest.raises(ValueError, match="prompt 1 has 70 tokens, more than the 64 positions"):
        hp_mini.record_heads(gpt2, CharTokenizer(), ["short", "x" * 70], progress=False)
    llama = tiny_model("llama")
    llama.config.max_position_embeddings = 16  # rotary positions: runs, with a warning
    with pytest.warns(RuntimeWarning, match="prompt 0 has 20 tokens, more than the 16 positions"):
        hp_mini.record_heads(llama, CharTokenizer(), ["y" * 20], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hp_mini.record_heads(llama, CharTokenizer(), ["y" * 16], progress=False)


def test_images_given_to_a_text_model_are_refused():
    with pytest.raises(ValueError, match="images were given but LlamaForCausalLM is a text model"):
        hp_mini.record_heads(tiny_model("llama"), CharTokenizer(), ["a"], images=[object()], progress=False)


def test_a_tokenizer_of_another_model_is_caught_by_its_ids():
    big = CharTokenizer(offset=60)  # ids up to 149 for a 97-token embedding
    with pytest.raises(ValueError, match="prompt 1 has token id .* embeds only 97 tokens: the tokenizer does not belong"):
        hp_mini.record_heads(tiny_model("llama"), big, ["ab", "YY"], progress=False)


@pytest.mark.parametrize("arch", ["gemma2", "olmo2", "granite"])
def test_pooled_contributions_are_the_exact_residual_writes(arch):
    """Post-norm and scaled layers: the stored z and W_O give what the layer adds (with padding)."""
    from helpers import run_capturing

    model, tok = tiny_model(arch), CharTokenizer("left")
    acts = hp_mini.record_heads(model, tok, TEXTS, batch_size=3, progress=False)
    for i, text in enumerate(TEXTS):
        _, writes, _ = run_capturing(model, arch, tok([text])["input_ids"])
        real = torch.stack([w[0].mean(0) for w in writes])  # [layers, d_model]
        total = acts.contributions()[i].sum(1) + acts.bias_shares()[i]
        torch.testing.assert_close(total, real, rtol=1e-5, atol=1e-5)
    moments = hp_mini.record_heads(model, tok, TEXTS, store="moments", progress=False)
    torch.testing.assert_close(moments.moments.mean.float(), acts.z.mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_smollm2_heads_decompose_every_position(smollm2):
    model, tok = smollm2
    sites = hp_mini.attention_heads(model)
    assert len(sites) == 30 and sites[0].n_heads == 9 and sites[0].d_head == 64
    captured = []
    handles = [s.module.register_forward_hook(lambda m, a, o: captured.append((a[0], o))) for s in sites]
    try:
        with torch.no_grad():
            model(**tok(["The capital of France is", "Heads write into the residual stream."][:1], return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    for site, (z, out) in zip(sites, captured):
        total = site.contributions(z).sum(-2) + (site.bias if site.bias is not None else 0)
        assert ((total - out).norm() / out.norm()) < 1e-5


@pytest.mark.slow
def test_smollm2_padding_sides_agree(smollm2):
    model, tok = smollm2
    texts = ["The capital of France is", "One two three", "A much longer sentence about the history of Rome."]
    alone = torch.stack([hp_mini.record_heads(model, tok, [t], progress=False).z[0] for t in texts])
    old = tok.padding_side
    try:
        for side in ("left", "right"):
            tok.padding_side = side
            batched = hp_mini.record_heads(model, tok, texts, batch_size=3, progress=False).z
            torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    finally:
        tok.padding_side = old


@pytest.mark.slow
def test_smollm2_per_token_writes_are_the_attention_outputs_and_average_to_pool_mean(smollm2):
    model, tok = smollm2
    texts = ["The capital of France is", "Heads write into the residual stream."]
    tokens = hp_mini.record_heads(model, tok, texts, pool=None, batch_size=2, progress=False)
    mean = hp_mini.record_heads(model, tok, texts, batch_size=2, progress=False)
    sites = hp_mini.attention_heads(model)
    written = tokens.contributions().sum(2)  # [tokens, layers, d_model]; SmolLM2 is pre-norm, without biases
    for i, text in enumerate(texts):
        outputs = []
        handles = [s.module.register_forward_hook(lambda m, a, o: outputs.append(o[0])) for s in sites]
        try:
            with torch.no_grad():
                model(**tok([text], return_tensors="pt"))
        finally:
            for h in handles:
                h.remove()
        rows = tokens.positions[:, 0] == i
        real = torch.stack(outputs, 1)  # [T, layers, d_model], the prompt alone
        assert tokens.positions[rows, 1].tolist() == list(range(len(real)))
        assert ((written[rows] - real).norm() / real.norm()) < 1e-5
        torch.testing.assert_close(tokens.z[rows].mean(0), mean.z[i], rtol=1e-4, atol=1e-5)


def test_sites_of_another_model_are_refused():
    model, other = tiny_model("llama"), tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="sites= holds the heads of another model"):
        hp_mini.record_heads(model, CharTokenizer(), TEXTS, sites=hp_mini.attention_heads(other), progress=False)


@pytest.mark.parametrize("value, error, message", [
    (2.5, TypeError, r"batch_size must be an integer, got 2\.5 \(float\)"),
    ("2", TypeError, r"batch_size must be an integer, got '2' \(str\)"),
    (False, TypeError, r"batch_size must be an integer, got False \(bool\)"),
    (0, ValueError, r"batch_size must be at least 1, got 0"),
])
def test_record_heads_refuses_a_batch_size_that_is_not_a_positive_integer(value, error, message):
    with pytest.raises(error, match=message):
        hp_mini.record_heads(tiny_model("llama"), CharTokenizer(), TEXTS, batch_size=value, progress=False)


def test_record_heads_takes_a_numpy_integer_batch_size():
    import numpy as np

    model, tok = tiny_model("llama"), CharTokenizer()
    want = hp_mini.record_heads(model, tok, TEXTS, batch_size=3, progress=False)
    got = hp_mini.record_heads(model, tok, TEXTS, batch_size=np.int64(3), progress=False)
    assert torch.equal(got.z, want.z)


def test_record_heads_refuses_a_model_on_the_meta_device():
    model = tiny_model("llama").to("meta")
    with pytest.raises(ValueError, match=r"record_heads: LlamaForCausalLM's parameter .* is on the meta device"):
        hp_mini.record_heads(model, CharTokenizer(), TEXTS, progress=False)


# -- per-token rows (pool=None) ----------------------------------------------------------------- #


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_per_token_rows_average_to_pool_mean_and_end_with_pool_last(arch):
    model, tok = tiny_model(arch), CharTokenizer("left")
    tokens = hp_mini.record_heads(model, tok, TEXTS, pool=None, batch_size=3, progress=False)
    mean = hp_mini.record_heads(model, tok, TEXTS, pool="mean", batch_size=3, progress=False)
    last = hp_mini.record_heads(model, tok, TEXTS, pool="last", batch_size=3, progress=False)
    masks = [torch.tensor([c == "e" or i == 0 for i, c in enumerate(t)]) for t in TEXTS]
    masked = hp_mini.record_heads(model, tok, TEXTS, pool=masks, batch_size=3, progress=False)
    n_tokens = sum(len(t) for t in TEXTS)
    assert tokens.z.shape == (n_tokens, *mean.z.shape[1:]) and tokens.z.dtype == torch.float32
    assert tokens.z.numel() * tokens.z.element_size() == 4 * n_tokens * mean.n_layers * mean.n_heads * mean.d_head
    assert tokens.prompts == TEXTS and mean.positions is None
    for i, text in enumerate(TEXTS):
        rows = tokens.positions[:, 0] == i
        assert tokens.positions[rows, 1].tolist() == list(range(len(text)))
        z = tokens.z[rows]
        torch.testing.assert_close(z.mean(0), mean.z[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z[masks[i]].mean(0), masked.z[i], rtol=1e-5, atol=1e-6)
        assert torch.equal(z[-1], last.z[i])
        if mean.bias_factor is not None:  # gemma2: the bias's share is pooled with the same factors
            torch.testing.assert_close(tokens.bias_factor[rows].mean(0), mean.bias_factor[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "olmo2", "granite", "gpt2"])
def test_per_token_contributions_are_the_exact_residual_writes(arch):
    """Every token's heads plus the bias's share are what the attention adds to the residual stream there."""
    from helpers import run_capturing

    model, tok = tiny_model(arch), CharTokenizer("left")
    tokens = hp_mini.record_heads(model, tok, TEXTS, pool=None, batch_size=3, progress=False)
    shares = tokens.bias_shares()
    total = tokens.contributions().sum(2) + (shares if shares is not None else 0)  # [tokens, layers, d_model]
    for i, text in enumerate(TEXTS):
        _, writes, _ = run_capturing(model, arch, tok([text])["input_ids"])
        real = torch.stack([w[0] for w in writes], 1)  # [T, layers, d_model], the prompt run alone
        torch.testing.assert_close(total[tokens.positions[:, 0] == i], real, rtol=1e-5, atol=1e-5)


def test_per_token_rows_and_positions_do_not_depend_on_the_padding_side():
    model = tiny_model("qwen2")
    left = hp_mini.record_heads(model, CharTokenizer("left"), TEXTS, pool=None, progress=False)
    right = hp_mini.record_heads(model, CharTokenizer("right"), TEXTS, pool=None, progress=False)
    assert torch.equal(left.positions, right.positions)
    torch.testing.assert_close(left.z, right.z, rtol=1e-5, atol=1e-6)


def test_per_token_moments_are_the_moments_of_the_token_rows():
    model, tok = tiny_model("llama"), CharTokenizer()
    tokens = hp_mini.record_heads(model, tok, TEXTS, pool=None, batch_size=2, progress=False)
    streamed = hp_mini.record_heads(model, tok, TEXTS, pool=None, store="moments", batch_size=2, progress=False)
    assert streamed.z is None and streamed.n_prompts == len(tokens.z) == sum(len(t) for t in TEXTS)
    z = tokens.z.double()
    torch.testing.assert_close(streamed.moments.sum, z.sum(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(streamed.moments.second, torch.einsum("nlhk,nlhj->lhkj", z, z), rtol=1e-9, atol=1e-9)


def test_per_token_recordings_concatenate_and_select_with_their_positions():
    model, tok = tiny_model("llama"), CharTokenizer()
    whole = hp_mini.record_heads(model, tok, TEXTS, pool=None, batch_size=2, progress=False)
    parts = [hp_mini.record_heads(model, tok, TEXTS[i : i + 2], pool=None, batch_size=2, progress=False)
             for i in (0, 2)]
    merged = HeadActivations.concatenate(parts)
    assert torch.equal(merged.z, whole.z) and torch.equal(merged.positions, whole.positions)
    assert merged.prompts == whole.prompts == TEXTS
    second = whole.select(whole.positions[:, 0] == 1)
    assert second.prompts == TEXTS and second.n_prompts == len(TEXTS[1])
    assert second.positions[:, 1].tolist() == list(range(len(TEXTS[1])))
    assert "tokens" in repr(second)
    pooled = hp_mini.record_heads(model, tok, TEXTS[:2], progress=False)
    with pytest.raises(ValueError, match=r"mixes pooled rows with per-token rows \(pool=None\)"):
        HeadActivations.concatenate([parts[0], pooled])


# -- renamed keywords --------------------------------------------------------------------------- #


def test_record_heads_old_keywords_heads_and_texts_warn_and_name_sites_and_prompts():
    model, tok = tiny_model("llama"), CharTokenizer()
    want = hp_mini.record_heads(model, tok, TEXTS, sites=hp_mini.attention_heads(model), progress=False)
    with pytest.warns(DeprecationWarning, match="'heads' is now called 'sites'; write sites="):
        got = hp_mini.record_heads(model, tok, TEXTS, heads=hp_mini.attention_heads(model), progress=False)
    assert torch.equal(got.z, want.z)
    with pytest.warns(DeprecationWarning, match="'texts' is now called 'prompts'; write prompts="):
        got = hp_mini.record_heads(model, tok, texts=TEXTS, progress=False)
    assert torch.equal(got.z, want.z) and got.prompts == TEXTS
    with pytest.raises(TypeError, match="give sites= only"):
        hp_mini.record_heads(model, tok, TEXTS, heads=hp_mini.attention_heads(model),
                             sites=hp_mini.attention_heads(model), progress=False)


def test_head_activations_texts_is_a_deprecated_alias_of_prompts():
    acts = hp_mini.record_heads(tiny_model("llama"), CharTokenizer(), TEXTS, progress=False)
    with pytest.warns(DeprecationWarning, match="HeadActivations.texts is now called prompts"):
        assert acts.texts == TEXTS
    with pytest.warns(DeprecationWarning, match="HeadActivations.texts is now called prompts"):
        acts.texts = list("abcd")
    assert acts.prompts == list("abcd")
    with pytest.warns(DeprecationWarning, match="'texts' is now called 'prompts'"):
        made = HeadActivations(acts.z, acts.W_O, None, acts.layers, texts=TEXTS)
    assert made.prompts == TEXTS


# -- the store layer and the recorder core ------------------------------------------------------ #


def test_an_unknown_store_is_refused_with_one_message_by_every_text_recorder():
    from hp_mini.record.stream import record_stream

    model, tok = tiny_model("llama"), CharTokenizer()
    message = r"store must be 'samples' or 'moments', got 'all'"
    with pytest.raises(ValueError, match=message):
        hp_mini.record_heads(model, tok, TEXTS, store="all", progress=False)
    with pytest.raises(ValueError, match=message):
        record_stream(model, tok, TEXTS, store="all", progress=False)
    with pytest.raises(ValueError, match=message):
        HeadStore("all", (2, 6, 8))


def test_rows_pool_a_mask_a_slice_or_keep_every_real_token():
    """The pooling layer on a hand-made batch: padding (NaN here) never reaches a row."""
    z = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # [B, T, heads * d_head], 1 head of 2
    z[0, 0] = float("nan")  # input 0 is left-padded at position 0
    real = torch.tensor([[False, True, True], [True, True, True]])
    rows = Rows(1, (1, 2))
    for select, want in [
        (real, torch.stack([z[0, 1:].mean(0), z[1].mean(0)])),
        (torch.tensor([[False, False, True], [True, False, False]]), torch.stack([z[0, 2], z[1, 0]])),
        (slice(1, None), z[:, 1:].mean(1)),
    ]:
        forward = Forward(run=lambda: None, select=select, real=real)
        rows.begin(forward)
        rows.take(0, z, None)
        got, factor, positions = rows.end(forward)
        torch.testing.assert_close(got[:, 0, 0], want)
        assert factor is None and positions is None
    forward = Forward(run=lambda: None, select=None, real=real, first=7)
    rows.begin(forward)
    rows.take(0, z, torch.full((2, 3, 1), 0.5))
    got, factor, positions = rows.end(forward)
    assert torch.equal(got[:, 0, 0], z[real]) and torch.equal(factor, torch.full((5, 1), 0.5))
    assert positions.tolist() == [[7, 0], [7, 1], [8, 0], [8, 1], [8, 2]]


def test_hooks_are_removed_and_the_mode_restored_when_a_batch_fails():
    model = tiny_model("gpt2")  # learned absolute positions: 64
    model.train()
    sites = hp_mini.attention_heads(model)
    with pytest.raises(ValueError, match="prompt 2 has 70 tokens"):
        hp_mini.record_heads(model, CharTokenizer(), ["a", "b", "x" * 70], batch_size=1, progress=False)
    assert model.training
    assert all(not s.module._forward_hooks and not s.module._forward_pre_hooks for s in sites)


def test_a_model_that_skips_a_recorded_site_is_an_error():
    class Skipping:  # an input adapter whose forward pass never reaches the model
        def __len__(self):
            return 1

        def forward(self, start, stop):
            return Forward(run=lambda: None, select=None)

    model = tiny_model("llama")
    sites = hp_mini.attention_heads(model)
    with pytest.raises(RuntimeError, match="without passing through every recorded site"):
        record_batches(model, sites, Skipping(), HeadStore("samples", (2, 6, 8)), batch_size=1)

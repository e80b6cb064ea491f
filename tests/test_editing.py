"""scale_heads: identity at alpha=1, equal to hand edits of z, clean hooks, nesting, errors."""

from __future__ import annotations

import pytest
import torch

import hp_mini
from conftest import TEXT_ARCHITECTURES, edit_head_by_hand, tiny_model

IDS = torch.randint(1, 90, (2, 6), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _edit_z_by_hand(model, layer, head, fn):
    """Logits with head `head` of `layer` replaced by fn(z_h), written out by hand."""
    with edit_head_by_hand(hp_mini.attention_heads(model)[layer], head, fn):
        return _logits(model)


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
def test_alpha_one_is_bit_identical(arch):
    model = tiny_model(arch)
    before = _logits(model)
    with hp_mini.scale_heads(model, {(0, 1): 1.0, (1, 0): 1.0}):
        assert torch.equal(_logits(model), before)


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
@pytest.mark.parametrize("alpha, by_hand", [(0.0, torch.zeros_like), (-1.0, torch.neg)])
def test_alpha_zero_and_minus_one_match_hand_edits(arch, alpha, by_hand):
    model = tiny_model(arch)
    expected = _edit_z_by_hand(model, 1, 2, by_hand)
    with hp_mini.scale_heads(model, {(1, 2): alpha}):
        got = _logits(model)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, _logits(model), atol=1e-4), "the edit changed nothing"


def test_enhancing_scales_the_head_contribution():
    model = tiny_model("llama")
    expected = _edit_z_by_hand(model, 0, 3, lambda z: 5 * z)
    with hp_mini.scale_heads(model, {(0, 3): 5}):
        assert torch.allclose(_logits(model), expected, atol=1e-5)


def test_hooks_are_removed_on_exit_and_on_error():
    model = tiny_model("gpt2")
    before = _logits(model)
    with hp_mini.scale_heads(model, {(0, 0): -1}):
        pass
    assert torch.equal(_logits(model), before)
    with pytest.raises(RuntimeError, match="boom"):
        with hp_mini.scale_heads(model, {(0, 0): -1}):
            raise RuntimeError("boom")
    assert torch.equal(_logits(model), before)
    assert all(not s.module._forward_pre_hooks for s in hp_mini.attention_heads(model))


def test_nested_edits_of_the_same_head_multiply():
    model = tiny_model("llama")
    with hp_mini.scale_heads(model, {(1, 1): -2.0}):
        with hp_mini.scale_heads(model, {(1, 1): 1.5}):
            nested = _logits(model)
    with hp_mini.scale_heads(model, {(1, 1): -3.0}):
        single = _logits(model)
    assert torch.allclose(nested, single, atol=1e-5)


def test_edits_apply_during_generate():
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        plain = model.generate(IDS, max_new_tokens=5, do_sample=False)
        with hp_mini.scale_heads(model, {(l, h): 0.0 for l in range(2) for h in range(6)}):
            ablated = model.generate(IDS, max_new_tokens=5, do_sample=False)
    assert not torch.equal(plain, ablated)


@pytest.mark.parametrize(
    "edits, message",
    [
        ({(2, 0): -1}, r"L2H0: layer 2 is out of range; valid layers are 0\.\.1"),
        ({(0, 6): -1}, r"L0H6: head 6 is out of range; valid heads are 0\.\.5"),
        ({(0, -1): -1}, r"head -1 is out of range"),
        ({(0, 1): float("nan")}, r"alpha must be a finite number"),
    ],
)
def test_bad_edits_are_refused_with_the_valid_ranges(edits, message):
    model = tiny_model("llama")
    with pytest.raises((IndexError, ValueError), match=message):
        with hp_mini.scale_heads(model, edits):
            pass

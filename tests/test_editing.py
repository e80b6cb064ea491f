"""scale_heads: identity at alpha=1, equal to hand edits, clean hooks, nesting, modes, errors.

Exactness against a hand edit of the residual stream, for every family, is in
``test_architectures.py``."""

from __future__ import annotations

import gc
import threading
import warnings

import pytest
import torch

import hp_mini
from helpers import TEXT_ARCHITECTURES, edit_head_by_hand, tiny_model

# On these layers the write is linear in z, so scaling z_h is the residual edit itself.
PRE_NORM = [a for a in TEXT_ARCHITECTURES if a not in ("gemma2", "gemma3_text")]
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


@pytest.mark.parametrize("arch", PRE_NORM)
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


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "olmo2"])
def test_pre_norm_mode_scales_z_literally_and_differs_from_the_residual_edit(arch):
    model = tiny_model(arch)
    expected = _edit_z_by_hand(model, 1, 1, torch.neg)
    with hp_mini.scale_heads(model, {(1, 1): -1.0}, mode="pre_norm"):
        literal = _logits(model)
    with hp_mini.scale_heads(model, {(1, 1): -1.0}):
        exact = _logits(model)
    torch.testing.assert_close(literal, expected, rtol=1e-5, atol=1e-6)
    assert (literal - exact).norm() > 1e-3 * exact.norm()
    with pytest.raises(ValueError, match="mode must be 'residual' or 'pre_norm'"):
        hp_mini.scale_heads(model, {(1, 1): -1.0}, mode="post")


# -- misuse: issue-style bad input ------------------------------------------------------------ #


def test_scale_heads_without_with_warns_and_refuses_to_be_a_flag():
    model = tiny_model("llama")
    with pytest.warns(RuntimeWarning, match="never entered, so it edited nothing"):
        hp_mini.scale_heads(model, {(0, 1): -1.0})
        gc.collect()
    edit = hp_mini.scale_heads(model, {(0, 1): -1.0})
    with pytest.raises(TypeError, match="is a context manager: use it as `with hp_mini.scale_heads"):
        bool(edit)
    with edit:  # entering it silences the warning
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del edit
        gc.collect()


def test_heads_of_another_model_instance_are_refused():
    model, other = tiny_model("llama"), tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="sites= holds the heads of another model"):
        hp_mini.scale_heads(model, {(0, 1): -1.0}, sites=hp_mini.attention_heads(other))


def test_scale_heads_takes_the_old_keyword_heads_with_a_deprecation_warning():
    model = tiny_model("llama")
    sites = hp_mini.attention_heads(model)
    with torch.no_grad(), hp_mini.scale_heads(model, {(0, 1): -1.0}, sites=sites):
        want = model(IDS).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit = hp_mini.scale_heads(model, {(0, 1): -1.0}, heads=sites)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "scale_heads: the keyword 'heads' is now called 'sites'; write sites=" in str(caught[0].message)
    assert caught[0].filename == __file__
    with torch.no_grad(), edit:
        got = model(IDS).logits
    assert torch.equal(got, want)
    with torch.no_grad():
        assert not torch.equal(model(IDS).logits, want), "the edit changed nothing: the test cannot tell"
    with pytest.raises(TypeError, match="give sites= only"):
        hp_mini.scale_heads(model, {(0, 1): -1.0}, heads=sites, sites=sites)


def test_a_list_of_heads_without_alphas_says_how_to_pass_them():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match=r"edits must map heads to alphas.*\{head: alpha for head in heads\}"):
        hp_mini.scale_heads(model, [(0, 1), (1, 2)])


@pytest.mark.parametrize("key", [(0.7, 1), (0, 1.0), ("0", 1), (True, 1)])
def test_non_integer_layers_and_heads_are_refused(key):
    model = tiny_model("llama")
    with pytest.raises(TypeError, match="must be an integer"):
        hp_mini.scale_heads(model, {key: -1.0})


def test_alpha_must_be_a_number():
    with pytest.raises(TypeError, match="alpha must be a number"):
        hp_mini.scale_heads(tiny_model("llama"), {(0, 1): "-1"})


def test_entering_the_same_object_twice():
    model = tiny_model("llama")
    before = _logits(model)
    edit = hp_mini.scale_heads(model, {(1, 1): -1.0})
    with edit:
        first = _logits(model)
        with pytest.raises(RuntimeError, match="already active"):
            with edit:
                pass
        torch.testing.assert_close(_logits(model), first)  # the failed re-entry left the edit as it was
    with edit:  # used again after it exited: the same edit
        torch.testing.assert_close(_logits(model), first)
    assert torch.equal(_logits(model), before)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 5.0])
def test_smollm2_scale_heads_equals_a_hand_edit_of_the_residual(smollm2, alpha):
    from helpers import check_scale_heads_is_the_hand_edit

    check_scale_heads_is_the_hand_edit(smollm2[0], "llama", alpha)


def test_nested_residual_edits_on_a_post_norm_layer_add_their_changes():
    model = tiny_model("gemma2")
    from helpers import edit_residual_by_hand

    # The changes add: (-2 - 1) + (1.5 - 1) = -2.5, the change of one edit with alpha = -1.5.
    with torch.no_grad():
        with edit_residual_by_hand(model, "gemma2", 1, 1, -1.5):
            expected = _logits(model)
        with hp_mini.scale_heads(model, {(1, 1): -2.0}), hp_mini.scale_heads(model, {(1, 1): 1.5}):
            nested = _logits(model)
    torch.testing.assert_close(nested, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- #
# Threads: an edit applies only in the thread that entered it
# --------------------------------------------------------------------------- #


def _in_threads(*targets):
    """Run each target in a thread of its own, all at once; their results, in order."""
    results, errors = [None] * len(targets), []

    def run(i, target):
        try:
            results[i] = target()
        except BaseException as err:  # noqa: BLE001 - raised again in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_an_edit_in_one_thread_leaves_another_threads_forward_unedited(arch):
    model = tiny_model(arch)
    plain = _logits(model)
    with hp_mini.scale_heads(model, {(1, 2): -1.0}):
        edited_alone = _logits(model)
    entered, done = threading.Barrier(2, timeout=30), threading.Event()

    def editing():
        with hp_mini.scale_heads(model, {(1, 2): -1.0}):
            entered.wait()  # the other thread runs the model while this edit is active
            out = _logits(model)
            assert done.wait(30)
        return out

    def unedited():
        entered.wait()
        out = _logits(model)
        done.set()
        return out

    edited, other = _in_threads(editing, unedited)
    assert (edited_alone - plain).abs().max() > 1e-2  # the edit changes the logits
    torch.testing.assert_close(other, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edited, edited_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_two_threads_each_in_their_own_edit_get_only_their_own(arch):
    model = tiny_model(arch)
    want = {}
    for alpha in (-1.0, 5.0):
        with hp_mini.scale_heads(model, {(1, 2): alpha}):
            want[alpha] = _logits(model)
    both_in, both_ran = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)

    def edit(alpha):
        def run():
            with hp_mini.scale_heads(model, {(1, 2): alpha}):
                both_in.wait()  # both edits are active before either thread runs the model
                out = _logits(model)
                both_ran.wait()
            return out

        return run

    minus_one, five = _in_threads(edit(-1.0), edit(5.0))
    assert (want[-1.0] - want[5.0]).abs().max() > 1e-2
    torch.testing.assert_close(minus_one, want[-1.0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(five, want[5.0], rtol=1e-5, atol=1e-5)
    assert all(not s.module._forward_pre_hooks and not s.module._forward_hooks
               for s in hp_mini.attention_heads(model))


def test_scale_heads_refuses_a_model_on_the_meta_device():
    model = tiny_model("llama").to("meta")
    with pytest.raises(ValueError, match=r"scale_heads: LlamaForCausalLM's parameter .* is on the meta device"):
        hp_mini.scale_heads(model, {(1, 2): -1.0})

"""generate: the shared-prefix path and early stopping give the ordinary path's greedy text, edits included."""

from __future__ import annotations

import functools
import inspect
import warnings

import pytest
import torch

import hp_mini
import hp_mini.edit.generation as generation
from helpers import TEXT_ARCHITECTURES, CharTokenizer, tiny_model
from hp_mini.edit.tree import generate_tree, prefix_tree, tree_support


class Tokenizer(CharTokenizer):
    """CharTokenizer that also returns unpadded lists and decodes one sequence, like a Hugging Face tokenizer."""

    def __call__(self, texts, return_tensors=None, padding=False):
        if return_tensors is None:
            return {"input_ids": [self._ids(t) for t in texts]}
        return super().__call__(texts, return_tensors=return_tensors, padding=padding)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(48 + int(i)) if int(i) % 9 else "\n" for i in ids if not (skip_special_tokens and int(i) == 0))

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.decode(row, skip_special_tokens) for row in ids]


PREFIX = "Q: abc?\nA: x\n\nQ: de?\nA: y\n\n"
PROMPTS = [PREFIX + q for q in ["Q: fgh?\nA:", "Q: fgi?\nA:", "Q: klmno?\nA:", "Q: f?\nA:", "Q: zz?\nA:"]]
PROMPTS.append("Q: fg")  # a prompt that is a prefix of others, and shorter


def _both(model, tok, prompts, **kw):
    slow = hp_mini.generate(model, tok, prompts, batch_size=4, **kw)
    fast = hp_mini.generate(model, tok, prompts, batch_size=4, share_prefixes=True, **kw)
    return slow, fast


def test_prefix_tree_shares_tokens():
    tokens, depth, parent, paths = prefix_tree([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2]])
    assert tokens == [1, 2, 3, 4, 5] and depth == [0, 1, 2, 2, 1] and parent == [-1, 0, 1, 1, 0]
    assert paths == [[0, 1, 2], [0, 1, 3], [0, 4], [0, 1]]


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
def test_shared_prefixes_give_the_same_continuations(arch):
    model, tok = tiny_model(arch), Tokenizer()
    slow, fast = _both(model, tok, PROMPTS, max_new_tokens=6)
    assert fast == slow
    assert all(len(s) > 0 for s in slow)


@pytest.fixture
def tree_calls(monkeypatch):
    """Counts the calls of the shared-prefix path; warnings about it are shown afresh."""
    calls = []
    real = generation.generate_tree

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_tree", counted)
    monkeypatch.setattr(generation, "_WARNED", set())
    return calls


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_full_attention_models_take_the_tree_path(arch, tree_calls):
    model, tok = tiny_model(arch), Tokenizer()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fast = hp_mini.generate(model, tok, PROMPTS, max_new_tokens=6, share_prefixes=True)
    assert tree_calls == [model], "the shared-prefix path was not taken"
    assert not [str(w.message) for w in seen], "generate warned (a switched-off path or a deprecated keyword)"
    assert fast == hp_mini.generate(model, tok, PROMPTS, max_new_tokens=6)
    assert len(tree_calls) == 1  # the ordinary path stays ordinary


def test_the_cache_keyword_is_found_by_trying(tree_calls):
    """A decoder whose forward takes the cache as ``past_key_values`` (transformers before 5.24)
    takes the tree path as well as one that takes ``cache``."""

    class OldStyle(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None, logits_to_keep=0):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep)

    inner, tok = tiny_model("llama"), Tokenizer()
    old = OldStyle(inner)
    assert tree_support(old).cache_keyword == "past_key_values"
    if "cache" in inspect.signature(inner.forward).parameters:  # transformers >= 5.24: never the deprecated name
        assert tree_support(inner).cache_keyword == "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = hp_mini.generate(old, tok, PROMPTS, max_new_tokens=6, share_prefixes=True)
    assert tree_calls == [old]
    assert got == hp_mini.generate(inner, tok, PROMPTS, max_new_tokens=6)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "mistral"])
def test_sliding_window_models_take_the_tree_path_when_the_prompts_fit(arch, tree_calls):
    model, tok = tiny_model(arch), Tokenizer()
    longest = max(len(p) for p in PROMPTS)
    model.config.sliding_window = longest + 6  # exactly enough for the longest prompt and its continuation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = hp_mini.generate(model, tok, PROMPTS, max_new_tokens=6, share_prefixes=True)
    assert tree_calls == [model]
    assert fast == hp_mini.generate(model, tok, PROMPTS, max_new_tokens=6)


def test_sliding_window_models_say_once_why_they_take_the_ordinary_path(tree_calls):
    model, tok = tiny_model("gemma2"), Tokenizer()
    model.config.sliding_window = 8  # shorter than the prompts: a sliding layer sees less than the tree would show it
    plain = hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=4)
    with pytest.warns(RuntimeWarning, match=r"Gemma2ForCausalLM has sliding-window layers \(window 8 tokens\)"):
        fast = hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=4, share_prefixes=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=4, share_prefixes=True)
    assert tree_calls == []
    assert fast == again == plain
    model.config.sliding_window = 4096
    assert hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=4, share_prefixes=True) != plain, (
        "a window of 8 changes nothing: the test cannot tell the paths apart")
    assert tree_calls == [model]


def test_a_model_that_ignores_the_tree_mask_is_caught_by_the_probe(tree_calls):
    """An attention that drops the 4D mask would let every token see its siblings: the
    probe compares the tree pass with the ordinary pass and keeps such a model off the path."""
    model, tok = tiny_model("llama"), Tokenizer()
    real = model.forward

    def no_4d_mask(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.ndim == 4:
            attention_mask = None
        return real(*args, attention_mask=attention_mask, **kwargs)

    model.forward = no_4d_mask
    with pytest.warns(RuntimeWarning, match="differ from its ordinary forward pass"):
        out = hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=4, share_prefixes=True)
    assert tree_calls == []
    del model.forward
    assert out == hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=4)


def test_a_model_that_takes_no_cache_says_so(tree_calls):
    model = tiny_model("llama")
    real = model.forward

    def no_cache(*args, cache=None, past_key_values=None, **kwargs):
        kwargs["use_cache"] = False
        return real(*args, **kwargs)

    model.forward = no_cache
    support = tree_support(model)
    assert support.reason is not None and "takes no key/value cache" in support.reason
    assert "cache=" in support.reason and "past_key_values=" in support.reason


def test_images_with_share_prefixes_warn(tree_calls, tiny_vlm):
    model, processor, images = tiny_vlm
    from hp_mini.vision import question_prompt

    prompts = [question_prompt("what colour is it?")] * 2
    with pytest.warns(RuntimeWarning, match="images are given"):
        out = hp_mini.generate(model, processor, prompts, images=images, max_new_tokens=2, share_prefixes=True)
    assert tree_calls == [] and len(out) == 2


@pytest.fixture(scope="module")
def tiny_vlm():
    from hp_mini.vision import shapes, vlm

    processor = vlm.build_processor()
    model = vlm.build_vlm(processor.tokenizer, vision={"hidden_size": 16, "intermediate_size": 32,
                                                       "num_hidden_layers": 1, "num_attention_heads": 2},
                          text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4}).eval()
    return model, processor, shapes.shapes_dataset(2, seed=5)["image"]


# --------------------------------------------------------------------------- #
# Bad input: clear errors that name the prompt
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("share", [False, True])
def test_a_lone_empty_prompt_is_an_error_naming_it(share):
    with pytest.raises(ValueError, match=r"prompts\[0\] has no tokens"):
        hp_mini.generate(tiny_model("llama"), Tokenizer(), [""], max_new_tokens=3, share_prefixes=share)


@pytest.mark.parametrize("share", [False, True])
def test_an_empty_prompt_inside_a_batch_is_an_error_naming_its_index(share):
    with pytest.raises(ValueError, match=r"prompts\[2\] has no tokens"):
        hp_mini.generate(tiny_model("llama"), Tokenizer(), ["ab", "cd", "", "ef"], max_new_tokens=3,
                         share_prefixes=share)


class SpaceDroppingTokenizer(Tokenizer):
    """Drops spaces: a non-empty prompt of spaces has no tokens."""

    def _ids(self, text):
        return super()._ids(text.replace(" ", ""))


@pytest.mark.parametrize("share", [False, True])
def test_a_prompt_that_tokenises_to_nothing_is_an_error_naming_its_index(share):
    with pytest.raises(ValueError, match=r"prompts\[5\] has no tokens"):
        hp_mini.generate(tiny_model("llama"), SpaceDroppingTokenizer(), ["ab"] * 5 + ["   "], max_new_tokens=3,
                         batch_size=4, share_prefixes=share)


def test_a_prompt_that_is_not_a_string_is_an_error_naming_its_index():
    with pytest.raises(TypeError, match=r"prompts\[1\] is a int"):
        hp_mini.generate(tiny_model("llama"), Tokenizer(), ["ab", 3], max_new_tokens=3)


def test_an_image_without_a_placeholder_names_question_prompt(tiny_vlm):
    model, processor, images = tiny_vlm
    from hp_mini.vision import question_prompt

    prompts = [question_prompt("what colour is it?"), "what colour is it?"]
    with pytest.raises(ValueError, match=r"prompts\[1\].*hp_mini\.vision\.question_prompt"):
        hp_mini.generate(model, processor, prompts, images=images, max_new_tokens=2)
    assert len(hp_mini.generate(model, processor, prompts[:1] * 2, images=images, max_new_tokens=2)) == 2


def test_images_with_a_tokenizer_are_an_error(tiny_vlm):
    model, processor, images = tiny_vlm
    from hp_mini.vision import question_prompt

    with pytest.raises(TypeError, match="processor instead of its tokenizer"):
        hp_mini.generate(model, processor.tokenizer, [question_prompt("what colour is it?")] * 2, images=images)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_edits_apply_on_the_shared_prefix_path(arch):
    model, tok = tiny_model(arch), Tokenizer()
    plain = hp_mini.generate(model, tok, PROMPTS, max_new_tokens=6, share_prefixes=True)
    edits = {(0, 1): -1.0, (1, 0): 5.0, (1, 2): 0.0}
    with hp_mini.scale_heads(model, edits):
        slow, fast = _both(model, tok, PROMPTS, max_new_tokens=6)
    assert fast == slow
    assert fast != plain, "the edit changed no continuation"
    # and the logits of the tree pass are those of the ordinary forward pass, edited
    ids = torch.tensor([tok._ids(PROMPTS[0])])
    with hp_mini.scale_heads(model, edits), torch.no_grad():
        want = model(ids).logits[0, -1]
        seen = {}
        orig = model.forward

        @functools.wraps(orig)
        def spy(*a, **k):
            out = orig(*a, **k)
            seen.setdefault("first", out.logits)
            return out

        model.forward = spy
        try:
            prompt_ids = tok([PROMPTS[0], PROMPTS[1]])["input_ids"]
            generate_tree(model, prompt_ids, 1, 8, lambda t: True, tree_support(model))
        finally:
            del model.forward
    got = seen["first"][0, 0]  # logits_to_keep: rows follow the prompts in sorted order; PROMPTS[0] < PROMPTS[1]
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("share", [False, True])
def test_stop_ends_each_continuation_at_its_first_line(share):
    model, tok = tiny_model("llama"), Tokenizer()
    full = hp_mini.generate(model, tok, PROMPTS, max_new_tokens=12, share_prefixes=share)
    cut = hp_mini.generate(model, tok, PROMPTS, max_new_tokens=12, stop="\n", share_prefixes=share)
    for f, c in zip(full, cut):
        assert f.startswith(c), "stopping changed the text before the stop"
        body = c.lstrip()
        if "\n" in body:
            assert c.endswith("\n") and "\n" not in body[:-1], f"{c!r} goes on past its first line"
        else:
            assert c == f, f"{c!r} stopped without a line break"
    assert any("\n" in f.lstrip()[:-1] for f in full), "no continuation had a line break to stop at"
    with pytest.raises(ValueError, match="empty"):
        hp_mini.generate(model, tok, PROMPTS, stop=[""])


def test_smollm2_fewshot_answers_match_the_ordinary_path_under_an_edit(smollm2):
    from hp_mini.experiments.textdata import QA_FEWSHOT, qa_prompt

    model, tok = smollm2
    questions = ["In which country is the Colosseum?", "What colour is the sky on a clear day?",
                 "In which country is Machu Picchu?", "How many days are in a week?"]
    prompts = [QA_FEWSHOT + qa_prompt(q) for q in questions]
    for edits in ({}, {(5, 3): -1.0, (12, 0): -1.0, (20, 4): 5.0}):
        with hp_mini.scale_heads(model, edits):
            slow = hp_mini.generate(model, tok, prompts, max_new_tokens=6, stop="\n")
            fast = hp_mini.generate(model, tok, prompts, max_new_tokens=6, stop="\n", share_prefixes=True)
        assert fast == slow


# --------------------------------------------------------------------------- #
# Counts are integers, and the model holds its weights
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name, value, error, message", [
    ("max_new_tokens", 2.5, TypeError, r"max_new_tokens must be an integer, got 2\.5 \(float\)"),
    ("max_new_tokens", "3", TypeError, r"max_new_tokens must be an integer, got '3' \(str\)"),
    ("max_new_tokens", True, TypeError, r"max_new_tokens must be an integer, got True \(bool\)"),
    ("max_new_tokens", 0, ValueError, r"max_new_tokens must be at least 1, got 0"),
    ("batch_size", 2.0, TypeError, r"batch_size must be an integer, got 2\.0 \(float\)"),
    ("batch_size", -1, ValueError, r"batch_size must be at least 1, got -1"),
])
def test_generate_refuses_a_max_new_tokens_or_batch_size_that_is_not_a_positive_integer(name, value, error, message):
    with pytest.raises(error, match=message):
        hp_mini.generate(tiny_model("llama"), Tokenizer(), ["ab"], **{name: value})


def test_generate_takes_numpy_integers_as_counts():
    import numpy as np

    model, tok = tiny_model("llama"), Tokenizer()
    want = hp_mini.generate(model, tok, ["ab", "cde"], max_new_tokens=3, batch_size=1, skip_special_tokens=False)
    got = hp_mini.generate(model, tok, ["ab", "cde"], max_new_tokens=np.int64(3), batch_size=np.int32(1),
                           skip_special_tokens=False)
    assert got == want and all(len(text) == 3 for text in got)


def test_generate_refuses_a_model_on_the_meta_device():
    model = tiny_model("llama").to("meta")
    with pytest.raises(ValueError, match=r"generate: LlamaForCausalLM's parameter .* is on the meta device"):
        hp_mini.generate(model, Tokenizer(), ["ab"], max_new_tokens=2)

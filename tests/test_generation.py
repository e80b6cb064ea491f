"""generate: the shared-prefix path and early stopping give the ordinary path's greedy text, edits included."""

from __future__ import annotations

import functools

import pytest
import torch

import hp_mini
from conftest import TEXT_ARCHITECTURES, CharTokenizer, tiny_model
from hp_mini.generation import _prefix_tree, _tree_ready


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
    tokens, depth, parent, paths = _prefix_tree([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2]])
    assert tokens == [1, 2, 3, 4, 5] and depth == [0, 1, 2, 2, 1] and parent == [-1, 0, 1, 1, 0]
    assert paths == [[0, 1, 2], [0, 1, 3], [0, 4], [0, 1]]


@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
def test_shared_prefixes_give_the_same_continuations(arch):
    model, tok = tiny_model(arch), Tokenizer()
    slow, fast = _both(model, tok, PROMPTS, max_new_tokens=6)
    assert fast == slow
    assert all(len(s) > 0 for s in slow)


def test_full_attention_models_take_the_tree_path():
    assert _tree_ready(tiny_model("llama")) and _tree_ready(tiny_model("gpt2"))
    # sliding-window layers would see more context in the tree pass: they take the ordinary path
    assert not _tree_ready(tiny_model("gemma2"))


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
        from hp_mini.generation import _generate_tree

        seen = {}
        orig = model.forward

        @functools.wraps(orig)
        def spy(*a, **k):
            out = orig(*a, **k)
            seen.setdefault("first", out.logits)
            return out

        model.forward = spy
        try:
            _generate_tree(model, tok, [PROMPTS[0], PROMPTS[1]], 1, 8, lambda t: True)
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
    from hp_mini.textdata import QA_FEWSHOT, qa_prompt

    model, tok = smollm2
    questions = ["In which country is the Colosseum?", "What colour is the sky on a clear day?",
                 "In which country is Machu Picchu?", "How many days are in a week?"]
    prompts = [QA_FEWSHOT + qa_prompt(q) for q in questions]
    for edits in ({}, {(5, 3): -1.0, (12, 0): -1.0, (20, 4): 5.0}):
        with hp_mini.scale_heads(model, edits):
            slow = hp_mini.generate(model, tok, prompts, max_new_tokens=6, stop="\n")
            fast = hp_mini.generate(model, tok, prompts, max_new_tokens=6, stop="\n", share_prefixes=True)
        assert fast == slow

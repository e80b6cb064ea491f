"""Greedy generation for text and vision-language models alike.

The chapters and widgets all generate through :func:`generate`, so an edit made
with :func:`hp_mini.scale_heads` applies the same way everywhere.

Two options make many short, similar continuations cheap (both leave greedy
decoding as it is):

``stop``
    A continuation ends as soon as it contains one of these strings after its
    leading white space (``stop="\\n"``: one line of answer), and rows that have
    ended leave the batch.
``share_prefixes``
    Text prompts are tokenised one by one and put in a prefix tree: a token
    shared by several prompts (a few-shot prefix, a common question opening) is
    run through the model once, in one forward pass over the whole tree with an
    attention mask that lets every token see only its own prompt's earlier
    tokens. Each prompt then decodes from its own key/value cache, gathered
    from the tree. The result is the same greedy continuation, up to
    floating-point rounding, for models whose every layer attends to the full
    context (no sliding window). Whether a model can is checked once, by
    running a three-token tree and comparing it with the ordinary forward pass;
    the cache is passed under whichever keyword the model takes (``cache``
    from transformers 5.24, ``past_key_values`` before). Other models, and
    images, take the ordinary path with a warning that says why. The tree
    itself is :mod:`hp_mini.edit.tree`.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()                       # doctest: +SKIP
>>> hp_mini.generate(model, tokenizer, ["The capital of France is"], max_new_tokens=3)  # doctest: +SKIP
[' Paris. It']
>>> fewshot = "Q: What is the capital of Canada?\\nA: Ottawa\\n\\n"
>>> hp_mini.generate(model, tokenizer, [fewshot + "Q: What is 2 + 2?\\nA:"], max_new_tokens=8,
...                  stop="\\n", share_prefixes=True)                 # doctest: +SKIP
[' 4\\n']
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from hp_mini.checks import check_count, check_weights_loaded
from hp_mini.edit.tree import TreeSupport, beyond_window, generate_tree, tree_support
from hp_mini.model.inputs import encode, ensure_pad_token, tokenizer_of

__all__ = ["generate"]


def generate(
    model: nn.Module,
    tokenizer_or_processor,
    prompts: Sequence[str] | str,
    *,
    images=None,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    chat: bool = False,
    skip_special_tokens: bool = True,
    stop: str | Sequence[str] | None = None,
    share_prefixes: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text is returned).

    Parameters
    ----------
    model : nn.Module
        A causal LM or a vision-language model.
    tokenizer_or_processor
        Its tokenizer, or its processor when ``images`` are given.
    prompts : list of str
        One prompt per continuation.
    images : list of images, optional
        One image per prompt, for vision-language models.
    max_new_tokens : int
        Length limit of each continuation (an integer of at least 1; NumPy
        integers are accepted, floats and bools are not).
    batch_size : int
        Prompts per batch (left-padded; with ``share_prefixes``, prompts per
        prefix tree, whose attention mask grows with the square of its
        number of distinct tokens).
    chat : bool
        Wrap each prompt as a user turn with the tokenizer's chat template.
    skip_special_tokens : bool
        Leave special tokens (end of sequence, padding) out of the text.
    stop : str or list of str, optional
        End a continuation at the token that makes it contain one of these
        strings after its leading white space; that token is the last one
        returned. Greedy decoding is unchanged, so the text before the stop is
        what a longer generation would give.
    share_prefixes : bool
        Run the tokens that prompts share only once (:mod:`hp_mini.edit.tree`;
        text prompts only). Images, a sliding window that a prompt and its
        continuation outgrow, an attention kernel other than ``"eager"`` or
        ``"sdpa"``, or a failed probe take the ordinary path, with a
        ``RuntimeWarning`` saying why (once per reason).

    Returns
    -------
    list of str, one per prompt.

    Raises
    ------
    ValueError
        ``max_new_tokens`` or ``batch_size`` below 1, a model whose parameters
        are on the meta device (no values), a prompt with no tokens (its index
        is named), a number of images other than one per prompt, or a prompt
        given with an image that does not hold the processor's image
        placeholder exactly once (build such prompts with
        :func:`hp_mini.vision.question_prompt`).
    TypeError
        ``max_new_tokens`` or ``batch_size`` that is not an integer, a prompt
        that is not a string, or images given with a tokenizer rather than a
        processor.
    """
    prompts, images, max_new_tokens, batch_size = _checked_inputs(model, prompts, images, max_new_tokens, batch_size)
    tok = tokenizer_of(tokenizer_or_processor)
    prompts = _prepared(tokenizer_or_processor, tok, prompts, images, chat)
    if not prompts:
        return []
    finished = _Finished(model, tok, stop, skip_special_tokens)
    plan = _tree_plan(model, tok, prompts, images, max_new_tokens) if share_prefixes else None
    if plan is None:
        new_tokens = _generate_padded(
            model, tokenizer_or_processor, prompts, images, max_new_tokens, batch_size, finished
        )
    else:
        new_tokens = generate_tree(model, plan.ids, max_new_tokens, batch_size, finished, plan.support)
    return [tok.decode(t, skip_special_tokens=skip_special_tokens) for t in new_tokens]


_EMPTY = (
    "prompts[{i}] has no tokens: a continuation needs at least one token of prompt to start from; "
    "drop the prompt or give it some text"
)


def _checked_inputs(model: nn.Module, prompts, images, max_new_tokens, batch_size):
    """The prompts as a list of strings, one image per prompt (or None), the two counts; a model with weights."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] is a {type(p).__name__}; every prompt must be a str")
    if images is not None:
        images = list(images)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; give one image per prompt")
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
    batch_size = check_count(batch_size, "batch_size")
    check_weights_loaded(model, "generate")
    return prompts, images, max_new_tokens, batch_size


def _prepared(tokenizer_or_processor, tok, prompts: list[str], images, chat: bool) -> list[str]:
    """The prompts as the model reads them (chat turns when asked), checked; the tokenizer pads."""
    if chat:
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    if not prompts:
        return prompts
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(_EMPTY.format(i=i))
    if images is not None:
        _check_image_placeholders(tokenizer_or_processor, prompts)
    ensure_pad_token(tokenizer_or_processor)
    return prompts


class _Finished:
    """Whether a continuation has ended: at an end-of-sequence token, or once it holds a stop string."""

    def __init__(self, model: nn.Module, tok, stop, skip_special_tokens: bool):
        self.stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not s for s in self.stops):
            raise ValueError("stop strings must not be empty")
        self.eos = _eos_ids(model, tok)
        self.tok, self.skip_special_tokens = tok, skip_special_tokens

    def __call__(self, tokens: list[int]) -> bool:
        if tokens[-1] in self.eos:
            return True
        if not self.stops:
            return False
        text = self.tok.decode(tokens, skip_special_tokens=self.skip_special_tokens).lstrip()
        return any(s in text for s in self.stops)


class _TreePlan(NamedTuple):
    """How the prompts take the shared-prefix path: their token ids, and how the model runs the tree."""

    ids: list[list[int]]
    support: TreeSupport


def _tree_plan(model: nn.Module, tok, prompts: list[str], images, max_new_tokens: int) -> _TreePlan | None:
    """The plan for the shared-prefix path, or None (having warned why) for the ordinary one."""
    support = TreeSupport(reason="images are given (prefix sharing is for text prompts)")
    if images is None:
        support = tree_support(model)
    if support.reason is None:
        ids = tok(prompts)["input_ids"]
        for i, s in enumerate(ids):
            if len(s) == 0:
                raise ValueError(_EMPTY.format(i=i))
        beyond = beyond_window(model, support, ids, max_new_tokens)
        if beyond is None:
            return _TreePlan(ids, support)
        support = TreeSupport(reason=beyond)
    _warn_once(support.reason)
    return None


def _check_image_placeholders(processor, prompts: list[str]) -> None:
    """Each prompt given with an image must hold the processor's image placeholder once."""
    if tokenizer_of(processor) is processor:  # a bare tokenizer, with no image processor around it
        raise TypeError(
            f"images were given with a {type(processor).__name__}, which cannot read them; "
            "pass the model's processor instead of its tokenizer"
        )
    placeholder = getattr(processor, "image_token", None)
    if not isinstance(placeholder, str) or not placeholder:
        return
    for i, p in enumerate(prompts):
        count = p.count(placeholder)
        if count != 1:
            raise ValueError(
                f"prompts[{i}] holds the image placeholder {placeholder!r} {count} times, but comes with one image; "
                "build prompts for images with hp_mini.vision.question_prompt(question) "
                f"(or put {placeholder!r} once where the image goes)"
            )


def _eos_ids(model: nn.Module, tok) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = getattr(tok, "eos_token_id", None)
    if ids is None:
        return set()
    return {int(i) for i in ([ids] if isinstance(ids, int) else ids)}


def _cut(tokens: list[int], finished: Callable[[list[int]], bool]) -> list[int]:
    """The continuation up to and including the token that ends it."""
    for i in range(len(tokens)):
        if finished(tokens[: i + 1]):
            return tokens[: i + 1]
    return tokens


# --------------------------------------------------------------------------- #
# The ordinary path: padded batches through model.generate
# --------------------------------------------------------------------------- #


def _generate_padded(model, tokenizer_or_processor, prompts, images, max_new_tokens, batch_size, finished: _Finished):
    tok = tokenizer_of(tokenizer_or_processor)
    kwargs = {}
    if finished.stops:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stop(StoppingCriteria):
            def __init__(self, start: int):
                self.start = start

            def __call__(self, input_ids, scores, **_):
                rows = [finished(row[self.start :].tolist()) for row in input_ids]
                return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)

    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        chunk_images = images[start : start + batch_size] if images is not None else None
        batch = encode(model, tokenizer_or_processor, chunk, images=chunk_images, padding_side="left")
        batch.pop("position_ids", None)  # generate() derives them from the attention mask
        for row, n_real in enumerate(batch["attention_mask"].sum(1).tolist()):
            if n_real == 0:
                raise ValueError(_EMPTY.format(i=start + row))
        n_prompt = batch["input_ids"].shape[1]
        if finished.stops:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Stop(n_prompt)])
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                **kwargs,
            )
        outputs.extend(_cut(row.tolist(), finished) for row in out[:, n_prompt:])
    return outputs


# --------------------------------------------------------------------------- #
# The shared-prefix path (hp_mini.edit.tree), or why it is not taken
# --------------------------------------------------------------------------- #


_WARNED: set[str] = set()


def _warn_once(reason: str) -> None:
    """Warn once per reason (per process) that ``share_prefixes`` took the ordinary path."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(
            f"share_prefixes=True, but {reason}; generating on the ordinary path (same text, slower)",
            RuntimeWarning,
            stacklevel=4,  # the caller of generate (generate -> _tree_plan -> _warn_once)
        )

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
    images, take the ordinary path with a warning that says why.

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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hp_mini.checks import check_count, check_weights_loaded
from hp_mini.model.inputs import tokenizer_of, encode, ensure_pad_token, model_device

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
        Run the tokens that prompts share only once (see the module docstring).
        Text prompts only. Whether a model can is found once per model by a
        three-token probe (the tree pass must fill the key/value cache it is
        given, under the keyword that model takes, and match the ordinary
        forward pass). Images, models with sliding-window attention, an
        attention kernel other than ``"eager"`` or ``"sdpa"``, or a failed
        probe take the ordinary path, with a ``RuntimeWarning`` saying why
        (once per reason).

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
    tok = tokenizer_of(tokenizer_or_processor)
    if chat:
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    if not prompts:
        return []
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(_EMPTY.format(i=i))
    if images is not None:
        _check_image_placeholders(tokenizer_or_processor, prompts)
    ensure_pad_token(tokenizer_or_processor)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in stops):
        raise ValueError("stop strings must not be empty")
    eos = _eos_ids(model, tok)

    def finished(tokens: list[int]) -> bool:
        if tokens[-1] in eos:
            return True
        if not stops:
            return False
        text = tok.decode(tokens, skip_special_tokens=skip_special_tokens).lstrip()
        return any(s in text for s in stops)

    support, ids = None, None
    if share_prefixes:
        support = _TreeSupport(reason="images are given (prefix sharing is for text prompts)")
        if images is None:
            support = _tree_support(model)
        if support.reason is None:
            ids = tok(prompts)["input_ids"]
            for i, s in enumerate(ids):
                if len(s) == 0:
                    raise ValueError(_EMPTY.format(i=i))
            beyond = _beyond_window(model, support, ids, max_new_tokens)
            if beyond is not None:
                support = _TreeSupport(reason=beyond)
        if support.reason is not None:
            _warn_once(support.reason)
    if support is not None and support.reason is None:
        new_tokens = _generate_tree(model, tok, prompts, max_new_tokens, batch_size, finished, support, ids)
    else:
        new_tokens = _generate_padded(
            model, tokenizer_or_processor, tok, prompts, images, max_new_tokens, batch_size, finished, stops
        )
    return [tok.decode(t, skip_special_tokens=skip_special_tokens) for t in new_tokens]


_EMPTY = (
    "prompts[{i}] has no tokens: a continuation needs at least one token of prompt to start from; "
    "drop the prompt or give it some text"
)


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


def _generate_padded(model, tokenizer_or_processor, tok, prompts, images, max_new_tokens, batch_size, finished, stops):
    kwargs = {}
    if stops:
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
        if stops:
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
# The shared-prefix path: one forward pass over a prefix tree, then decoding
# --------------------------------------------------------------------------- #


# The keyword under which a decoder's forward pass takes its key/value cache:
# ``cache`` from transformers 5.24, ``past_key_values`` before. Which one a model
# uses is found by trying (see _probe_tree), newest first, so the deprecated name
# is never passed to a model that takes the new one.
_CACHE_KEYWORDS = ("cache", "past_key_values")


@dataclass(frozen=True)
class _TreeSupport:
    """Whether a model can take the shared-prefix path, and how to call it."""

    cache_keyword: str | None = None
    logits_to_keep: bool = False
    reason: str | None = None  # why not, when cache_keyword is None
    window: int | None = None  # the shortest sliding window, if any layer has one


_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def _tree_support(model: nn.Module) -> _TreeSupport:
    """How ``model`` runs the shared-prefix path, or why it cannot; found once per model."""
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    key = (getattr(text, "_attn_implementation", None), getattr(text, "sliding_window", None))
    known = _SUPPORT.get(model)
    if known is not None and known[0] == key:
        return known[1]
    support = _config_reason(model)
    if support.reason is None:
        support = _probe_tree(model, support.window)
    _SUPPORT[model] = (key, support)
    return support


def _tree_ready(model: nn.Module) -> bool:
    """True when ``model`` can take the shared-prefix path (see :func:`_tree_support`)."""
    return _tree_support(model).reason is None


def _config_reason(model: nn.Module) -> _TreeSupport:
    """What the configuration alone rules out (``reason``), and the sliding window if any."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        return _TreeSupport(reason=f"{name} has no Hugging Face config")
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "is_encoder_decoder", False):
        return _TreeSupport(reason=f"{name} is an encoder-decoder model")
    kernel = getattr(text, "_attn_implementation", None)
    if kernel not in ("eager", "sdpa"):
        # the tree's attention mask is an arbitrary 4D mask, which other kernels ignore
        return _TreeSupport(
            reason=f"{name} uses the attention kernel {kernel!r}, which ignores the prefix tree's 4D mask; "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    # Sliding-window layers see the whole prompt in the tree pass; that is what
    # they see anyway as long as prompt and continuation fit in the window,
    # which generate() checks per call.
    layer_types = getattr(text, "layer_types", None)
    window = getattr(text, "sliding_window", None)
    if layer_types is not None:
        other = sorted({t for t in layer_types if t not in ("full_attention", "sliding_attention")})
        if other:
            return _TreeSupport(reason=f"{name} has {', '.join(other)} layers, which the prefix tree cannot mask")
        if "sliding_attention" not in layer_types:
            window = None
    if window is not None and not (isinstance(window, int) and window > 0):
        return _TreeSupport(reason=f"{name} has a sliding window of {window!r}, which the prefix tree cannot mask")
    return _TreeSupport(window=window)


def _beyond_window(model: nn.Module, support: _TreeSupport, ids: list[list[int]], max_new_tokens: int) -> str | None:
    """Why the prompts cannot share prefixes under a sliding window, or None."""
    if support.window is None:
        return None
    longest = max(len(s) for s in ids) + max_new_tokens
    if longest <= support.window:
        return None
    return (
        f"{type(model).__name__} has sliding-window layers (window {support.window} tokens) and a prompt plus "
        "max_new_tokens do not fit in it; the tree pass would show such a layer more than its window"
    )


def _probe_tree(model: nn.Module, window: int | None = None) -> _TreeSupport:
    """Run the smallest prefix tree and compare it with the ordinary forward pass.

    The tree holds the prompts ``[a, b]`` and ``[a, c]``: three tokens at
    positions 0, 1, 1, with ``c`` masked from ``b``. The path is usable when, for
    one of the cache keywords, the model fills the cache it is given with those
    three tokens in layers that can be gathered, and the logits at ``c`` equal the
    ordinary forward pass over ``[a, c]``.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    name = type(model).__name__
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text, "vocab_size", 4) or 4)
    a, b, c = (1 % vocab, 2 % vocab, 3 % vocab)
    ids = torch.tensor([[a, b, c]], device=device)
    positions = torch.tensor([[0, 1, 1]], device=device)
    sees = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    mask = torch.zeros(1, 1, 3, 3, dtype=dtype).masked_fill_(~sees, torch.finfo(dtype).min).to(device)
    failures = []
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([[a, c]], device=device), use_cache=False).logits[0, -1].float()
        for keyword in _CACHE_KEYWORDS:
            for keep in (True, False):
                cache = DynamicCache()  # one plain layer per decoder layer, sliding ones included
                extra = {"logits_to_keep": torch.tensor([2], device=device)} if keep else {}
                try:
                    out = model(
                        input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                        **{keyword: cache}, **extra,
                    )
                except Exception as err:  # noqa: BLE001 - any failure means: not this way
                    failures.append(f"{keyword}=: {type(err).__name__}: {err}")
                    continue
                if cache.get_seq_length() != 3:
                    failures.append(f"{keyword}=: the cache given was not used")
                    break  # the keyword is ignored, whatever logits_to_keep does
                if not all(type(layer) is DynamicLayer for layer in cache.layers):
                    kinds = sorted({type(layer).__name__ for layer in cache.layers})
                    return _TreeSupport(reason=f"{name} keeps {', '.join(kinds)} cache layers, which cannot be gathered per prompt")
                logits = out.logits[0]
                kept = keep and logits.shape[0] == 1
                got = (logits[0] if kept else logits[2]).float()
                error = float((got - plain).abs().max())
                tolerance = (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2) * max(1.0, float(plain.abs().max()))
                if not error <= tolerance:
                    return _TreeSupport(
                        reason=f"{name}'s logits in a prefix-tree pass differ from its ordinary forward pass by "
                        f"{error:.3g} (its attention may ignore the tree's 4D mask or position ids)"
                    )
                return _TreeSupport(cache_keyword=keyword, logits_to_keep=kept, window=window)
    return _TreeSupport(
        reason=f"{name}'s forward pass takes no key/value cache under any of {', '.join(_CACHE_KEYWORDS)} "
        f"({'; '.join(failures)})"
    )


def _warn_once(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(
            f"share_prefixes=True, but {reason}; generating on the ordinary path (same text, slower)",
            RuntimeWarning,
            stacklevel=3,
        )


def _prefix_tree(seqs: list[list[int]]):
    """Nodes of the prefix tree of ``seqs``: tokens, depths, parents, and each sequence's path."""
    tokens: list[int] = []
    depth: list[int] = []
    parent: list[int] = []
    child: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []
    for seq in seqs:
        node, path = -1, []
        for t in seq:
            key = (node, t)
            if key not in child:
                child[key] = len(tokens)
                tokens.append(t)
                depth.append(depth[node] + 1 if node >= 0 else 0)
                parent.append(node)
            node = child[key]
            path.append(node)
        paths.append(path)
    return tokens, depth, parent, paths


def _generate_tree(model, tok, prompts, max_new_tokens, batch_size, finished, support: _TreeSupport, ids=None):
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    device = model_device(model)
    dtype = next(model.parameters()).dtype
    ids = tok(prompts)["input_ids"] if ids is None else ids
    for i, s in enumerate(ids):
        if len(s) == 0:
            raise ValueError(_EMPTY.format(i=i))
    order = sorted(range(len(ids)), key=lambda i: ids[i])  # neighbours share the longest prefixes
    keep_arg = support.logits_to_keep
    cache_kw = support.cache_keyword
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        tokens, depth, parent, paths = _prefix_tree([ids[i] for i in rows])
        n = len(tokens)
        # Every node sees itself and its ancestors: row i of the mask is its parent's row plus i.
        sees = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(parent):
            if p >= 0:
                sees[i] = sees[p]
            sees[i, i] = True
        mask = torch.zeros(1, 1, n, n, dtype=dtype)
        mask.masked_fill_(~sees, torch.finfo(dtype).min)
        ends = torch.tensor([path[-1] for path in paths])
        kwargs = {"logits_to_keep": ends.to(device)} if keep_arg else {}
        cache = DynamicCache()
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([tokens], device=device),
                position_ids=torch.tensor([depth], device=device),
                attention_mask=mask.to(device),
                use_cache=True,
                **{cache_kw: cache},
                **kwargs,
            )
        logits = out.logits[0] if keep_arg else out.logits[0, ends.to(device)]
        if not all(type(layer) is DynamicLayer for layer in cache.layers):  # pragma: no cover - probed by _tree_support
            raise RuntimeError(f"{type(model).__name__}: prefix sharing needs full-attention cache layers")
        # Each prompt's own cache: the keys and values along its path, left-padded.
        lengths = torch.tensor([len(p) for p in paths])
        width = int(lengths.max())
        gather = torch.zeros(len(paths), width, dtype=torch.long)
        attn = torch.zeros(len(paths), width, dtype=torch.long)
        for b, path in enumerate(paths):
            gather[b, width - len(path) :] = torch.tensor(path)
            attn[b, width - len(path) :] = 1
        gather, attn = gather.to(device), attn.to(device)
        for layer in cache.layers:
            layer.keys = layer.keys[0][:, gather].transpose(0, 1).contiguous()
            layer.values = layer.values[0][:, gather].transpose(0, 1).contiguous()
        position = lengths.to(device)
        active = list(range(len(rows)))
        generated: list[list[int]] = [[] for _ in rows]
        next_tokens = logits.argmax(-1)
        for step in range(max_new_tokens):
            still = []
            for j, b in enumerate(active):
                generated[b].append(int(next_tokens[j]))
                if not finished(generated[b]):
                    still.append(j)
            if not still or step == max_new_tokens - 1:
                break
            if len(still) < len(active):
                keep = torch.tensor(still, device=device)
                cache.batch_select_indices(keep)
                attn, position, next_tokens = attn[keep], position[keep], next_tokens[keep]
                active = [active[j] for j in still]
            attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
            with torch.no_grad():
                out = model(
                    input_ids=next_tokens[:, None],
                    position_ids=position[:, None],
                    attention_mask=attn,
                    use_cache=True,
                    **{cache_kw: cache},
                    **({"logits_to_keep": 1} if keep_arg else {}),
                )
            next_tokens = out.logits[:, -1].argmax(-1)
            position = position + 1
        for b, i in enumerate(rows):
            results[i] = generated[b]
    return results

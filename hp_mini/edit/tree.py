"""Prefix-tree decoding: the tokens that prompts share run through the model once.

:func:`hp_mini.generate` takes this path with ``share_prefixes=True``. The text
prompts are put in a prefix tree (:func:`prefix_tree`): a token shared by
several prompts (a few-shot prefix, a common question opening) is one node. One
forward pass runs the whole tree, with an attention mask that lets every node
see only itself and its ancestors and with each node's depth as its position.
Each prompt's key/value cache is then gathered along its path, and the prompts
decode greedily together (:func:`generate_tree`), leaving the batch as they
finish.

Not every model can: :func:`tree_support` says how one takes its cache (the
keyword ``cache`` from transformers 5.24, ``past_key_values`` before) or why it
cannot, found once per model from its configuration and a three-token probe.
:func:`beyond_window` says when prompts outgrow a sliding window.

Example
-------
>>> from hp_mini.edit.tree import prefix_tree
>>> tokens, depth, parent, paths = prefix_tree([[1, 2, 3], [1, 2, 4]])
>>> tokens, depth, parent, paths
([1, 2, 3, 4], [0, 1, 2, 2], [-1, 0, 1, 1], [[0, 1, 2], [0, 1, 3]])
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hp_mini.model.inputs import model_device

__all__ = ["TreeSupport", "beyond_window", "generate_tree", "prefix_tree", "tree_log_probs", "tree_support"]


# The keyword under which a decoder's forward pass takes its key/value cache:
# ``cache`` from transformers 5.24, ``past_key_values`` before. Which one a model
# uses is found by trying (see _probe_tree), newest first, so the deprecated name
# is never passed to a model that takes the new one.
_CACHE_KEYWORDS = ("cache", "past_key_values")


@dataclass(frozen=True)
class TreeSupport:
    """Whether a model can take the shared-prefix path, and how to call it.

    Attributes
    ----------
    cache_keyword : str or None
        The keyword its forward pass takes the key/value cache under; None when
        it cannot take the path.
    logits_to_keep : bool
        Whether it takes ``logits_to_keep`` as a tensor of positions.
    reason : str or None
        Why it cannot, when ``cache_keyword`` is None.
    window : int or None
        The shortest sliding window, if any layer has one.
    """

    cache_keyword: str | None = None
    logits_to_keep: bool = False
    reason: str | None = None
    window: int | None = None


_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def tree_support(model: nn.Module) -> TreeSupport:
    """How ``model`` runs the shared-prefix path, or why it cannot; found once per model.

    The answer is kept for the model until its attention kernel or sliding
    window changes.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    TreeSupport
    """
    text = _text_config(getattr(model, "config", None))
    key = (getattr(text, "_attn_implementation", None), getattr(text, "sliding_window", None))
    known = _SUPPORT.get(model)
    if known is not None and known[0] == key:
        return known[1]
    support = _config_reason(model)
    if support.reason is None:
        support = _probe_tree(model, support.window)
    _SUPPORT[model] = (key, support)
    return support


def _config_reason(model: nn.Module) -> TreeSupport:
    """What the configuration alone rules out (``reason``), and the sliding window if any."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        return TreeSupport(reason=f"{name} has no Hugging Face config")
    text = _text_config(config)
    if getattr(text, "is_encoder_decoder", False):
        return TreeSupport(reason=f"{name} is an encoder-decoder model")
    kernel = getattr(text, "_attn_implementation", None)
    if kernel not in ("eager", "sdpa"):
        # the tree's attention mask is an arbitrary 4D mask, which other kernels ignore
        return TreeSupport(
            reason=f"{name} uses the attention kernel {kernel!r}, which ignores the prefix tree's 4D mask; "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    # Sliding-window layers see the whole prompt in the tree pass; that is what
    # they see anyway as long as prompt and continuation fit in the window,
    # which generate() checks per call (beyond_window).
    layer_types = getattr(text, "layer_types", None)
    window = getattr(text, "sliding_window", None)
    if layer_types is not None:
        other = sorted({t for t in layer_types if t not in ("full_attention", "sliding_attention")})
        if other:
            return TreeSupport(reason=f"{name} has {', '.join(other)} layers, which the prefix tree cannot mask")
        if "sliding_attention" not in layer_types:
            window = None
    if window is not None and not (isinstance(window, int) and window > 0):
        return TreeSupport(reason=f"{name} has a sliding window of {window!r}, which the prefix tree cannot mask")
    return TreeSupport(window=window)


def beyond_window(model: nn.Module, support: TreeSupport, ids: list[list[int]], max_new_tokens: int) -> str | None:
    """Why the prompts cannot share prefixes under a sliding window, or None.

    Parameters
    ----------
    model : nn.Module
        The model, for the message.
    support : TreeSupport
        From :func:`tree_support`.
    ids : list of list of int
        The prompts' token ids.
    max_new_tokens : int

    Returns
    -------
    str or None
        None when every prompt and its continuation fit in the window (or
        there is none).
    """
    if support.window is None:
        return None
    longest = max(len(s) for s in ids) + max_new_tokens
    if longest <= support.window:
        return None
    return (
        f"{type(model).__name__} has sliding-window layers (window {support.window} tokens) and a prompt plus "
        "max_new_tokens do not fit in it; the tree pass would show such a layer more than its window"
    )


def _probe_tree(model: nn.Module, window: int | None = None) -> TreeSupport:
    """Run the smallest prefix tree and compare it with the ordinary forward pass.

    The tree holds the prompts ``[a, b]`` and ``[a, c]``: three tokens at
    positions 0, 1, 1, with ``c`` masked from ``b``. The path is usable when, for
    one of the cache keywords, the model fills the cache it is given with those
    three tokens in layers that can be gathered, and the logits at ``c`` equal the
    ordinary forward pass over ``[a, c]``.
    """
    from transformers import DynamicCache

    name = type(model).__name__
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    vocab = int(getattr(_text_config(model.config), "vocab_size", 4) or 4)
    a, b, c = (1 % vocab, 2 % vocab, 3 % vocab)
    ids = torch.tensor([[a, b, c]], device=device)
    positions = torch.tensor([[0, 1, 1]], device=device)
    mask = _tree_mask([-1, 0, 0], dtype).to(device)
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
                return _judge_probe(name, cache, out.logits[0], plain, keep, keyword, window, dtype)
    return TreeSupport(
        reason=f"{name}'s forward pass takes no key/value cache under any of {', '.join(_CACHE_KEYWORDS)} "
        f"({'; '.join(failures)})"
    )


def _judge_probe(name, cache, logits, plain, keep, keyword, window, dtype) -> TreeSupport:
    """The probe's verdict once the tree pass filled the cache: gatherable layers, and the same logits."""
    from transformers.cache_utils import DynamicLayer

    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        kinds = sorted({type(layer).__name__ for layer in cache.layers})
        return TreeSupport(reason=f"{name} keeps {', '.join(kinds)} cache layers, which cannot be gathered per prompt")
    kept = keep and logits.shape[0] == 1
    got = (logits[0] if kept else logits[2]).float()
    error = float((got - plain).abs().max())
    tolerance = (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2) * max(1.0, float(plain.abs().max()))
    if not error <= tolerance:
        return TreeSupport(
            reason=f"{name}'s logits in a prefix-tree pass differ from its ordinary forward pass by "
            f"{error:.3g} (its attention may ignore the tree's 4D mask or position ids)"
        )
    return TreeSupport(cache_keyword=keyword, logits_to_keep=kept, window=window)


def prefix_tree(seqs: list[list[int]]) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """The prefix tree of token sequences.

    Parameters
    ----------
    seqs : list of list of int

    Returns
    -------
    tokens, depth, parent, paths
        One entry per node for the first three: its token, its depth (its
        position in every sequence through it) and its parent's index (-1 for
        a root); ``paths`` gives each sequence's nodes, in order.
    """
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


def _tree_mask(parent: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The additive ``[1, 1, n, n]`` attention mask of a tree: every node sees itself and its ancestors."""
    n = len(parent)
    sees = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parent):  # row i of the mask is its parent's row plus i
        if p >= 0:
            sees[i] = sees[p]
        sees[i, i] = True
    return torch.zeros(1, 1, n, n, dtype=dtype).masked_fill_(~sees, torch.finfo(dtype).min)


def generate_tree(
    model: nn.Module,
    ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    finished: Callable[[list[int]], bool],
    support: TreeSupport,
) -> list[list[int]]:
    """Greedy continuations of tokenised prompts, their shared tokens run once per batch.

    Parameters
    ----------
    model : nn.Module
        A model that :func:`tree_support` accepts.
    ids : list of list of int
        Each prompt's token ids (none empty).
    max_new_tokens : int
    batch_size : int
        Prompts per prefix tree.
    finished : callable ``(tokens) -> bool``
        Whether a continuation has ended, its last token included.
    support : TreeSupport
        ``tree_support(model)``.

    Returns
    -------
    list of list of int
        The new tokens of each prompt, in the order of ``ids``.
    """
    order = sorted(range(len(ids)), key=lambda i: ids[i])  # neighbours share the longest prefixes
    results: list[list[int]] = [[] for _ in ids]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        logits, cache, attn, position = _run_tree(model, [ids[i] for i in rows], support)
        generated = _decode(model, cache, logits.argmax(-1), attn, position, max_new_tokens, finished, support)
        for b, i in enumerate(rows):
            results[i] = generated[b]
    return results


def tree_log_probs(model: nn.Module, seqs: list[list[int]], starts: list[int], support: TreeSupport) -> list[torch.Tensor]:
    """The log-probability of each sequence's tokens from ``starts[i]`` on, in one pass over their prefix tree.

    A token's log-probability is read from the logits at its parent node, so
    the tokens that sequences share (a few-shot prefix) run through the model
    once; this is what :func:`hp_mini.experiments.evaluators.continuation_nll`
    uses to score continuations after long prompts.

    Parameters
    ----------
    model : nn.Module
        A model that :func:`tree_support` accepts.
    seqs : list of list of int
        Token ids.
    starts : list of int
        For each sequence, the first position to score (at least 1, below its length).
    support : TreeSupport
        ``tree_support(model)``.

    Returns
    -------
    list of torch.Tensor
        For each sequence, the float32 log-probabilities of ``seqs[i][starts[i]:]``, on the CPU.
    """
    if len(starts) != len(seqs) or any(not 1 <= b < len(s) for s, b in zip(seqs, starts)):
        raise ValueError("every start must be at least 1 and below its sequence's length")
    tokens, depth, parent, paths = prefix_tree(seqs)
    wanted = [[paths[i][j - 1] for j in range(b, len(s))] for i, (s, b) in enumerate(zip(seqs, starts))]
    need = sorted({node for nodes in wanted for node in nodes})
    row = {node: r for r, node in enumerate(need)}
    logits = _tree_forward(model, (tokens, depth, parent), need, support)
    logp = logits.float().log_softmax(-1).cpu()
    return [logp[[row[n] for n in nodes], torch.tensor(s[b:])] for nodes, s, b in zip(wanted, seqs, starts)]


def _tree_forward(model: nn.Module, tree, keep: list[int], support: TreeSupport, cache=None) -> torch.Tensor:
    """One forward pass over a prefix tree ``(tokens, depth, parent)``; the logits at the nodes ``keep``.

    With ``cache`` (a ``DynamicCache``), the pass fills it; without, it keeps none.
    """
    tokens, depth, parent = tree
    device = model_device(model)
    rows = torch.tensor(keep, device=device)
    kwargs = {"logits_to_keep": rows} if support.logits_to_keep else {}
    if cache is not None:
        kwargs[support.cache_keyword] = cache
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([tokens], device=device),
            position_ids=torch.tensor([depth], device=device),
            attention_mask=_tree_mask(parent, next(model.parameters()).dtype).to(device),
            use_cache=cache is not None,
            **kwargs,
        )
    return out.logits[0] if support.logits_to_keep else out.logits[0, rows]


def _run_tree(model: nn.Module, seqs: list[list[int]], support: TreeSupport):
    """One forward pass over the prefix tree of ``seqs``.

    Returns the logits at each sequence's last token, the key/value cache
    gathered per sequence (left-padded), its attention mask, and each sequence's
    next position.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    device = model_device(model)
    tokens, depth, parent, paths = prefix_tree(seqs)
    cache = DynamicCache()
    logits = _tree_forward(model, (tokens, depth, parent), [path[-1] for path in paths], support, cache)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):  # pragma: no cover - probed by tree_support
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
    return logits, cache, attn, lengths.to(device)


def _decode(model, cache, next_tokens, attn, position, max_new_tokens, finished, support) -> list[list[int]]:
    """Greedy decoding from gathered caches; a row leaves the batch when its continuation has finished."""
    device = model_device(model)
    active = list(range(len(next_tokens)))
    generated: list[list[int]] = [[] for _ in active]
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
                **{support.cache_keyword: cache},
                **({"logits_to_keep": 1} if support.logits_to_keep else {}),
            )
        next_tokens = out.logits[:, -1].argmax(-1)
        position = position + 1
    return generated

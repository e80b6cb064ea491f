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
    context (no sliding window); other models, and images, take the ordinary
    path.

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

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .inputs import _tokenizer_of, encode, ensure_pad_token, model_device

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
        Length limit of each continuation.
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
        Text prompts only; models with sliding-window attention, or with an
        attention kernel other than ``"eager"`` or ``"sdpa"``, take the
        ordinary path.

    Returns
    -------
    list of str, one per prompt.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; give one image per prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tok = _tokenizer_of(tokenizer_or_processor)
    if chat:
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    if not prompts:
        return []
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

    if share_prefixes and images is None and _tree_ready(model):
        new_tokens = _generate_tree(model, tok, prompts, max_new_tokens, batch_size, finished)
    else:
        new_tokens = _generate_padded(
            model, tokenizer_or_processor, tok, prompts, images, max_new_tokens, batch_size, finished, stops
        )
    return [tok.decode(t, skip_special_tokens=skip_special_tokens) for t in new_tokens]


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


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _tree_ready(model: nn.Module) -> bool:
    """A Hugging Face causal LM whose layers all attend to the full context."""
    config = getattr(model, "config", None)
    if config is None or not all(_accepts(model, n) for n in ("position_ids", "past_key_values", "attention_mask")):
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "is_encoder_decoder", False):
        return False
    if getattr(text, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False  # the tree's attention mask is an arbitrary 4D mask, which other kernels ignore
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return getattr(text, "sliding_window", None) is None


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


def _generate_tree(model, tok, prompts, max_new_tokens, batch_size, finished):
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    device = model_device(model)
    dtype = next(model.parameters()).dtype
    ids = tok(prompts)["input_ids"]
    if any(len(s) == 0 for s in ids):
        raise ValueError("every prompt needs at least one token")
    order = sorted(range(len(ids)), key=lambda i: ids[i])  # neighbours share the longest prefixes
    keep_arg = _accepts(model, "logits_to_keep")
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
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([tokens], device=device),
                position_ids=torch.tensor([depth], device=device),
                attention_mask=mask.to(device),
                past_key_values=DynamicCache(config=model.config),
                use_cache=True,
                **kwargs,
            )
        logits = out.logits[0] if keep_arg else out.logits[0, ends.to(device)]
        cache = out.past_key_values
        if not all(type(layer) is DynamicLayer for layer in cache.layers):  # pragma: no cover - guarded by _tree_ready
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
                    past_key_values=cache,
                    use_cache=True,
                    **({"logits_to_keep": 1} if keep_arg else {}),
                )
            next_tokens = out.logits[:, -1].argmax(-1)
            position = position + 1
        for b, i in enumerate(rows):
            results[i] = generated[b]
    return results

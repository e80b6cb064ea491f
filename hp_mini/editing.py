"""Scale the output of chosen heads during forward passes and generation.

:func:`scale_heads` multiplies head ``h``'s output ``z_h`` (and so its
contribution ``x_h = W_O[h] z_h``) by ``alpha`` at every position of every
forward pass inside the ``with`` block, so later layers see the change too:
``alpha = -1`` inverts a head (the paper's suppression), ``alpha = 0`` ablates
it and ``alpha = 5`` enhances it.

Example
-------
>>> import torch, hp_mini
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128,
...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
>>> ids = torch.tensor([[1, 5, 7]])
>>> with hp_mini.scale_heads(model, {(1, 2): -1.0, (0, 0): 5.0}):
...     edited = model(ids).logits
>>> bool(torch.equal(model(ids).logits, edited))   # hooks are gone after the block
False
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .heads import LayerHeads, attention_heads, head_label

__all__ = ["scale_heads"]

Head = tuple[int, int]


def _validate(edits: Mapping[Head, float], sites: list[LayerHeads]) -> dict[int, dict[int, float]]:
    by_layer: dict[int, dict[int, float]] = {}
    for key, alpha in edits.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"heads are (layer, head) pairs; got {key!r}")
        layer, head = int(key[0]), int(key[1])
        if not 0 <= layer < len(sites):
            raise IndexError(
                f"{head_label(layer, head)}: layer {layer} is out of range; valid layers are 0..{len(sites) - 1}"
            )
        n = sites[layer].n_heads
        if not 0 <= head < n:
            raise IndexError(f"{head_label(layer, head)}: head {head} is out of range; valid heads are 0..{n - 1}")
        alpha = float(alpha)
        if alpha != alpha or alpha in (float("inf"), float("-inf")):
            raise ValueError(f"{head_label(layer, head)}: alpha must be a finite number, got {alpha}")
        by_layer.setdefault(layer, {})[head] = alpha
    return by_layer


@contextlib.contextmanager
def scale_heads(
    model: nn.Module,
    edits: Mapping[Head, float],
    *,
    heads: list[LayerHeads] | None = None,
) -> Iterator[None]:
    """Multiply the chosen heads' outputs by ``alpha`` inside a ``with`` block.

    Parameters
    ----------
    model : nn.Module
        A model supported by :func:`attention_heads`.
    edits : mapping ``{(layer, head): alpha}``
        The heads to scale and by how much. ``alpha = 1`` leaves a head as it is
        (the logits stay bit-identical). Nested blocks that scale the same head
        multiply.
    heads : list of LayerHeads, optional
        The result of :func:`attention_heads`, for models found by hand.

    Notes
    -----
    The hooks sit on the input of each layer's output projection and are
    removed when the block exits, also when it raises.
    """
    sites = heads if heads is not None else attention_heads(model)
    by_layer = _validate(edits, sites)
    with contextlib.ExitStack() as stack:
        for layer, alphas in by_layer.items():
            alphas = {h: a for h, a in alphas.items() if a != 1.0}
            if not alphas:
                continue
            site = sites[layer]
            scale = torch.ones(site.n_heads)
            for h, a in alphas.items():
                scale[h] = a
            handle = site.module.register_forward_pre_hook(_scaler(site, scale))
            stack.callback(handle.remove)
        yield


def _scaler(site: LayerHeads, scale: torch.Tensor):
    def hook(module, args):
        z = args[0]
        s = scale.to(device=z.device, dtype=z.dtype)
        z = (site.split(z) * s[:, None]).reshape(z.shape)
        return (z, *args[1:])

    return hook

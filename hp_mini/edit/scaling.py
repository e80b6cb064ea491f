"""Scale the residual writes of chosen heads during forward passes and generation.

:func:`scale_heads` changes what head ``h`` adds to the residual stream from
``x_h`` to ``alpha x_h``, that is by exactly ``(alpha - 1) x_h``, at every
position of every forward pass inside the ``with`` block, so later layers see
the change too: ``alpha = -1`` inverts a head (the paper's suppression),
``alpha = 0`` ablates it and ``alpha = 5`` enhances it. ``x_h`` is the head's
exact residual write (:meth:`hp_mini.LayerHeads.contributions`), on pre-norm,
post-norm and scaled-residual layers alike.

An edit applies only to the forward passes of the thread that entered the
block (see :class:`hp_mini.model.hooks.Trace`): threads sharing one model each get
their own edits, and a thread outside any block gets the unedited model.

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
import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from hp_mini.checks import check_weights_loaded, renamed_keywords
from hp_mini.model.heads import attention_heads, check_heads_of
from hp_mini.model.hooks import Trace
from hp_mini.model.sites import Head, LayerHeads, head_label

__all__ = ["HeadScaling", "scale_heads"]



def _validate(edits, sites: list[LayerHeads]) -> dict[int, dict[int, float]]:
    if not isinstance(edits, Mapping):
        raise TypeError(
            f"edits must map heads to alphas, {{(layer, head): alpha}}, got a {type(edits).__name__}; "
            "to scale a list of heads by one alpha write {head: alpha for head in heads}"
        )
    by_layer: dict[int, dict[int, float]] = {}
    for key, alpha in edits.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"heads are (layer, head) pairs; got {key!r}")
        for part, name in zip(key, ("layer", "head")):
            if isinstance(part, bool) or not isinstance(part, numbers.Integral):
                raise TypeError(f"head {key!r}: the {name} must be an integer, got {part!r}")
        layer, head = int(key[0]), int(key[1])
        if not 0 <= layer < len(sites):
            raise IndexError(
                f"{head_label(layer, head)}: layer {layer} is out of range; valid layers are 0..{len(sites) - 1}"
            )
        n = sites[layer].n_heads
        if not 0 <= head < n:
            raise IndexError(f"{head_label(layer, head)}: head {head} is out of range; valid heads are 0..{n - 1}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"{head_label(layer, head)}: alpha must be a number, got {alpha!r}")
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"{head_label(layer, head)}: alpha must be a finite number, got {alpha}")
        by_layer.setdefault(layer, {})[head] = alpha
    return by_layer


class HeadScaling:
    """The edit made by :func:`scale_heads`; active only inside a ``with`` block.

    Entering installs the hooks and exiting removes them. The hooks act only
    in the thread that entered the block. An object that is never entered
    warns when it is garbage-collected and refuses to be used as a flag;
    entering one that is already active raises.
    """

    def __init__(self, model: nn.Module, by_layer: dict[int, dict[int, float]], sites: list[LayerHeads], mode: str):
        self.model, self.by_layer, self.sites, self.mode = model, by_layer, sites, mode
        self._stack: contextlib.ExitStack | None = None
        self._entered = False

    def __enter__(self) -> HeadScaling:
        if self._stack is not None:
            raise RuntimeError("this scale_heads block is already active; nest a new scale_heads(...) instead")
        self._entered = True
        stack = contextlib.ExitStack()
        try:
            for layer, alphas in self.by_layer.items():
                alphas = {h: a for h, a in alphas.items() if a != 1.0}
                if alphas:
                    self._hook(stack, self.sites[layer], alphas)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _hook(self, stack: contextlib.ExitStack, site: LayerHeads, alphas: dict[int, float]) -> None:
        scale = torch.ones(site.n_heads)
        for h, a in alphas.items():
            scale[h] = a
        if site.post_norm is None or self.mode == "pre_norm":
            # The write is linear in z: scaling z_h scales x_h.
            def edit_input(z):
                s = scale.to(device=z.device, dtype=z.dtype)
                return (site.split(z) * s[:, None]).reshape(z.shape)

            stack.enter_context(Trace(site.module, edit_input=edit_input))
            return
        # Post-norm: add (alpha - 1) x_h to the norm's output, x_h computed from the z it saw.
        seen = stack.enter_context(Trace(site.module, retain_input=True))
        delta = (scale - 1.0)[:, None]

        def edit_output(out, _):
            x = site.contributions(seen.input)  # [..., H, d_model], float32
            change = (x * delta.to(x.device)).sum(-2)
            return out + change.to(out.dtype)

        stack.enter_context(Trace(site.post_norm.module, edit_output=edit_output))

    def __bool__(self) -> bool:
        raise TypeError("scale_heads(...) is a context manager: use it as `with hp_mini.scale_heads(...):`")

    def __del__(self) -> None:
        if not getattr(self, "_entered", True):
            warnings.warn(
                "scale_heads(...) was created but never entered, so it edited nothing; "
                "use it as `with hp_mini.scale_heads(model, {(layer, head): alpha}):`",
                RuntimeWarning,
                stacklevel=2,
            )


@renamed_keywords(heads="sites")
def scale_heads(
    model: nn.Module,
    edits: Mapping[Head, float],
    *,
    sites: list[LayerHeads] | None = None,
    mode: Literal["residual", "pre_norm"] = "residual",
) -> HeadScaling:
    """Scale the chosen heads' residual writes by ``alpha`` inside a ``with`` block.

    Parameters
    ----------
    model : nn.Module
        A model supported by :func:`hp_mini.attention_heads`.
    edits : mapping ``{(layer, head): alpha}``
        The heads to scale and by how much. ``alpha = 1`` leaves a head as it is
        (the logits stay bit-identical). To scale a list of heads by one
        alpha, pass ``{head: alpha for head in heads}``.
    sites : list of LayerHeads, optional
        The result of :func:`hp_mini.attention_heads` for this model, for
        models found by hand (``heads=`` is its old name, deprecated).
    mode : {"residual", "pre_norm"}, default "residual"
        ``"residual"`` changes the residual stream by exactly
        ``(alpha - 1) x_h`` on every architecture. ``"pre_norm"`` multiplies
        ``z_h`` at the projection's input, as code that edits ``o_proj``'s
        input does; on post-norm layers (Gemma 2, Gemma 3, OLMo 2) the norm
        then divides by the rms of the *edited* attention output, so the head's
        write changes by a token-dependent factor and every other head of the
        layer is rescaled too. On other layers both modes are the same edit.

    Returns
    -------
    HeadScaling
        A context manager; nothing happens until it is entered.

    Raises
    ------
    ValueError
        For a model whose parameters are on the meta device (no values), a
        non-finite alpha or an unknown ``mode``.
    TypeError, IndexError
        For edits that are not ``{(layer, head): alpha}`` with heads of the
        model.

    Notes
    -----
    The hooks are removed when the block exits, also when it raises. Nested
    blocks that scale the same head multiply on pre-norm layers (and in
    ``"pre_norm"`` mode); on post-norm layers in ``"residual"`` mode their
    changes ``(alpha - 1) x_h`` add.

    The edit applies only in the thread that entered the block. Other threads
    running the same model meanwhile see it unedited, or with the edits of
    their own blocks: two threads each in their own block get each their own
    edit, never both. Run the model (``generate`` included) in the thread
    that enters the block.

    Examples
    --------
    >>> with hp_mini.scale_heads(model, {(3, 1): -1.0}):    # doctest: +SKIP
    ...     text = hp_mini.generate(model, tokenizer, ["Name a country:"])
    """
    if mode not in ("residual", "pre_norm"):
        raise ValueError(f"mode must be 'residual' or 'pre_norm', got {mode!r}")
    check_weights_loaded(model, "scale_heads")
    sites = attention_heads(model) if sites is None else check_heads_of(model, sites)
    by_layer = _validate(edits, sites)
    return HeadScaling(model, by_layer, sites, mode)



"""Where the attention heads are, and what each one adds to the residual stream.

Every attention layer ends with an output projection whose *input* is the
concatenation of the heads' outputs ``z_h`` (``d_head`` wide each): the
projection computes ``o = sum_h W_O[h] z_h + b``. What the layer adds to the
residual stream depends on what sits between ``o`` and the residual add
(declared per family in :mod:`hp_mini.model.architectures`):

- pre-norm layers (Llama, Mistral, Qwen, Gemma, Phi-3, GPT-2, GPT-NeoX): ``o``
  itself, so head ``h`` adds ``x_h = W_O[h] z_h``;
- layers with a constant multiplier ``m`` (Granite): ``m o``, so ``x_h = m W_O[h] z_h``;
- post-norm layers (Gemma 2, Gemma 3, OLMo 2): ``g * o / rms(o)``, with the
  norm's gain ``g`` and ``rms(o) = sqrt(mean(o^2) + eps)`` over the *whole*
  attention output at that token, so ``x_h = g * W_O[h] z_h / rms(o)``.

In every case the heads' *contributions* ``x_h`` plus the bias's share
(``b`` through the same factors) sum exactly to what the layer adds. The bias
belongs to no head. A parallel block (GPT-NeoX) adds the attention output
directly too; only what its MLP reads differs.

Example
-------
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> import hp_mini
>>> cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
>>> sites = hp_mini.attention_heads(LlamaForCausalLM(cfg))
>>> len(sites), sites[0].n_heads, sites[0].d_head, tuple(sites[0].W_O.shape)
(2, 4, 16, (4, 64, 16))
"""

from __future__ import annotations

import numbers
import operator
from typing import Literal

import torch
from torch import nn

from hp_mini.model.architectures import (
    Norm,
    heads_function,
    model_parts,
    unknown_model_message,
)
from hp_mini.model.sites import LayerHeads

__all__ = ["attention_heads", "check_heads_of"]


def _layout_of(module: nn.Module, layout: str | None, where: str) -> str:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"{where}: the output projection {type(module).__name__} has no 2-D weight")
    is_conv1d = type(module).__name__ == "Conv1D"
    if layout is None:
        if isinstance(module, nn.Linear):
            return "out_in"
        if is_conv1d:
            return "in_out"
        raise ValueError(
            f"{where}: cannot tell how {type(module).__name__} stores its weight; pass layout='out_in' "
            "(weight [d_model, n_heads * d_head], as nn.Linear) or layout='in_out' (as GPT-2's Conv1D)"
        )
    if layout not in ("out_in", "in_out"):
        raise ValueError(f"layout must be 'out_in' (nn.Linear) or 'in_out' (Conv1D), got {layout!r}")
    if (layout == "out_in" and is_conv1d) or (layout == "in_out" and isinstance(module, nn.Linear)):
        right = "in_out" if is_conv1d else "out_in"
        raise ValueError(f"{where}: layout={layout!r} does not fit a {type(module).__name__}; pass layout={right!r}")
    return layout


def _check_n_heads(n_heads, declared: int | None) -> int:
    if isinstance(n_heads, bool) or not isinstance(n_heads, numbers.Integral):
        raise TypeError(f"n_heads must be a positive integer, got {n_heads!r}")
    n_heads = int(n_heads)
    if n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads}")
    if declared is not None and n_heads != declared:
        raise ValueError(
            f"n_heads={n_heads} disagrees with the model's config, which declares {declared} query heads; "
            "pass the config's number or leave n_heads out"
        )
    return n_heads


def _build(
    modules: list[nn.Module],
    n_heads: int,
    layout: str | None,
    d_model: int | None,
    post_norms: list[Norm | None] | None = None,
    multiplier: float = 1.0,
) -> list[LayerHeads]:
    sites = []
    for i, module in enumerate(modules):
        lay = _layout_of(module, layout, f"layer {i}")
        w = module.weight
        out_features, in_features = w.shape if lay == "out_in" else w.shape[::-1]
        if d_model is not None and out_features != d_model:
            raise ValueError(
                f"layer {i}: {type(module).__name__} writes {out_features} features but the residual stream "
                f"has {d_model}; out_proj must be the attention *output* projection (e.g. o_proj, not v_proj), "
                "and layout must say how its weight is stored"
            )
        if in_features % n_heads:
            raise ValueError(
                f"layer {i}: the output projection takes {in_features} features, "
                f"which is not a multiple of {n_heads} heads"
            )
        norm = post_norms[i] if post_norms is not None else None
        sites.append(LayerHeads(i, module, n_heads, in_features // n_heads, lay, norm, multiplier))  # type: ignore[arg-type]
    return sites


def _declared(config, keys) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def attention_heads(
    model: nn.Module,
    *,
    layers: str | None = None,
    out_proj: str | None = None,
    n_heads: int | None = None,
    layout: Literal["out_in", "in_out"] | None = None,
) -> list[LayerHeads]:
    """Find the attention heads of a model, one :class:`LayerHeads` per layer.

    Parameters
    ----------
    model : nn.Module
        A model with an architecture declaration (see
        :func:`hp_mini.model_parts`): Llama, Mistral, SmolLM2, Qwen2, Qwen3,
        Gemma, Gemma 2, Gemma 3, OLMo 2, Granite, Phi-3, GPT-2, GPT-NeoX/Pythia,
        and the language model inside LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
        Gemma 3 and Idefics3/SmolVLM.
    layers, out_proj, n_heads, layout : optional
        For other models, by hand: the attribute path from ``model`` to the
        list of layers, the path from one layer to the output projection
        (whose input is the concatenation of the heads), the number of query
        heads (checked against the config when it declares one) and how the
        projection stores its weight (``"out_in"`` for ``nn.Linear``,
        ``"in_out"`` for GPT-2's ``Conv1D``; read from the class by default).
        Heads found by hand are treated as pre-norm: declare post-norms and
        multipliers with :func:`register_architecture`.

    Returns
    -------
    list[LayerHeads]
        One entry per layer, in order.

    Raises
    ------
    NotImplementedError
        For an unknown architecture, naming its class and the registration call.
    ValueError, TypeError
        For by-hand arguments that do not describe the output projection.
    """
    if hasattr(model, "hp_mini_heads"):
        # Models that list their own heads.
        return model.hp_mini_heads()
    listing = heads_function(model) if layers is None and out_proj is None else None
    if listing is not None:  # models without a Hugging Face config (open_clip)
        return listing(model)
    config = getattr(model, "config", None)
    if layers is not None or out_proj is not None or layout is not None:
        if layers is None or out_proj is None:
            raise ValueError("pass both `layers` and `out_proj` (and `n_heads` if the config has none)")
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        declared = _declared(text_config, ("num_attention_heads", "n_head", "num_heads"))
        if n_heads is None and declared is None:
            raise ValueError(f"{type(model).__name__}'s config declares no number of heads; pass n_heads=")
        heads = _check_n_heads(n_heads if n_heads is not None else declared, declared)
        d_model = _declared(text_config, ("hidden_size", "n_embd", "d_model"))
        try:
            layer_list = operator.attrgetter(layers)(model)
            modules = [operator.attrgetter(out_proj)(block) for block in layer_list]
        except AttributeError as err:
            raise AttributeError(f"{type(model).__name__}: {err}; check layers={layers!r} and out_proj={out_proj!r}") from None
        return _build(modules, heads, layout, d_model)
    if not hasattr(model, "config"):
        raise NotImplementedError(unknown_model_message(model, "no config"))
    parts = model_parts(model)
    heads = parts.n_heads if n_heads is None else _check_n_heads(n_heads, parts.n_heads)
    count = len(parts.layers)
    return _build(
        [parts.attention_output(i) for i in range(count)],
        heads,
        parts.architecture.layout,
        parts.d_model,
        [parts.post_attention_norm(i) for i in range(count)],
        parts.residual_multiplier,
    )


def check_heads_of(model: nn.Module, heads: list[LayerHeads]) -> list[LayerHeads]:
    """Return ``heads`` after checking that they are heads of ``model`` (not of another instance).

    Raises
    ------
    TypeError
        If ``heads`` is not a list of :class:`LayerHeads`.
    ValueError
        If a projection in ``heads`` is not a module of ``model``.
    """
    if isinstance(heads, LayerHeads) or not all(isinstance(s, LayerHeads) for s in heads):
        raise TypeError("sites= takes the list returned by hp_mini.attention_heads(model)")
    heads = list(heads)
    if not heads:
        raise ValueError("sites= is empty; pass hp_mini.attention_heads(model)")
    own = {id(m) for m in model.modules()}
    stray = [s.layer for s in heads if id(s.module) not in own]
    if stray:
        raise ValueError(
            f"sites= holds the heads of another model (layers {stray[:5]} are not modules of this "
            f"{type(model).__name__}); pass hp_mini.attention_heads(model) of the model you use"
        )
    return heads

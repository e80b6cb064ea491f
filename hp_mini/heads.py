"""Where the attention heads are: one :class:`LayerHeads` per layer.

Every attention layer ends with an output projection whose *input* is the
concatenation of the heads' outputs ``z_h`` (``d_head`` wide each).  The
projection computes ``sum_h W_O[h] z_h + b``, so head ``h`` writes
``x_h = W_O[h] z_h`` into the residual stream and the bias belongs to no head.
This module finds that projection for each supported architecture by explicit
dispatch on ``config.model_type`` and fails loudly, naming the class, on models
it does not know.

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

import operator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["LayerHeads", "attention_heads", "head_label", "register_architecture"]


def head_label(layer: int, head: int) -> str:
    """The label of a head, as used throughout the book: ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


@dataclass(frozen=True)
class LayerHeads:
    """The heads of one attention layer.

    Attributes
    ----------
    layer : int
        Index of the layer in the model.
    module : nn.Module
        The output projection. Its input ``[..., n_heads * d_head]`` is the
        concatenation of the heads' outputs ``z``.
    n_heads : int
        Number of (query) heads. With grouped-query attention this is the
        number of query heads, not of key/value heads.
    d_head : int
        Width of one head's output ``z_h``.
    layout : {"out_in", "in_out"}
        How ``module.weight`` is stored: ``"out_in"`` for ``nn.Linear``
        (``[d_model, n_heads * d_head]``), ``"in_out"`` for GPT-2's ``Conv1D``.
    """

    layer: int
    module: nn.Module
    n_heads: int
    d_head: int
    layout: Literal["out_in", "in_out"] = "out_in"

    @property
    def weight(self) -> torch.Tensor:
        """The projection as ``[d_model, n_heads * d_head]``."""
        w = self.module.weight
        return w if self.layout == "out_in" else w.T

    @property
    def d_model(self) -> int:
        return self.weight.shape[0]

    @property
    def W_O(self) -> torch.Tensor:
        """Per-head output matrices, ``[n_heads, d_model, d_head]``: ``x_h = W_O[h] @ z_h``."""
        w = self.weight
        return w.reshape(w.shape[0], self.n_heads, self.d_head).permute(1, 0, 2)

    @property
    def bias(self) -> torch.Tensor | None:
        """The projection's bias ``[d_model]`` (it belongs to no head), or ``None``."""
        return getattr(self.module, "bias", None)

    def split(self, z: torch.Tensor) -> torch.Tensor:
        """``[..., n_heads * d_head]`` -> ``[..., n_heads, d_head]``."""
        return z.reshape(*z.shape[:-1], self.n_heads, self.d_head)

    def contributions(self, z: torch.Tensor) -> torch.Tensor:
        """Per-head residual contributions ``x_h``.

        ``z`` is ``[..., n_heads * d_head]`` (the projection's input) or
        ``[..., n_heads, d_head]``; the result is ``[..., n_heads, d_model]``.
        Their sum over heads plus :attr:`bias` is the projection's output.
        """
        if z.shape[-1] == self.n_heads * self.d_head and (z.ndim < 2 or z.shape[-2] != self.n_heads):
            z = self.split(z)
        return torch.einsum("...hk,hdk->...hd", z.to(self.weight.dtype), self.W_O)


# --------------------------------------------------------------------------- #
# Explicit dispatch
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Spec:
    layers: str  # attribute path, from the *language model*, to the list of decoder layers
    out_proj: str  # attribute path, from one layer, to the output projection
    layout: Literal["out_in", "in_out"] = "out_in"


_LLAMA_LIKE = _Spec("model.layers", "self_attn.o_proj")

# Text architectures, keyed by ``config.model_type`` of the language model.
_TEXT: dict[str, _Spec] = {
    "llama": _LLAMA_LIKE,  # also SmolLM2
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": _Spec("transformer.h", "attn.c_proj", "in_out"),
    "gpt_neox": _Spec("gpt_neox.layers", "attention.dense"),
}

# Vision-language architectures: where the language model sits.
_MULTIMODAL: dict[str, str] = {
    "llava": "model.language_model",
    "llava_next": "model.language_model",
    "qwen2_vl": "model.language_model",
    "qwen2_5_vl": "model.language_model",
    "gemma3": "model.language_model",
    "idefics3": "model.text_model",
    "smolvlm": "model.text_model",
}

# The language model of a multimodal model is a bare decoder (no ``model.`` prefix).
_BARE_LAYERS = {"model.layers": "layers", "gpt_neox.layers": "layers", "transformer.h": "h"}

_QWEN_VL_TEXT = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2"}


def register_architecture(
    model_type: str,
    *,
    layers: str,
    out_proj: str,
    layout: Literal["out_in", "in_out"] = "out_in",
) -> None:
    """Teach :func:`attention_heads` a new text architecture.

    Parameters
    ----------
    model_type : str
        The ``config.model_type`` of the model.
    layers : str
        Attribute path from the model to its list of decoder layers, e.g.
        ``"model.layers"``.
    out_proj : str
        Attribute path from one layer to the attention output projection, e.g.
        ``"self_attn.o_proj"``. Its input must be the concatenation of the heads.
    layout : {"out_in", "in_out"}
        ``"out_in"`` for ``nn.Linear`` weights, ``"in_out"`` for GPT-2 ``Conv1D``.
    """
    _TEXT[model_type] = _Spec(layers, out_proj, layout)


def _n_heads(config) -> int:
    for key in ("num_attention_heads", "n_head", "num_heads"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} names no number of attention heads")


def _get(obj, path: str):
    try:
        return operator.attrgetter(path)(obj) if path else obj
    except AttributeError as err:
        raise AttributeError(
            f"{type(obj).__name__} has no attribute path {path!r}; pass the layers and the "
            "output projection by hand (see hp_mini.attention_heads)"
        ) from err


def _build(layer_list, out_proj: str, n_heads: int, layout: str) -> list[LayerHeads]:
    sites = []
    for i, block in enumerate(layer_list):
        module = _get(block, out_proj)
        in_features = module.weight.shape[1] if layout == "out_in" else module.weight.shape[0]
        if in_features % n_heads:
            raise ValueError(
                f"layer {i}: the output projection takes {in_features} features, "
                f"which is not a multiple of {n_heads} heads"
            )
        sites.append(LayerHeads(i, module, n_heads, in_features // n_heads, layout))  # type: ignore[arg-type]
    return sites


def attention_heads(
    model: nn.Module,
    *,
    layers: str | None = None,
    out_proj: str | None = None,
    n_heads: int | None = None,
) -> list[LayerHeads]:
    """Find the attention heads of a model, one :class:`LayerHeads` per layer.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face causal LM or vision-language model. Supported by
        dispatch on ``config.model_type``: Llama, Mistral, SmolLM2, Qwen2,
        Qwen3, Gemma, Gemma2, Gemma3, Phi-3, GPT-2, GPT-NeoX/Pythia, and the
        language model inside LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Gemma3
        and Idefics3/SmolVLM.
    layers, out_proj, n_heads : optional
        For other models: the attribute path from ``model`` to the list of
        layers, the path from one layer to the output projection (an
        ``nn.Linear`` whose input is the concatenation of the heads), and the
        number of query heads.

    Returns
    -------
    list[LayerHeads]
        One entry per layer, in order.

    Raises
    ------
    NotImplementedError
        For an unknown architecture, naming its class and the by-hand form.
    """
    if hasattr(model, "hp_mini_heads"):
        # Models built by hp_mini that are not Hugging Face decoders (e.g. CLIP).
        return model.hp_mini_heads()
    config = getattr(model, "config", None)
    if layers is not None or out_proj is not None:
        if layers is None or out_proj is None:
            raise ValueError("pass both `layers` and `out_proj` (and `n_heads` if the config has none)")
        heads = n_heads if n_heads is not None else _n_heads(config)
        return _build(_get(model, layers), out_proj, heads, "out_in")

    model_type = getattr(config, "model_type", None)
    if model_type in _MULTIMODAL:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
        text_type = _QWEN_VL_TEXT.get(model_type, getattr(text_config, "model_type", None))
        spec = _TEXT.get(text_type) or _TEXT.get(text_type.replace("_text", "") if text_type else "")
        if spec is None:
            raise NotImplementedError(_unknown(model, f"{model_type} with a {text_type} language model"))
        language_model = _get(model, _MULTIMODAL[model_type])
        return _build(
            _get(language_model, _BARE_LAYERS.get(spec.layers, spec.layers)),
            spec.out_proj,
            n_heads if n_heads is not None else _n_heads(text_config),
            spec.layout,
        )
    if model_type in _TEXT:
        spec = _TEXT[model_type]
        path = spec.layers
        if not _has(model, path):  # a bare decoder (AutoModel) rather than a *ForCausalLM
            path = _BARE_LAYERS.get(path, path)
        return _build(_get(model, path), spec.out_proj, n_heads or _n_heads(config), spec.layout)
    raise NotImplementedError(_unknown(model, f"model_type={model_type!r}"))


def _has(obj, path: str) -> bool:
    try:
        operator.attrgetter(path)(obj)
        return True
    except AttributeError:
        return False


def _unknown(model: nn.Module, what: str) -> str:
    return (
        f"hp_mini does not know where the attention heads of {type(model).__name__} ({what}) are. "
        "Pass them by hand, for example "
        "attention_heads(model, layers='model.layers', out_proj='self_attn.o_proj', n_heads=32), "
        "or register the architecture once with hp_mini.register_architecture(model_type, "
        "layers=..., out_proj=...). The output projection must be the module whose input is "
        "the concatenation of the heads' outputs."
    )

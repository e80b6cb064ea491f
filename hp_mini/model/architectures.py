"""Where things are inside a model: one declaration per architecture family.

Every structural fact hp_mini needs about a Hugging Face model is declared here,
once per family, in the style of TransformerLens's adapters and tuned-lens's
``model_surgery``:

- the decoder and its list of layers;
- each layer's attention output projection (``nn.Linear`` or GPT-2's ``Conv1D``),
  and what sits between it and the residual add: a post-attention norm
  (Gemma 2, Gemma 3, OLMo 2), a constant multiplier (Granite's
  ``residual_multiplier``), or a parallel block (GPT-NeoX);
- each layer's MLP and what sits after it;
- the final norm, with its gain convention (``w`` or ``1 + w``) and epsilon;
- the unembedding, with any logit scaling or soft-capping;
- for vision-language wrappers: where the language model sits, the image token
  and whether the forward pass needs ``token_type_ids``.

Norm conventions are read from the norm's behaviour (it is run once on a probe
vector), never from the name of the model type. :func:`model_parts` binds a
declaration to a model; everything else in hp_mini (heads, recording, editing,
dictionaries, chapters) reaches model internals through it.

Example
-------
>>> from transformers import Gemma2Config, Gemma2ForCausalLM
>>> import hp_mini
>>> cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=50,
...                    num_attention_heads=2, num_key_value_heads=1, head_dim=16)
>>> parts = hp_mini.model_parts(Gemma2ForCausalLM(cfg))
>>> parts.family, len(parts.layers), parts.final_norm.convention
('gemma2', 2, '1+w')
>>> parts.post_attention_norm(0).kind, parts.unembedding.softcap
('rms', 30.0)
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from hp_mini.model.open_clip import open_clip_heads

__all__ = [
    "Architecture",
    "ModelParts",
    "Norm",
    "Unembedding",
    "Wrapper",
    "model_parts",
    "register_architecture",
    "registered_architectures",
]

Layout = Literal["out_in", "in_out"]


# --------------------------------------------------------------------------- #
# Declarations
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Architecture:
    """The declaration of one text architecture family.

    Paths are attribute paths (``"model.layers"``); ``layers`` and
    ``final_norm`` start at the causal LM, the others at one decoder layer.

    Attributes
    ----------
    layers : str
        From the causal LM to its list of decoder layers. The part before the
        last dot is the decoder (``"model"`` for ``"model.layers"``); a bare
        decoder, or the language model inside a multimodal wrapper, is reached
        without it.
    out_proj : str
        From one layer to the attention output projection, whose input is the
        concatenation of the heads' outputs.
    layout : {"out_in", "in_out"}
        ``"out_in"`` for ``nn.Linear`` weights, ``"in_out"`` for GPT-2's ``Conv1D``.
    final_norm : str
        From the causal LM to the norm applied before the unembedding.
    mlp : str
        From one layer to its MLP.
    post_attention_norm : str or None
        From one layer to a norm applied to the attention output *before* the
        residual add (post-norm layers: Gemma 2, Gemma 3, OLMo 2).
    post_mlp_norm : str or None
        From one layer to a norm applied to the MLP output before the add.
    residual_multiplier : str or None
        Config attribute whose value multiplies the attention and MLP outputs
        before the add (Granite).
    parallel : str or bool
        Whether attention and MLP read the same residual (GPT-J style), or the
        config attribute that says so (GPT-NeoX's ``use_parallel_residual``).
    logit_scale : str or None
        Config attribute that *divides* the logits (Granite's ``logits_scaling``).
    logit_softcap : str or None
        Config attribute ``c`` of a soft cap ``c * tanh(logits / c)``.
    """

    layers: str
    out_proj: str
    layout: Layout = "out_in"
    final_norm: str = "model.norm"
    mlp: str = "mlp"
    post_attention_norm: str | None = None
    post_mlp_norm: str | None = None
    residual_multiplier: str | None = None
    parallel: str | bool = False
    logit_scale: str | None = None
    logit_softcap: str | None = None

    @property
    def decoder(self) -> str:
        return self.layers.rpartition(".")[0]

    def inside_decoder(self, path: str) -> str:
        """``path`` (from the causal LM) as seen from the decoder."""
        prefix = self.decoder + "." if self.decoder else ""
        return path[len(prefix) :] if prefix and path.startswith(prefix) else path


@dataclass(frozen=True)
class Wrapper:
    """The declaration of a vision-language wrapper around a language model.

    Attributes
    ----------
    language_model : str
        From the wrapper to its language model (a bare decoder).
    token_type_ids : bool
        Whether the forward pass with images needs ``token_type_ids`` marking
        the image tokens (Gemma 3).
    """

    language_model: str
    token_type_ids: bool = False


_LLAMA = Architecture("model.layers", "self_attn.o_proj")
_POST_NORM = replace(_LLAMA, post_attention_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm")

_FAMILIES: dict[str, Architecture] = {
    "llama": _LLAMA,  # also SmolLM2
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen2_vl_text": _LLAMA,
    "qwen2_5_vl_text": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "phi3": _LLAMA,
    "gemma2": replace(_POST_NORM, logit_softcap="final_logit_softcapping"),
    "gemma3_text": replace(_POST_NORM, logit_softcap="final_logit_softcapping"),
    "olmo2": _POST_NORM,
    "granite": replace(_LLAMA, residual_multiplier="residual_multiplier", logit_scale="logits_scaling"),
    "gpt2": Architecture("transformer.h", "attn.c_proj", "in_out", final_norm="transformer.ln_f"),
    "gpt_neox": Architecture(
        "gpt_neox.layers", "attention.dense", final_norm="gpt_neox.final_layer_norm", parallel="use_parallel_residual"
    ),
}

_WRAPPERS: dict[str, Wrapper] = {
    "llava": Wrapper("model.language_model"),
    "llava_next": Wrapper("model.language_model"),
    "qwen2_vl": Wrapper("model.language_model"),
    "qwen2_5_vl": Wrapper("model.language_model"),
    "gemma3": Wrapper("model.language_model", token_type_ids=True),
    "idefics3": Wrapper("model.text_model"),
    "smolvlm": Wrapper("model.text_model"),
}


# Models that are not Hugging Face decoders: the class (module.qualname, so that the
# package need not be imported to declare it) -> the function that lists its heads.
_HEAD_FUNCTIONS: dict[str, Callable[[nn.Module], list]] = {
    "open_clip.model.CLIP": open_clip_heads,
    "open_clip.model.CustomTextCLIP": open_clip_heads,
}


def registered_architectures() -> dict[str, Literal["text", "wrapper", "heads"]]:
    """Every architecture declared so far, by name, with the kind of its declaration.

    Returns
    -------
    dict[str, {"text", "wrapper", "heads"}]
        Sorted by name: the ``config.model_type`` of each text family
        (``"text"``) and of each vision-language wrapper (``"wrapper"``), and the
        ``"module.QualName"`` of each class declared with a function listing its
        heads (``"heads"``), as :func:`register_architecture` declares them.

    Examples
    --------
    >>> from hp_mini.model.architectures import registered_architectures
    >>> registered_architectures()["llava"], registered_architectures()["open_clip.model.CLIP"]
    ('wrapper', 'heads')
    """
    kinds: dict[str, Literal["text", "wrapper", "heads"]] = {}
    kinds.update(dict.fromkeys(_FAMILIES, "text"))
    kinds.update(dict.fromkeys(_WRAPPERS, "wrapper"))
    kinds.update(dict.fromkeys(_HEAD_FUNCTIONS, "heads"))
    return dict(sorted(kinds.items()))


def heads_function(model: nn.Module) -> Callable[[nn.Module], list] | None:
    """The declared function listing the heads of a model without a Hugging Face config, or None."""
    for cls in type(model).__mro__:
        found = _HEAD_FUNCTIONS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return None


def register_architecture(
    model_type: str,
    *,
    layers: str | None = None,
    out_proj: str | None = None,
    layout: Layout = "out_in",
    final_norm: str | None = None,
    mlp: str = "mlp",
    post_attention_norm: str | None = None,
    post_mlp_norm: str | None = None,
    residual_multiplier: str | None = None,
    parallel: str | bool = False,
    logit_scale: str | None = None,
    logit_softcap: str | None = None,
    language_model: str | None = None,
    token_type_ids: bool = False,
    heads: Callable[[nn.Module], list] | None = None,
) -> None:
    """Declare a new architecture family, once, for all of hp_mini.

    A text family needs ``layers`` and ``out_proj`` (the other fields default
    to a pre-norm Llama-like block). A vision-language wrapper needs only
    ``language_model``; its language model's own family is looked up through
    ``config.get_text_config().model_type``.

    Parameters
    ----------
    model_type : str
        The ``config.model_type`` of the model.
    layers, out_proj, layout, final_norm, mlp, post_attention_norm, post_mlp_norm, \
residual_multiplier, parallel, logit_scale, logit_softcap
        See :class:`Architecture`. ``final_norm`` defaults to ``norm`` beside
        the layers (``"model.norm"`` for ``layers="model.layers"``).
    language_model, token_type_ids
        See :class:`Wrapper`.
    heads : callable, optional
        For a model without a Hugging Face config: ``model_type`` is then its
        class as ``"module.QualName"`` and ``heads(model)`` the function that
        lists its heads (a list of :class:`~hp_mini.LayerHeads`), as open_clip's
        CLIP is declared: ``register_architecture("open_clip.model.CLIP",
        heads=hp_mini.model.open_clip.open_clip_heads)``.

    Examples
    --------
    >>> import hp_mini
    >>> hp_mini.register_architecture("my_llama", layers="model.layers", out_proj="self_attn.o_proj")
    """
    if heads is not None:
        if not callable(heads):
            raise TypeError(f"heads must be a function that lists a model's heads, got {type(heads).__name__}")
        _HEAD_FUNCTIONS[model_type] = heads
        return
    if language_model is not None:
        if layers is not None or out_proj is not None:
            raise ValueError("a wrapper declares only language_model (and token_type_ids); its language model "
                             "is a family of its own")
        _WRAPPERS[model_type] = Wrapper(language_model, token_type_ids)
        return
    if layers is None or out_proj is None:
        raise ValueError("register_architecture needs layers= and out_proj= for a text family "
                         "(or language_model= for a vision-language wrapper)")
    if layout not in ("out_in", "in_out"):
        raise ValueError(f"layout must be 'out_in' (nn.Linear) or 'in_out' (Conv1D), got {layout!r}")
    decoder = layers.rpartition(".")[0]
    _FAMILIES[model_type] = Architecture(
        layers, out_proj, layout,
        final_norm if final_norm is not None else (f"{decoder}.norm" if decoder else "norm"),
        mlp, post_attention_norm, post_mlp_norm, residual_multiplier, parallel, logit_scale, logit_softcap,
    )


# --------------------------------------------------------------------------- #
# Norms and the unembedding
# --------------------------------------------------------------------------- #


def _eps_of(module: nn.Module) -> float | None:
    for key in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


@dataclass(frozen=True)
class Norm:
    """A normalisation layer, described by what it computes.

    ``kind="rms"``: ``y = gain * x / sqrt(mean(x^2) + eps)``;
    ``kind="layer"``: ``y = gain * (x - mean x) / sqrt(var(x) + eps) + bias``.

    Attributes
    ----------
    module : nn.Module
        The model's own norm.
    kind : {"rms", "layer"}
    convention : {"w", "1+w", "none"}
        How the stored weight ``w`` becomes the gain: ``w`` (Llama, OLMo 2,
        Gemma 3n), ``1 + w`` (Gemma, Gemma 2, Gemma 3, VaultGemma), or no
        weight at all. Found by running the norm on a probe vector.
    eps : float
    """

    module: nn.Module
    kind: Literal["rms", "layer"]
    convention: Literal["w", "1+w", "none"]
    eps: float

    @classmethod
    def of(cls, module: nn.Module) -> Norm:
        """Describe ``module``, checking the description against the module itself.

        Raises
        ------
        NotImplementedError
            When the module computes neither an RMSNorm nor a LayerNorm.
        """
        name = type(module).__name__
        eps = _eps_of(module)
        if eps is None:
            raise NotImplementedError(f"{name} has no eps/variance_epsilon attribute; hp_mini cannot fold it")
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.LayerNorm):
            norm = cls(module, "layer", "w" if weight is not None else "none", eps)
        elif weight is None:  # an RMSNorm without a gain: the probe must come out as ones
            with torch.no_grad():
                probe = module.forward(torch.full((1, 8), 4.0)).float()  # forward(): no hooks run
            if not torch.allclose(probe, torch.ones_like(probe), rtol=1e-3):
                raise NotImplementedError(f"{name} does not compute an RMSNorm; hp_mini cannot fold it")
            norm = cls(module, "rms", "none", eps)
        else:
            d = weight.shape[-1]
            with torch.no_grad():
                probe = module.forward(torch.full((1, d), 4.0, dtype=weight.dtype, device=weight.device)).float()[0]
                w = weight.detach().float()
                off_w, off_1w = (probe - w).abs().max(), (probe - 1 - w).abs().max()
            tol = 0.02 * (1 + w.abs().max())
            if min(off_w, off_1w) > tol:
                raise NotImplementedError(f"{name} scales by neither w nor 1 + w; hp_mini cannot fold it")
            norm = cls(module, "rms", "w" if off_w <= off_1w else "1+w", eps)
        norm._check()
        return norm

    def _check(self) -> None:
        weight = getattr(self.module, "weight", None)
        if weight is None:
            return
        param = weight
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, weight.shape[-1], generator=g).to(param.device, param.dtype)
        with torch.no_grad():
            ours, theirs = self(x).float(), self.module.forward(x).float()
        tol = 1e-4 if param.dtype == torch.float32 else 5e-2
        if not torch.allclose(ours, theirs, rtol=tol, atol=tol * float(theirs.abs().max())):
            raise NotImplementedError(
                f"{type(self.module).__name__} does not compute a {self.kind} norm as hp_mini describes it; "
                "hp_mini cannot fold it"
            )

    @property
    def gain(self) -> torch.Tensor:
        """The effective gain ``[d_model]`` (``w`` or ``1 + w``), float32, detached."""
        w = getattr(self.module, "weight", None)
        if w is None:
            raise ValueError(f"{type(self.module).__name__} has no weight, so no gain to fold")
        w = w.detach().float()
        return 1 + w if self.convention == "1+w" else w

    @property
    def bias(self) -> torch.Tensor | None:
        """The LayerNorm's bias ``[d_model]`` (float32), or None."""
        b = getattr(self.module, "bias", None) if self.kind == "layer" else None
        return None if b is None else b.detach().float()

    def inverse_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token factor ``1 / sqrt(mean(x^2) + eps)`` (or of the centred ``x``), ``[..., 1]`` float32."""
        x = x.float()
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """What the norm computes, written out (float32)."""
        xf = x.float()
        if self.kind == "layer":
            xf = xf - xf.mean(-1, keepdim=True)
        y = xf * self.inverse_scale(x)
        if getattr(self.module, "weight", None) is not None:
            y = y * self.gain.to(y.device)
        if self.bias is not None:
            y = y + self.bias.to(y.device)
        return y


@dataclass(frozen=True)
class Unembedding:
    """The map from the normalised residual to logits.

    ``logits = softcap * tanh(scale * (h @ weight.T + bias) / softcap)``
    (without the ``tanh`` when ``softcap`` is None).

    Attributes
    ----------
    weight : Tensor ``[vocab, d_model]``
    bias : Tensor ``[vocab]`` or None
    scale : float
        Multiplies the logits (``1 / logits_scaling`` for Granite).
    softcap : float or None
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of normalised residuals ``h [..., d_model]``."""
        out = h.to(self.weight.dtype) @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        out = out * self.scale
        if self.softcap is not None:
            out = self.softcap * torch.tanh(out / self.softcap)
        return out


# --------------------------------------------------------------------------- #
# Binding a declaration to a model
# --------------------------------------------------------------------------- #


def _get(obj, path: str):
    try:
        return operator.attrgetter(path)(obj) if path else obj
    except AttributeError as err:
        raise AttributeError(
            f"{type(obj).__name__} has no attribute path {path!r}; its architecture declaration does not "
            "match it (see hp_mini.register_architecture)"
        ) from err


def _has(obj, path: str) -> bool:
    try:
        operator.attrgetter(path)(obj)
        return True
    except AttributeError:
        return False


def unknown_model_message(model: nn.Module, what: str) -> str:
    """The one error text for a model hp_mini has no declaration for."""
    return (
        f"hp_mini has no architecture declaration for {type(model).__name__} ({what}). Declare it once with "
        "hp_mini.register_architecture(model_type, layers='model.layers', out_proj='self_attn.o_proj', ...), "
        "or pass the heads by hand: hp_mini.attention_heads(model, layers=..., out_proj=..., n_heads=...)."
    )


@dataclass(frozen=True)
class ModelParts:
    """A model seen through its architecture declaration.

    Attributes
    ----------
    model : nn.Module
        The model as given (causal LM, bare decoder or vision-language wrapper).
    family : str
        The declared family of its language model (``"llama"``, ``"gemma3_text"``, ...).
    architecture : Architecture
    wrapper : Wrapper or None
    config : PretrainedConfig
        The language model's config.
    decoder : nn.Module
        The language model's decoder (the module holding the layers).
    """

    model: nn.Module
    family: str
    architecture: Architecture
    wrapper: Wrapper | None
    config: object
    decoder: nn.Module

    # -- layers ---------------------------------------------------------------- #
    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""
        return _get(self.decoder, self.architecture.inside_decoder(self.architecture.layers))

    def attention_output(self, layer: int) -> nn.Module:
        """Layer ``layer``'s attention output projection."""
        return _get(self.layers[layer], self.architecture.out_proj)

    def post_attention_norm(self, layer: int) -> Norm | None:
        """The norm between the attention output and the residual add, or None (pre-norm layers)."""
        path = self.architecture.post_attention_norm
        return None if path is None else Norm.of(_get(self.layers[layer], path))

    def attention_write(self, layer: int) -> nn.Module:
        """The module whose output, times :attr:`residual_multiplier`, is what the attention adds.

        The post-attention norm on post-norm layers, the output projection elsewhere.
        """
        path = self.architecture.post_attention_norm or self.architecture.out_proj
        return _get(self.layers[layer], path)

    @property
    def residual_multiplier(self) -> float:
        """The constant multiplying attention and MLP outputs before the add (1 for most families)."""
        key = self.architecture.residual_multiplier
        return 1.0 if key is None else float(getattr(self.config, key))

    @property
    def parallel(self) -> bool:
        """Whether attention and MLP read the same residual (their writes are still added separately)."""
        p = self.architecture.parallel
        return bool(getattr(self.config, p, False)) if isinstance(p, str) else bool(p)

    def mlp(self, layer: int) -> nn.Module:
        """Layer ``layer``'s MLP."""
        return _get(self.layers[layer], self.architecture.mlp)

    def mlp_write(self, layer: int) -> nn.Module:
        """The module whose output, times :attr:`residual_multiplier`, is what the MLP adds."""
        path = self.architecture.post_mlp_norm or self.architecture.mlp
        return _get(self.layers[layer], path)

    # -- reading out ------------------------------------------------------------ #
    @property
    def final_norm(self) -> Norm:
        """The norm applied to the residual stream before the unembedding."""
        return Norm.of(_get(self.decoder, self.architecture.inside_decoder(self.architecture.final_norm)))

    @property
    def unembedding(self) -> Unembedding:
        """The unembedding, with the logit scaling and soft cap the model applies."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is None or getattr(head, "weight", None) is None:
            raise NotImplementedError(f"{type(self.model).__name__} has no output embedding (lm_head) to unembed with")
        top = getattr(self.model, "config", None)
        scale_key, cap_key = self.architecture.logit_scale, self.architecture.logit_softcap
        # The model's own config decides: a wrapper (Gemma 3) applies no soft cap of its text config.
        divisor = getattr(top, scale_key, None) if scale_key else None
        cap = getattr(top, cap_key, None) if cap_key and self.wrapper is None else None
        return Unembedding(
            head.weight.detach(),
            None if getattr(head, "bias", None) is None else head.bias.detach(),
            1.0 / float(divisor) if divisor else 1.0,
            float(cap) if cap else None,
        )

    # -- inputs ------------------------------------------------------------------ #
    @property
    def image_token_id(self) -> int | None:
        """The id of the image placeholder token of a vision-language model, or None."""
        if self.wrapper is None:
            return None
        config = self.model.config
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        return None

    @property
    def needs_token_type_ids(self) -> bool:
        """Whether the forward pass with images needs ``token_type_ids`` (Gemma 3)."""
        return self.wrapper is not None and self.wrapper.token_type_ids

    @property
    def n_heads(self) -> int:
        """The number of query heads the config declares."""
        for key in ("num_attention_heads", "n_head", "num_heads"):
            value = getattr(self.config, key, None)
            if isinstance(value, int):
                return value
        raise ValueError(f"{type(self.config).__name__} names no number of attention heads")

    @property
    def d_model(self) -> int:
        """The width of the residual stream."""
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(self.config, key, None)
            if isinstance(value, int):
                return value
        return self.model.get_input_embeddings().weight.shape[1]


def model_parts(model: nn.Module) -> ModelParts:
    """Bind ``model`` to its architecture declaration.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face causal LM, its bare decoder (``AutoModel``), or a
        vision-language wrapper (LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
        Gemma 3, Idefics3/SmolVLM).

    Returns
    -------
    ModelParts

    Raises
    ------
    NotImplementedError
        For a model without a declaration: the message names its class and
        the :func:`register_architecture` call that declares it.
    """
    if isinstance(model, ModelParts):
        return model
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    wrapper = _WRAPPERS.get(model_type)
    if wrapper is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
        family = getattr(text_config, "model_type", None)
        if family not in _FAMILIES:
            raise NotImplementedError(unknown_model_message(model, f"{model_type} with a {family} language model"))
        return ModelParts(model, family, _FAMILIES[family], wrapper, text_config, _get(model, wrapper.language_model))
    if model_type not in _FAMILIES:
        raise NotImplementedError(unknown_model_message(model, f"model_type={model_type!r}"))
    arch = _FAMILIES[model_type]
    decoder = _get(model, arch.decoder) if arch.decoder and _has(model, arch.layers) else model
    return ModelParts(model, model_type, arch, None, config, decoder)

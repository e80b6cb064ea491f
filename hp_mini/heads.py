"""Where the attention heads are, and what each one adds to the residual stream.

Every attention layer ends with an output projection whose *input* is the
concatenation of the heads' outputs ``z_h`` (``d_head`` wide each): the
projection computes ``o = sum_h W_O[h] z_h + b``. What the layer adds to the
residual stream depends on what sits between ``o`` and the residual add
(declared per family in :mod:`hp_mini.architectures`):

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

import contextlib
import numbers
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .architectures import Norm, heads_function, model_parts, register_architecture, unknown_model_message
from .hooks import Trace
from .inputs import encode

__all__ = [
    "CopyScores",
    "LayerHeads",
    "attention_heads",
    "check_heads_of",
    "copy_scores",
    "head_label",
    "parse_head_label",
    "register_architecture",
]


def head_label(layer: int, head: int) -> str:
    """The label of a head, as used throughout the book: ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


def parse_head_label(label: str) -> tuple[int, int]:
    """The ``(layer, head)`` of a label ``"L{layer}H{head}"`` (the inverse of :func:`head_label`)."""
    match = re.fullmatch(r"\s*L(\d+)H(\d+)\s*", label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(f"{label!r} is not a head label: write L<layer>H<head>, e.g. 'L23H4'")
    return int(match[1]), int(match[2])


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
    post_norm : Norm or None
        The norm between the projection and the residual add (post-norm layers).
    multiplier : float
        A constant multiplying the attention output before the add (Granite).
    """

    layer: int
    module: nn.Module
    n_heads: int
    d_head: int
    layout: Literal["out_in", "in_out"] = "out_in"
    post_norm: Norm | None = None
    multiplier: float = 1.0

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
        """Per-head blocks of the projection, ``[n_heads, d_model, d_head]``: ``o = sum_h W_O[h] z_h + b``."""
        w = self.weight
        return w.reshape(w.shape[0], self.n_heads, self.d_head).permute(1, 0, 2)

    @property
    def bias(self) -> torch.Tensor | None:
        """The projection's bias ``[d_model]`` (it belongs to no head), or ``None``."""
        return getattr(self.module, "bias", None)

    @property
    def gain(self) -> torch.Tensor:
        """The constant per-coordinate factor between ``o`` and the residual write, ``[d_model]`` float32.

        ``multiplier * g`` on post-norm layers, ``multiplier`` elsewhere.
        """
        g = self.post_norm.gain if self.post_norm is not None else torch.ones(self.d_model)
        return self.multiplier * g.to(self.weight.device)

    @property
    def W_write(self) -> torch.Tensor:
        """``W_O`` with :attr:`gain` folded in, ``[n_heads, d_model, d_head]`` float32.

        ``x_h = token_factor(o) * W_write[h] @ z_h`` is head ``h``'s exact residual write.
        """
        return self.gain[None, :, None] * self.W_O.detach().float()

    def split(self, z: torch.Tensor) -> torch.Tensor:
        """``[..., n_heads * d_head]`` -> ``[..., n_heads, d_head]``."""
        return z.reshape(*z.shape[:-1], self.n_heads, self.d_head)

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim >= 2 and z.shape[-2:] == (self.n_heads, self.d_head):
            return z.reshape(*z.shape[:-2], self.n_heads * self.d_head)
        if z.shape[-1] != self.n_heads * self.d_head:
            raise ValueError(
                f"z must be [..., {self.n_heads * self.d_head}] or [..., {self.n_heads}, {self.d_head}], "
                f"got {tuple(z.shape)}"
            )
        return z

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The projection's output ``o = W z + b``, ``[..., d_model]`` float32."""
        z = self._flat(z).float()
        o = z @ self.weight.detach().float().T
        return o + self.bias.detach().float() if self.bias is not None else o

    def token_factor(self, o: torch.Tensor) -> torch.Tensor:
        """The per-token factor ``[..., 1]``: ``1 / rms(o)`` on post-norm layers, 1 elsewhere."""
        if self.post_norm is None:
            return torch.ones(*o.shape[:-1], 1, dtype=torch.float32, device=o.device)
        return self.post_norm.inverse_scale(o)

    def pieces(self, z: torch.Tensor) -> torch.Tensor:
        """The heads' pieces of the projection's output, ``W_O[h] z_h``: ``[..., n_heads, d_model]``.

        Their sum plus :attr:`bias` is ``o``; they are the residual writes only
        on plain pre-norm layers (see :meth:`contributions`).
        """
        z = self.split(self._flat(z))
        return torch.einsum("...hk,hdk->...hd", z.to(self.weight.dtype), self.W_O)

    def contributions(self, z: torch.Tensor) -> torch.Tensor:
        """What each head adds to the residual stream, ``[..., n_heads, d_model]``.

        ``z`` is the projection's input at each token, ``[..., n_heads * d_head]``
        or ``[..., n_heads, d_head]``. With the norm's per-token factor and the
        gain folded in, the contributions plus :meth:`bias_share` sum exactly to
        what the layer adds to the residual stream.
        """
        factor = self.token_factor(self.project(z)) if self.post_norm is not None else 1.0
        zf = self.split(self._flat(z)).float() * (factor[..., None] if self.post_norm is not None else 1.0)
        return torch.einsum("...hk,hdk->...hd", zf, self.W_write)

    def bias_share(self, z: torch.Tensor) -> torch.Tensor | None:
        """The bias's share of the residual write at each token, ``[..., d_model]``, or None without a bias."""
        if self.bias is None:
            return None
        z = self._flat(z)
        b = self.gain * self.bias.detach().float()
        return b * self.token_factor(self.project(z)) if self.post_norm is not None else b.expand(*z.shape[:-1], -1)


# --------------------------------------------------------------------------- #
# Finding the heads
# --------------------------------------------------------------------------- #


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
        raise TypeError("heads= takes the list returned by hp_mini.attention_heads(model)")
    heads = list(heads)
    if not heads:
        raise ValueError("heads= is empty; pass hp_mini.attention_heads(model)")
    own = {id(m) for m in model.modules()}
    stray = [s.layer for s in heads if id(s.module) not in own]
    if stray:
        raise ValueError(
            f"heads= holds the heads of another model (layers {stray[:5]} are not modules of this "
            f"{type(model).__name__}); pass hp_mini.attention_heads(model) of the model you use"
        )
    return heads


# --------------------------------------------------------------------------- #
# Copying: does a head write the tokens it attends to?
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class CopyScores:
    """How much each head's write points at the tokens it attends to (see :func:`copy_scores`).

    Attributes
    ----------
    scores : Tensor ``[n_layers, n_heads]``
        Mean standardised logit of the attended tokens, float64.
    baseline : Tensor ``[n_layers, n_heads]``
        The same with every prompt token replaced by a random vocabulary token
        (same attention): the level of a head that does not copy.
    n_tokens : int
        Query positions averaged over (all prompts together).
    """

    scores: torch.Tensor
    baseline: torch.Tensor
    n_tokens: int

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the highest copy score, best first, as ``(layer, head)``."""
        n_layers, n_heads = self.scores.shape
        if not 0 <= k <= n_layers * n_heads:
            raise ValueError(f"k must be between 0 and {n_layers * n_heads}, got {k}")
        order = self.scores.flatten().argsort(descending=True, stable=True)[:k]
        return [divmod(int(i), n_heads) for i in order]


def _copy_kernel(
    x: torch.Tensor, attn: torch.Tensor, targets: torch.Tensor, mean_atom: torch.Tensor, cov: torch.Tensor
) -> torch.Tensor:
    """Standardised logit of the attended atoms, per query position and head.

    ``x`` ``[T, H, d]`` writes, ``attn`` ``[H, T, T]`` (query, key), ``targets``
    ``[..., T, d]`` the atoms of the key tokens (leading dimensions are
    alternative token sets). Returns ``[..., T, H]``: ``(x . sum_s a_ts u_s -
    x . mean_u) / std_u(x . u)``, the mean and standard deviation taken over the
    dictionary's rows (``cov`` is their covariance).
    """
    spread = ((x @ cov) * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
    attended = (attn @ targets.unsqueeze(-3)).transpose(-3, -2)  # [..., T, H, d]
    return ((x * (attended - mean_atom)).sum(-1)) / spread


def copy_scores(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    unembedding: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 8,
) -> CopyScores:
    """Score every head by how much its write points at the tokens it attends to.

    At each query position ``t`` (all but a prompt's first), head ``h`` writes
    ``x_t`` to the residual stream while attending to key positions ``s`` with
    weights ``a_ts``. Reading the write with the dictionary (logit ``u_v . x_t``
    for every row ``u_v``), the head *copies* when the tokens it attends to get
    high logits. The score is the attention-weighted logit of the attended
    tokens, standardised over the whole vocabulary,

    ``sum_s a_ts (u_{tok_s} . x_t - mean_v u_v . x_t) / std_v(u_v . x_t)``,

    averaged over query positions and prompts: 0 for a head whose write is
    unrelated to what it attends to, several units for a copying head. The
    baseline repeats the computation with each prompt token replaced by a
    random vocabulary token, keeping the attention.

    Parameters
    ----------
    model : nn.Module
        A causal language model (see :func:`attention_heads`) that can return
        its attention weights (``output_attentions=True``; the eager attention
        is switched on for the call and switched back after).
    tokenizer : tokenizer
        Its tokenizer.
    texts : list of str
        The prompts.
    unembedding : Tensor ``[vocab, d_model]``
        Row ``v`` reads token ``v``, e.g. ``unembedding_dictionary(model,
        tokenizer).atoms`` (unit rows).
    seed : int, default 0
        Seed of the baseline's random tokens.
    batch_size : int, default 8
        Prompts per forward pass.

    Returns
    -------
    CopyScores

    Raises
    ------
    ValueError
        No prompts, an empty prompt or one token only, an unembedding of the
        wrong width or with fewer rows than the token ids, or a model that
        returns no attention weights.
    TypeError
        A prompt that is not a string, or an unembedding that is not a 2-D tensor.

    Examples
    --------
    >>> import hp_mini
    >>> model, tokenizer = hp_mini.load_model("smollm2-135m")                 # doctest: +SKIP
    >>> U = hp_mini.unembedding_dictionary(model, tokenizer).atoms              # doctest: +SKIP
    >>> copying = copy_scores(model, tokenizer, texts, U)                       # doctest: +SKIP
    >>> copying.top(3)                                                          # doctest: +SKIP
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("copy_scores needs at least one prompt")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"prompt {i} is a {type(text).__name__}, not a string")
    if not isinstance(unembedding, torch.Tensor) or unembedding.ndim != 2:
        raise TypeError("unembedding must be a 2-D tensor [vocab, d_model] (row v reads token v)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sites = attention_heads(model)
    d_model = sites[0].d_model
    if unembedding.shape[1] != d_model:
        raise ValueError(f"the unembedding's rows are {unembedding.shape[1]} wide but the heads write {d_model}-wide vectors")
    if not torch.isfinite(unembedding).all():
        raise ValueError("the unembedding contains NaN or infinite values")
    U = unembedding.detach().double().cpu()
    mean_atom = U.mean(0)
    cov = (U - mean_atom).T @ (U - mean_atom) / len(U)
    gen = torch.Generator().manual_seed(seed)
    n_layers, n_heads = len(sites), sites[0].n_heads
    totals = torch.zeros(2, n_layers, n_heads, dtype=torch.float64)
    count = 0

    switch = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    was_training = model.training
    model.eval()
    try:
        if switch is not None and before not in (None, "eager"):
            switch("eager")
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            batch = encode(model, tokenizer, chunk, padding_side="right")
            lengths = batch["attention_mask"].sum(1).tolist()
            for j, length in enumerate(lengths):
                if length < 2:
                    raise ValueError(
                        f"prompt {start + j} has {int(length)} token(s); a copy score needs at least 2 "
                        "(the first position can only attend to itself)"
                    )
            ids = batch["input_ids"].cpu()
            if int(ids.max()) >= len(U):
                raise ValueError(
                    f"token id {int(ids.max())} has no row in the unembedding ({len(U)} rows); "
                    "pass the unembedding of this model's tokenizer"
                )
            traces = [Trace(site.module, retain_input=True) for site in sites]
            with torch.no_grad(), contextlib.ExitStack() as stack:
                for trace in traces:
                    stack.enter_context(trace)
                out = model(**batch, output_attentions=True, use_cache=False)
            attentions = getattr(out, "attentions", None)
            if not attentions or attentions[0] is None:
                raise ValueError(
                    f"{type(model).__name__} returned no attention weights; copy_scores needs a model "
                    "that supports output_attentions=True (eager attention)"
                )
            for j, length in enumerate(lengths):
                tokens = ids[j, :length]
                targets = torch.stack([U[tokens], U[torch.randint(0, len(U), (length,), generator=gen)]])
                for i, site in enumerate(sites):
                    x = site.contributions(traces[i].input[j, :length]).double().cpu()
                    a = attentions[site.layer][j, :, :length, :length].double().cpu()
                    z = _copy_kernel(x, a, targets, mean_atom, cov)  # [2, T, H]
                    totals[:, i] += z[:, 1:].sum(1)
                count += length - 1
    finally:
        if switch is not None and before not in (None, "eager"):
            switch(before)
        model.train(was_training)
    return CopyScores(totals[0] / count, totals[1] / count, count)

"""Record what every attention head writes to the residual stream, pooled per prompt.

:func:`record_heads` hooks each layer's attention output projection (its input
is the concatenation of the heads' outputs ``z``), pools ``z`` over the
positions of each prompt, and keeps it compactly: ``z`` is ``d_head`` wide per
head, and ``W_O`` turns it into ``d_model``-wide contributions ``x_h = W_O[h] z_h``
only when asked (:meth:`HeadActivations.contributions`).

The contributions are exactly what each head adds to the residual stream (see
:mod:`hp_mini.model.heads`). On post-norm layers (Gemma 2, Gemma 3, OLMo 2) the norm's
per-token factor ``1 / rms(o)`` multiplies ``z`` *before* pooling and the
norm's gain is folded into the stored ``W_O``; a constant multiplier (Granite)
is folded into ``W_O`` too. Pooling is then linear, so pooling ``z`` and
applying ``W_O`` is the same as pooling the exact writes ``x_h``.

With ``store="moments"`` nothing per prompt is kept: only the count, the sum
and the second moment ``sum z z^T`` of every head, whose size does not grow
with the number of prompts. That is all the L2 criterion of SOMP needs.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()                    # doctest: +SKIP
>>> acts = hp_mini.record_heads(model, tokenizer, ["The capital of France is"])  # doctest: +SKIP
>>> acts.contributions().shape                                 # doctest: +SKIP
torch.Size([1, 30, 9, 576])
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import torch
from torch import nn

from hp_mini.checks import check_count, check_weights_loaded
from hp_mini.model.architectures import ModelParts, model_parts
from hp_mini.model.heads import attention_heads, check_heads_of
from hp_mini.model.hooks import Trace
from hp_mini.model.inputs import encode, model_device
from hp_mini.model.sites import LayerHeads, head_label

__all__ = ["HeadActivations", "HeadMoments", "HeadStore", "record_heads", "select_layers"]

# A custom pooling: one boolean mask per prompt over that prompt's own tokens
# (unpadded), or a function of the padded batch (input_ids, attention_mask) -> [B, T] bool.
Pool = Union[
    Literal["mean", "last", "image"],
    Sequence[torch.Tensor],
    Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
]


@dataclass
class HeadMoments:
    """Streamed statistics of the pooled head outputs, in ``d_head`` space.

    Attributes
    ----------
    count : int
        Number of prompts seen.
    sum : Tensor ``[layers, heads, d_head]`` (float64)
    second : Tensor ``[layers, heads, d_head, d_head]`` (float64), ``sum_i z_i z_i^T``.
    """

    count: int
    sum: torch.Tensor
    second: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    def centered_second(self) -> torch.Tensor:
        """``Z_c^T Z_c`` per head, ``[layers, heads, d_head, d_head]`` (float64)."""
        mu = self.mean
        return self.second - self.count * mu.unsqueeze(-1) * mu.unsqueeze(-2)

    def __add__(self, other: HeadMoments) -> HeadMoments:
        """The moments of both sets of prompts together: ``a + b`` merges shards recorded apart.

        Counts, sums and second moments add, so merging the moments of two
        sets of prompts gives the moments of their union (in float64, up to
        the order of the additions).
        """
        if not isinstance(other, HeadMoments):
            return NotImplemented
        if self.sum.shape != other.sum.shape or self.second.shape != other.second.shape:
            raise ValueError(
                f"cannot add the moments of heads shaped {tuple(self.sum.shape)} and {tuple(other.sum.shape)} "
                "([layers, heads, d_head]): record both with the same model and layers"
            )
        return HeadMoments(self.count + other.count, self.sum + other.sum, self.second + other.second)


@dataclass
class HeadActivations:
    """Pooled per-head outputs of a model over a set of prompts.

    Attributes
    ----------
    z : Tensor ``[n, layers, heads, d_head]`` or None
        Pooled head outputs, one row per prompt (None with ``store="moments"``),
        each token's output multiplied by its post-norm factor before pooling.
    W_O : Tensor ``[layers, heads, d_model, d_head]``
        Each head's slice of its layer's output projection, with the constant
        gain between the projection and the residual add folded in
        (:attr:`hp_mini.LayerHeads.W_write`).
    bias : Tensor ``[layers, d_model]`` or None
        The projections' biases through the same gain (they belong to no head).
    layers : list[int]
        Model layer index of each recorded layer.
    moments : HeadMoments or None
        Streamed statistics (``store="moments"``); derived from ``z`` otherwise.
    texts : list[str]
        The prompts, in order.
    bias_factor : Tensor ``[n, layers]`` or None
        The pooled per-token factor of post-norm layers with a bias: the bias's
        share of prompt ``i`` is ``bias * bias_factor[i, :, None]``. None
        when that factor is 1.
    """

    z: torch.Tensor | None
    W_O: torch.Tensor
    bias: torch.Tensor | None
    layers: list[int]
    moments: HeadMoments | None = None
    texts: list[str] = field(default_factory=list)
    bias_factor: torch.Tensor | None = None

    # -- shape ------------------------------------------------------------- #
    @property
    def n_prompts(self) -> int:
        return self.z.shape[0] if self.z is not None else self.moments.count  # type: ignore[union-attr]

    @property
    def n_layers(self) -> int:
        return self.W_O.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_O.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_O.shape[2]

    @property
    def d_head(self) -> int:
        return self.W_O.shape[3]

    @property
    def heads(self) -> list[tuple[int, int]]:
        """Every recorded head as a ``(layer, head)`` pair, layer-major."""
        return [(layer, h) for layer in self.layers for h in range(self.n_heads)]

    @property
    def labels(self) -> list[str]:
        return [head_label(layer, h) for layer, h in self.heads]

    def __repr__(self) -> str:
        kind = "moments" if self.z is None else f"{self.n_prompts} prompts"
        return (
            f"HeadActivations({kind}, layers={self.layers[0]}..{self.layers[-1]}, "
            f"heads={self.n_heads}, d_head={self.d_head}, d_model={self.d_model})"
        )

    # -- access ------------------------------------------------------------ #
    def _index(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise IndexError(f"layer {layer} was not recorded; recorded layers: {self.layers}") from None

    def _check_head(self, head: int) -> None:
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} is out of range: heads are 0..{self.n_heads - 1}")

    def _need_samples(self) -> torch.Tensor:
        if self.z is None:
            raise ValueError(
                "these activations hold only streamed moments (store='moments'); "
                "record with store='samples' to get per-prompt contributions"
            )
        return self.z

    def contributions(self, layer: int | None = None) -> torch.Tensor:
        """What each head adds to the residual stream, pooled: ``x_h = W_O[h] z_h``.

        Returns ``[n, layers, heads, d_model]``, or ``[n, heads, d_model]`` for
        one ``layer`` (a model layer index). Summed over heads and added to
        :meth:`bias_shares`, it is the pooled attention write of each layer.
        """
        z = self._need_samples()
        if layer is None:
            return torch.einsum("nlhk,lhdk->nlhd", z, self.W_O)
        i = self._index(layer)
        return torch.einsum("nhk,hdk->nhd", z[:, i], self.W_O[i])

    def bias_shares(self) -> torch.Tensor | None:
        """The biases' pooled shares of each layer's write, ``[n, layers, d_model]``, or None without biases."""
        if self.bias is None:
            return None
        if self.bias_factor is None:
            return self.bias.expand(self.n_prompts, -1, -1)
        return self.bias_factor[:, :, None] * self.bias

    def head(self, layer: int, head: int) -> torch.Tensor:
        """One head's contributions, ``[n, d_model]``."""
        z, w = self.factors(layer, head)
        return z @ w.T

    def factors(self, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z [n, d_head], W [d_model, d_head])`` with ``head(layer, head) == Z @ W.T``."""
        self._check_head(head)
        i = self._index(layer)
        return self._need_samples()[:, i, head], self.W_O[i, head]

    def head_moments(self, layer: int, head: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(n, mean [d_head], Z_c^T Z_c [d_head, d_head])`` of one head, in float64."""
        self._check_head(head)
        i = self._index(layer)
        m = self.moments if self.moments is not None else _moments_of(self._need_samples())
        mu = m.sum[i, head] / m.count
        second = m.second[i, head] - m.count * torch.outer(mu, mu)
        return m.count, mu, second

    @classmethod
    def concatenate(cls, parts: Sequence[HeadActivations]) -> HeadActivations:
        """The activations of several sets of prompts recorded apart, as one.

        Parameters
        ----------
        parts : sequence of HeadActivations
            Recorded with the same model and layers (the same ``W_O``,
            ``bias`` and ``layers``), all with samples or all with moments only.

        Returns
        -------
        HeadActivations
            With samples: the rows of ``z``, ``bias_factor`` and ``texts`` of
            every part in order, equal to recording all the prompts at once
            with the same batches. With moments only: their sum
            (:meth:`HeadMoments.__add__`). ``texts`` is empty unless every part
            kept its prompts.

        Raises
        ------
        ValueError
            No parts, parts of different heads or projections, or samples mixed
            with moments only.
        """
        parts = list(parts)
        if not parts or not all(isinstance(p, HeadActivations) for p in parts):
            raise ValueError("parts must be a non-empty sequence of HeadActivations")
        first = parts[0]
        for i, p in enumerate(parts[1:], 1):
            same_bias = (p.bias is None) == (first.bias is None) and (p.bias is None or torch.equal(p.bias, first.bias))
            same_W = p.W_O.shape == first.W_O.shape and torch.equal(p.W_O, first.W_O)
            if p.layers != first.layers or not same_W or not same_bias:
                raise ValueError(
                    f"parts[{i}] holds other heads than parts[0] (layers, output projections or biases differ): "
                    "concatenate only activations recorded with the same model and layers"
                )
        samples = [p.z is not None for p in parts]
        if any(samples) and not all(samples):
            raise ValueError(
                "parts mixes per-prompt samples with moments only (store='moments'); record every part with the "
                "same store"
            )
        texts = [t for p in parts for t in p.texts] if all(len(p.texts) == p.n_prompts for p in parts) else []
        if not all(samples):
            moments = parts[0].moments
            for p in parts[1:]:
                moments = moments + p.moments  # type: ignore[operator]
            return cls(None, first.W_O, first.bias, list(first.layers), moments, texts, None)
        z = torch.cat([p.z for p in parts])  # type: ignore[misc]
        factor = None
        if any(p.bias_factor is not None for p in parts):  # a missing factor is a factor of 1
            factor = torch.cat([p.bias_factor if p.bias_factor is not None else torch.ones(p.n_prompts, p.n_layers)
                                for p in parts])
        return cls(z, first.W_O, first.bias, list(first.layers), None, texts, factor)

    def select(self, rows) -> HeadActivations:
        """A subset of prompts (``rows``: indices, a slice or a boolean mask)."""
        z = self._need_samples()[rows]
        index = range(len(self.texts))[rows] if isinstance(rows, slice) else None
        if index is not None:
            texts = [self.texts[i] for i in index]
        else:
            idx = torch.as_tensor(rows)
            idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.flatten()
            texts = [self.texts[int(i)] for i in idx] if self.texts else []
        factor = self.bias_factor[rows] if self.bias_factor is not None else None
        return HeadActivations(z, self.W_O, self.bias, list(self.layers), None, texts, factor)


def _moments_of(z: torch.Tensor) -> HeadMoments:
    z64 = z.double()
    return HeadMoments(z.shape[0], z64.sum(0), torch.einsum("nlhk,nlhj->lhkj", z64, z64))



class HeadStore:
    """Collects pooled head outputs batch by batch, as samples or as streamed moments.

    Shared by the recorders (text and vision): ``add(start, z)`` takes a batch
    ``z [B, layers, heads, d_head]`` and ``finish(sites, texts)`` returns the
    :class:`HeadActivations`.
    """

    def __init__(self, n: int, n_layers: int, n_heads: int, d_head: int, store: str):
        if store not in ("samples", "moments"):
            raise ValueError(f"store must be 'samples' or 'moments', got {store!r}")
        shape = (n_layers, n_heads, d_head)
        self.z = torch.empty(n, *shape) if store == "samples" else None
        self.bias_factor = torch.ones(n, n_layers)
        self.moments = (
            HeadMoments(0, torch.zeros(*shape, dtype=torch.float64), torch.zeros(*shape, d_head, dtype=torch.float64))
            if store == "moments"
            else None
        )

    def add(self, start: int, z: torch.Tensor, bias_factor: torch.Tensor | None = None) -> None:
        if bias_factor is not None:
            self.bias_factor[start : start + len(z)] = bias_factor
        if self.z is not None:
            self.z[start : start + len(z)] = z
        else:
            z64 = z.double()
            self.moments.count += len(z)  # type: ignore[union-attr]
            self.moments.sum += z64.sum(0)  # type: ignore[union-attr]
            self.moments.second += torch.einsum("nlhk,nlhj->lhkj", z64, z64)  # type: ignore[union-attr]

    def finish(self, sites: Sequence[LayerHeads], texts, *, W_O: torch.Tensor | None = None, with_bias: bool = True) -> HeadActivations:
        from accelerate.utils import align_module_device

        with torch.no_grad(), contextlib.ExitStack() as onload:
            for s in sites:  # projections offloaded by accelerate (device_map to disk) are read in place
                onload.enter_context(align_module_device(s.module))
            if W_O is None:
                W_O = torch.stack([s.W_write.cpu() for s in sites])
            biases = [s.bias for s in sites]
            bias = (
                None
                if not with_bias or any(b is None for b in biases)
                else torch.stack([(s.gain * s.bias.detach().float()).cpu() for s in sites])
            )
            folded = bias is not None and any(s.post_norm is not None for s in sites)
        return HeadActivations(
            self.z, W_O.cpu(), bias, [s.layer for s in sites], self.moments, list(texts or []),
            self.bias_factor if folded else None,
        )


def select_layers(sites: list[LayerHeads], layers: Sequence[int] | None, where: str = "the model") -> list[LayerHeads]:
    """The entries of ``sites`` for ``layers`` (all when None), with a clear error when out of range."""
    if layers is None:
        return sites
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        layers = list(layers) if hasattr(layers, "__iter__") and not isinstance(layers, (str, bytes)) else None
        if layers is None:
            raise TypeError("layers must be a list of layer indices, or None for every layer")
    if len(layers) == 0:
        raise ValueError("layers is empty; pass None for every layer, or at least one layer index")
    wrong = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, numbers.Integral)]
    if wrong:
        raise TypeError(f"layers must be integer layer indices, got {wrong}")
    bad = [layer for layer in layers if not 0 <= layer < len(sites)]
    if bad:
        raise IndexError(f"layers {bad} are out of range: {where} has layers 0..{len(sites) - 1}")
    return [sites[layer] for layer in layers]


# --------------------------------------------------------------------------- #
# Recording
# --------------------------------------------------------------------------- #


def _pool_weights(
    pool: Pool,
    batch: dict[str, torch.Tensor],
    prompt_masks: Sequence[torch.Tensor] | None,
    image_token_id: int | None,
    start: int = 0,
) -> torch.Tensor:
    """``[B, T]`` float weights that average each prompt's selected positions."""
    attn = batch["attention_mask"].bool()
    if pool == "mean":
        mask = attn
    elif pool == "last":
        # The last real token, for left and right padding alike.
        t = attn.shape[1]
        last = (attn * torch.arange(1, t + 1, device=attn.device)).argmax(1)
        mask = torch.zeros_like(attn)
        mask[torch.arange(attn.shape[0]), last] = True
    elif pool == "image":
        if image_token_id is None:
            raise ValueError("pool='image' needs a model with an image token (a vision-language model)")
        mask = (batch["input_ids"] == image_token_id) & attn
    elif callable(pool):
        mask = pool(batch["input_ids"], batch["attention_mask"]).bool()
        if mask.shape != attn.shape:
            raise ValueError(f"the pooling function returned {tuple(mask.shape)}, expected {tuple(attn.shape)}")
        mask = mask & attn
    else:  # one mask per prompt over its own tokens: place it on the real positions
        mask = torch.zeros_like(attn)
        for b, m in enumerate(prompt_masks or []):
            real = attn[b].nonzero().flatten()
            m = torch.as_tensor(m, dtype=torch.bool, device=attn.device).flatten()
            if m.numel() != real.numel():
                raise ValueError(
                    f"pool mask {b} has {m.numel()} entries but the prompt has {real.numel()} tokens; "
                    "give one boolean per token of the prompt as the tokenizer splits it"
                )
            mask[b, real[m]] = True
    counts = mask.sum(1, keepdim=True)
    if (counts == 0).any():
        bad = [start + int(i) for i in (counts.flatten() == 0).nonzero().flatten()]
        raise ValueError(
            f"pool={pool!r} selects no token of prompt(s) {bad}" if isinstance(pool, str) else
            f"the pool argument selects no token of prompt(s) {bad}; select at least one token of every prompt"
        )
    return mask.float() / counts


def record_heads(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str] | str,
    *,
    images=None,
    pool: Pool = "mean",
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    store: Literal["samples", "moments"] = "samples",
    heads: list[LayerHeads] | None = None,
    progress: bool = True,
) -> HeadActivations:
    """Record each head's residual contribution, pooled per prompt.

    Parameters
    ----------
    model : nn.Module
        A causal LM or vision-language model (see :func:`attention_heads`).
    tokenizer : tokenizer or processor
        Its tokenizer, or its processor when ``images`` are given.
    texts : list of str
        The prompts (``n`` of them).
    images : list of images, optional
        One image per prompt, for vision-language models.
    pool : {"mean", "last", "image"}, list of bool tensors, or callable
        ``"mean"`` averages over the prompt's real tokens (the paper's setting
        for text), ``"last"`` takes its last token, ``"image"`` averages over
        the image-token positions (the paper's setting for VLMs). A list gives
        one boolean mask per prompt over that prompt's own tokens; a callable
        maps the padded ``(input_ids, attention_mask)`` to a ``[B, T]`` mask.
        Padding is never pooled.
    batch_size : int
        Prompts per forward pass (an integer of at least 1; NumPy integers
        are accepted, floats and bools are not).
    layers : list of int, optional
        Record only these layers (default: all).
    store : {"samples", "moments"}
        Keep the pooled ``z`` of every prompt, or only streamed first and
        second moments (memory independent of ``n``).
    heads : list of LayerHeads, optional
        The result of :func:`attention_heads`, for models found by hand.
    progress : bool
        Show a progress bar.

    Returns
    -------
    HeadActivations
        ``z`` is ``[n, layers, heads, d_head]``. ``contributions()`` are the
        pooled residual writes: ``W_O[h] z_h`` on pre-norm layers,
        ``m W_O[h] z_h`` with a residual multiplier ``m`` (Granite), and
        ``g * W_O[h] z_h / rms(o)`` on post-norm layers (Gemma 2, Gemma 3,
        OLMo 2), with the norm's gain ``g`` and the rms of the whole attention
        output ``o`` at each token taken before pooling. Summed over heads and
        added to ``bias_shares()``, they are the pooled tensor the attention
        adds to the residual stream.

    Raises
    ------
    TypeError
        For a prompt that is not a string, or a ``batch_size`` that is not an
        integer.
    ValueError
        For a ``batch_size`` below 1, a model whose parameters are on the
        meta device (no values), an empty prompt (named by its index), an
        empty ``layers``, a pooling that selects no token of a prompt, token
        ids beyond the model's embedding (a tokenizer of another model), prompts longer than
        a model with learned absolute positions allows (longer than a rotary
        model's context only warns), or images given to a text model.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("record_heads needs at least one prompt")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"prompt {i} is a {type(text).__name__}, not a string")
        if text == "":
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    if images is not None and len(images) != len(texts):
        raise ValueError(f"got {len(images)} images for {len(texts)} prompts; give one image per prompt")
    batch_size = check_count(batch_size, "batch_size")
    if store not in ("samples", "moments"):
        raise ValueError(f"store must be 'samples' or 'moments', got {store!r}")
    check_weights_loaded(model, "record_heads")
    prompt_masks = None
    if not (isinstance(pool, str) or callable(pool)):
        prompt_masks = list(pool)
        if len(prompt_masks) != len(texts):
            raise ValueError(f"got {len(prompt_masks)} pool masks for {len(texts)} prompts")
    elif isinstance(pool, str) and pool not in ("mean", "last", "image"):
        raise ValueError(f"pool must be 'mean', 'last', 'image', a list of masks or a callable, got {pool!r}")

    parts = _parts_or_none(model)
    if images is not None and parts is not None and parts.wrapper is None:
        raise ValueError(
            f"images were given but {type(model).__name__} is a text model, which would ignore them; "
            "pass images only to a vision-language model"
        )
    sites = select_layers(check_heads_of(model, heads) if heads is not None else attention_heads(model), layers)
    n_heads, d_head = sites[0].n_heads, sites[0].d_head
    if any(s.n_heads != n_heads or s.d_head != d_head for s in sites):
        raise ValueError("record_heads needs the same number and width of heads in every recorded layer")

    device = model_device(model)
    image_token_id = parts.image_token_id if parts is not None else None
    n_layers = len(sites)
    collected = HeadStore(len(texts), n_layers, n_heads, d_head, store)
    pooled: list[torch.Tensor | None] = [None] * n_layers
    pooled_factor: list[torch.Tensor | None] = [None] * n_layers
    weights: dict[str, torch.Tensor] = {}

    def observe(i: int, site: LayerHeads):
        def edit_output(output, z):
            w = weights["w"].to(z.device)
            # where() keeps NaN/inf from padded rows out of the average.
            keep = w.unsqueeze(-1) > 0
            zf = z.float()
            if site.post_norm is not None:
                factor = site.token_factor(output)  # [B, T, 1], from the real attention output
                zf = zf * factor
                pooled_factor[i] = torch.einsum("bt,bt->b", w, torch.where(keep[..., 0], factor[..., 0], 0.0))
            pooled[i] = torch.einsum("bt,btd->bd", w, torch.where(keep, zf, torch.zeros((), dtype=zf.dtype)))
            return None

        return edit_output

    starts = range(0, len(texts), batch_size)
    bar = _progress(starts, progress, "recording heads")
    model_was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for i, site in enumerate(sites):
                stack.enter_context(Trace(site.module, edit_output=observe(i, site)))
            with torch.no_grad():
                for start in bar:
                    chunk = texts[start : start + batch_size]
                    chunk_images = images[start : start + batch_size] if images is not None else None
                    batch = encode(model, tokenizer, chunk, images=chunk_images, device=device)
                    _check_batch(model, batch, start)
                    masks = prompt_masks[start : start + batch_size] if prompt_masks is not None else None
                    weights["w"] = _pool_weights(pool, batch, masks, image_token_id, start).to(device).float()
                    model(**batch, use_cache=False)
                    z = torch.stack([p for p in pooled], 1).float().cpu()  # type: ignore[misc]
                    factor = None
                    if any(f is not None for f in pooled_factor):
                        ones = torch.ones(len(chunk), device=device)
                        factor = torch.stack([f if f is not None else ones for f in pooled_factor], 1).cpu()
                    collected.add(start, z.reshape(len(chunk), n_layers, n_heads, d_head), factor)
    finally:
        model.train(model_was_training)

    return collected.finish(sites, texts)


def _parts_or_none(model: nn.Module) -> ModelParts | None:
    try:
        return model_parts(model)
    except NotImplementedError:
        return None


def _check_batch(model: nn.Module, batch: dict[str, torch.Tensor], start: int) -> None:
    """Refuse token ids the model cannot embed, and say when prompts outrun the model's context."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and ids.numel() and int(ids.max()) >= rows:
        row = int((ids >= rows).any(1).nonzero()[0])
        raise ValueError(
            f"prompt {start + row} has token id {int(ids.max())}, but the model embeds only {rows} tokens: "
            "the tokenizer does not belong to this model; load both with hp_mini.load_model"
        )
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    absolute = getattr(config, "n_positions", None)  # learned absolute positions (GPT-2)
    limit = absolute or getattr(config, "max_position_embeddings", None)
    lengths = mask.sum(1)
    if isinstance(limit, int) and int(lengths.max()) > limit:
        row = int(lengths.argmax())
        message = (
            f"prompt {start + row} has {int(lengths.max())} tokens, more than the {limit} positions "
            f"{type(model).__name__} was trained on; shorten or split it"
        )
        if absolute:
            raise ValueError(message)
        warnings.warn(message + " (results beyond the context are unreliable)", RuntimeWarning, stacklevel=3)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)

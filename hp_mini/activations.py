"""Record what every attention head writes, pooled per prompt.

:func:`record_heads` hooks the *input* of each layer's attention output
projection (the concatenation of the heads' outputs ``z``), pools it over the
positions of each prompt, and keeps it compactly: ``z`` is ``d_head`` wide per
head, and the ``W_O`` slices turn it into ``d_model``-wide contributions
``x_h = W_O[h] z_h`` only when asked (:meth:`HeadActivations.contributions`).
Pooling is linear, so pooling ``z`` and then applying ``W_O`` is the same as
pooling ``x_h``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import torch
from torch import nn

from .heads import LayerHeads, attention_heads, head_label
from .inputs import encode, model_device

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


@dataclass
class HeadActivations:
    """Pooled per-head outputs of a model over a set of prompts.

    Attributes
    ----------
    z : Tensor ``[n, layers, heads, d_head]`` or None
        Pooled head outputs, one row per prompt (None with ``store="moments"``).
    W_O : Tensor ``[layers, heads, d_model, d_head]``
        Each head's slice of its layer's output projection.
    bias : Tensor ``[layers, d_model]`` or None
        The projections' biases (they belong to no head).
    layers : list[int]
        Model layer index of each recorded layer.
    moments : HeadMoments or None
        Streamed statistics (``store="moments"``); derived from ``z`` otherwise.
    texts : list[str]
        The prompts, in order.
    """

    z: torch.Tensor | None
    W_O: torch.Tensor
    bias: torch.Tensor | None
    layers: list[int]
    moments: HeadMoments | None = None
    texts: list[str] = field(default_factory=list)

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
        """Per-head residual contributions ``x_h = W_O[h] z_h``.

        Returns ``[n, layers, heads, d_model]``, or ``[n, heads, d_model]`` for
        one ``layer`` (a model layer index).
        """
        z = self._need_samples()
        if layer is None:
            return torch.einsum("nlhk,lhdk->nlhd", z, self.W_O)
        i = self._index(layer)
        return torch.einsum("nhk,hdk->nhd", z[:, i], self.W_O[i])

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
        return HeadActivations(z, self.W_O, self.bias, list(self.layers), None, texts)


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
        self.moments = (
            HeadMoments(0, torch.zeros(*shape, dtype=torch.float64), torch.zeros(*shape, d_head, dtype=torch.float64))
            if store == "moments"
            else None
        )

    def add(self, start: int, z: torch.Tensor) -> None:
        if self.z is not None:
            self.z[start : start + len(z)] = z
        else:
            z64 = z.double()
            self.moments.count += len(z)  # type: ignore[union-attr]
            self.moments.sum += z64.sum(0)  # type: ignore[union-attr]
            self.moments.second += torch.einsum("nlhk,nlhj->lhkj", z64, z64)  # type: ignore[union-attr]

    def finish(self, sites: Sequence[LayerHeads], texts, *, W_O: torch.Tensor | None = None, with_bias: bool = True) -> HeadActivations:
        with torch.no_grad():
            if W_O is None:
                W_O = torch.stack([s.W_O.detach().float().cpu() for s in sites])
            biases = [s.bias for s in sites]
            bias = (
                None
                if not with_bias or any(b is None for b in biases)
                else torch.stack([b.detach().float().cpu() for b in biases])
            )
        return HeadActivations(self.z, W_O.cpu(), bias, [s.layer for s in sites], self.moments, list(texts or []))


def select_layers(sites: list[LayerHeads], layers: Sequence[int] | None, where: str = "the model") -> list[LayerHeads]:
    """The entries of ``sites`` for ``layers`` (all when None), with a clear error when out of range."""
    if layers is None:
        return sites
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
        bad = (counts.flatten() == 0).nonzero().flatten().tolist()
        raise ValueError(f"pooling selects no position in batch rows {bad}; check the pool argument")
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
        Prompts per forward pass.
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
        ``z`` is ``[n, layers, heads, d_head]``.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("record_heads needs at least one prompt")
    if images is not None and len(images) != len(texts):
        raise ValueError(f"got {len(images)} images for {len(texts)} prompts; give one image per prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if store not in ("samples", "moments"):
        raise ValueError(f"store must be 'samples' or 'moments', got {store!r}")
    prompt_masks = None
    if not (isinstance(pool, str) or callable(pool)):
        prompt_masks = list(pool)
        if len(prompt_masks) != len(texts):
            raise ValueError(f"got {len(prompt_masks)} pool masks for {len(texts)} prompts")
    elif isinstance(pool, str) and pool not in ("mean", "last", "image"):
        raise ValueError(f"pool must be 'mean', 'last', 'image', a list of masks or a callable, got {pool!r}")

    sites = select_layers(heads if heads is not None else attention_heads(model), layers)
    n_heads, d_head = sites[0].n_heads, sites[0].d_head
    if any(s.n_heads != n_heads or s.d_head != d_head for s in sites):
        raise ValueError("record_heads needs the same number and width of heads in every recorded layer")

    device = model_device(model)
    image_token_id = _image_token_id(model)
    n_layers = len(sites)
    collected = HeadStore(len(texts), n_layers, n_heads, d_head, store)
    pooled: list[torch.Tensor | None] = [None] * n_layers
    weights: dict[str, torch.Tensor] = {}

    def make_hook(i: int):
        def hook(module, args):
            z = args[0]
            w = weights["w"].to(z.dtype)
            # where() keeps NaN/inf from padded rows out of the average.
            keep = w.unsqueeze(-1) > 0
            pooled[i] = torch.einsum("bt,btd->bd", w, torch.where(keep, z, torch.zeros((), dtype=z.dtype)))

        return hook

    starts = range(0, len(texts), batch_size)
    bar = _progress(starts, progress, "recording heads")
    model_was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for i, site in enumerate(sites):
                handle = site.module.register_forward_pre_hook(make_hook(i))
                stack.callback(handle.remove)
            with torch.no_grad():
                for start in bar:
                    chunk = texts[start : start + batch_size]
                    chunk_images = images[start : start + batch_size] if images is not None else None
                    batch = encode(model, tokenizer, chunk, images=chunk_images, device=device)
                    masks = prompt_masks[start : start + batch_size] if prompt_masks is not None else None
                    weights["w"] = _pool_weights(pool, batch, masks, image_token_id).to(device)
                    model(**batch, use_cache=False)
                    z = torch.stack([p for p in pooled], 1).float().cpu()  # type: ignore[misc]
                    collected.add(start, z.reshape(len(chunk), n_layers, n_heads, d_head))
    finally:
        model.train(model_was_training)

    return collected.finish(sites, texts)


def _image_token_id(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)

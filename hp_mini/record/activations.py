"""What every attention head writes to the residual stream: :func:`record_heads` and its results.

:func:`record_heads` runs the recorder core (:mod:`hp_mini.record.core`) on text
prompts (:mod:`hp_mini.record.prompts`): it hooks each layer's attention output
projection (its input is the concatenation of the heads' outputs ``z``), pools
``z`` over the positions of each prompt, or keeps it per token, and keeps it
compactly: ``z`` is ``d_head`` wide per head, and ``W_O`` turns it into
``d_model``-wide contributions ``x_h = W_O[h] z_h`` only when asked
(:meth:`HeadActivations.contributions`).

The contributions are exactly what each head adds to the residual stream (see
:mod:`hp_mini.model.heads`). On post-norm layers (Gemma 2, Gemma 3, OLMo 2) the norm's
per-token factor ``1 / rms(o)`` multiplies ``z`` *before* pooling and the
norm's gain is folded into the stored ``W_O``; a constant multiplier (Granite)
is folded into ``W_O`` too. Pooling is then linear, so pooling ``z`` and
applying ``W_O`` is the same as pooling the exact writes ``x_h``.

With ``store="moments"`` nothing per prompt is kept: only the count, the sum
and the second moment ``sum z z^T`` of every head, whose size does not grow
with the number of prompts. That is all the L2 criterion of SOMP needs.
:class:`HeadStore` keeps the rows either way.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()                    # doctest: +SKIP
>>> acts = hp_mini.record_heads(model, tokenizer, ["The capital of France is"])  # doctest: +SKIP
>>> acts.contributions().shape                                 # doctest: +SKIP
torch.Size([1, 30, 9, 576])
>>> tokens = hp_mini.record_heads(model, tokenizer, ["The capital of France is"], pool=None)  # doctest: +SKIP
>>> tokens.z.shape, tokens.positions[-1]   # one row per token: (prompt, position)  # doctest: +SKIP
(torch.Size([5, 30, 9, 64]), tensor([0, 4]))
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from hp_mini.checks import check_count, check_prompts, check_weights_loaded, renamed_keywords
from hp_mini.model.sites import LayerHeads, head_label
from hp_mini.record.core import Inputs, record_batches, select_layers
from hp_mini.record.prompts import Pool, PromptInputs, prompt_sites

__all__ = [
    "HeadActivations",
    "HeadMoments",
    "HeadStore",
    "check_store",
    "record_heads",
    "record_rows",
    "select_layers",
]

Stored = Literal["samples", "moments"]


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

    @classmethod
    def zeros(cls, shape: Sequence[int]) -> HeadMoments:
        """The moments of no rows, for rows ``shape = (layers, heads, d_head)``."""
        return cls(0, torch.zeros(*shape, dtype=torch.float64), torch.zeros(*shape, shape[-1], dtype=torch.float64))

    @classmethod
    def of(cls, z: torch.Tensor) -> HeadMoments:
        """The moments of the rows ``z [n, layers, heads, d_head]``, in float64."""
        z64 = z.double()
        return cls(len(z), z64.sum(0), torch.einsum("nlhk,nlhj->lhkj", z64, z64))

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
    """Per-head outputs of a model over a set of prompts: pooled per prompt, or per token.

    Attributes
    ----------
    z : Tensor ``[n, layers, heads, d_head]`` or None
        Head outputs, one row per prompt (or per token with ``pool=None``;
        None with ``store="moments"``), each token's output multiplied by its
        post-norm factor before pooling.
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
    prompts : list[str]
        The prompts, in order (``texts`` is its old, deprecated name). Row
        ``i`` of a pooled recording is ``prompts[i]``; row ``i`` of a per-token
        recording is a token of ``prompts[positions[i, 0]]``.
    bias_factor : Tensor ``[n, layers]`` or None
        The pooled per-token factor of post-norm layers with a bias: the bias's
        share of row ``i`` is ``bias * bias_factor[i, :, None]``. None
        when that factor is 1.
    positions : Tensor ``[n, 2]`` int64 or None
        Per-token recordings (``pool=None``): the prompt index of each row and
        the token's position among that prompt's tokens (padding not counted).
        None for pooled rows.
    """

    z: torch.Tensor | None
    W_O: torch.Tensor
    bias: torch.Tensor | None
    layers: list[int]
    moments: HeadMoments | None = None
    prompts: list[str] = field(default_factory=list)
    bias_factor: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def texts(self) -> list[str]:
        """Deprecated: the old name of :attr:`prompts`."""
        warnings.warn(_TEXTS_RENAMED, DeprecationWarning, stacklevel=2)
        return self.prompts

    @texts.setter
    def texts(self, value: list[str]) -> None:
        warnings.warn(_TEXTS_RENAMED, DeprecationWarning, stacklevel=2)
        self.prompts = list(value)

    # -- shape ------------------------------------------------------------- #
    @property
    def n_prompts(self) -> int:
        """The number of rows: prompts, or tokens of a per-token recording (``pool=None``)."""
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
        rows = f"{self.n_prompts} {'tokens' if self.positions is not None else 'prompts'}"
        kind = f"moments of {rows}" if self.z is None else rows
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
        """What each head adds to the residual stream (pooled, or per token): ``x_h = W_O[h] z_h``.

        Returns ``[n, layers, heads, d_model]``, or ``[n, heads, d_model]`` for
        one ``layer`` (a model layer index). Summed over heads and added to
        :meth:`bias_shares`, it is the (pooled) attention write of each layer.
        """
        z = self._need_samples()
        if layer is None:
            return torch.einsum("nlhk,lhdk->nlhd", z, self.W_O)
        i = self._index(layer)
        return torch.einsum("nhk,hdk->nhd", z[:, i], self.W_O[i])

    def bias_shares(self) -> torch.Tensor | None:
        """The biases' shares of each layer's write, ``[n, layers, d_model]``, or None without biases."""
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
        m = self.moments if self.moments is not None else HeadMoments.of(self._need_samples())
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
            ``bias`` and ``layers``), all with samples or all with moments
            only, all pooled or all per token.

        Returns
        -------
        HeadActivations
            With samples: the rows of ``z``, ``bias_factor`` and ``prompts`` of
            every part in order, equal to recording all the prompts at once
            with the same batches; per token, ``positions`` count the prompts
            of the earlier parts. With moments only: their sum
            (:meth:`HeadMoments.__add__`). ``prompts`` is empty unless every
            part kept its prompts.

        Raises
        ------
        ValueError
            No parts, parts of different heads or projections, samples mixed
            with moments only, or pooled rows mixed with per-token rows.
        """
        parts = _same_heads(parts)
        first = parts[0]
        prompts, positions = _joined_prompts(parts)
        if not all(p.z is not None for p in parts):
            moments = parts[0].moments
            for p in parts[1:]:
                moments = moments + p.moments  # type: ignore[operator]
            return cls(None, first.W_O, first.bias, list(first.layers), moments, prompts, None, positions)
        z = torch.cat([p.z for p in parts])  # type: ignore[misc]
        factor = None
        if any(p.bias_factor is not None for p in parts):  # a missing factor is a factor of 1
            factor = torch.cat([p.bias_factor if p.bias_factor is not None else torch.ones(p.n_prompts, p.n_layers)
                                for p in parts])
        return cls(z, first.W_O, first.bias, list(first.layers), None, prompts, factor, positions)

    def select(self, rows) -> HeadActivations:
        """A subset of rows (``rows``: indices, a slice or a boolean mask).

        Pooled rows keep their prompts; per-token rows keep every prompt and
        their ``positions``.
        """
        z = self._need_samples()[rows]
        prompts = list(self.prompts)
        if self.positions is None and isinstance(rows, slice):
            prompts = prompts[rows]
        elif self.positions is None:
            idx = torch.as_tensor(rows)
            idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.flatten()
            prompts = [prompts[int(i)] for i in idx] if prompts else []
        factor = self.bias_factor[rows] if self.bias_factor is not None else None
        positions = self.positions[rows] if self.positions is not None else None
        return HeadActivations(z, self.W_O, self.bias, list(self.layers), None, prompts, factor, positions)


_TEXTS_RENAMED = "HeadActivations.texts is now called prompts; use acts.prompts (texts will stop working)"
HeadActivations.__init__ = renamed_keywords(texts="prompts")(HeadActivations.__init__)  # type: ignore[method-assign]


def _same_heads(parts: Sequence[HeadActivations]) -> list[HeadActivations]:
    """``parts`` as a list, checked to be recordings of the same heads, kind of rows and store."""
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
    tokens = [p.positions is not None for p in parts]
    if any(tokens) and not all(tokens):
        raise ValueError(
            "parts mixes pooled rows with per-token rows (pool=None); record every part with the same pool"
        )
    return parts


def _joined_prompts(parts: list[HeadActivations]) -> tuple[list[str], torch.Tensor | None]:
    """The parts' prompts in order (empty unless every part kept them), and their per-token positions."""
    if parts[0].positions is None:
        kept = all(len(p.prompts) == p.n_prompts for p in parts)
        return ([t for p in parts for t in p.prompts] if kept else []), None
    kept = all(p.prompts for p in parts)
    positions, offset = [], 0
    for p in parts:
        rows = p.positions  # type: ignore[assignment]
        positions.append(rows + torch.tensor([offset, 0]))
        if kept:
            offset += len(p.prompts)
        elif len(rows):  # without the prompts, count them by the last prompt holding a row
            offset += int(rows[:, 0].max()) + 1
    return ([t for p in parts for t in p.prompts] if kept else []), torch.cat(positions)


def check_store(store: str) -> Stored:
    """``store`` if it is ``"samples"`` or ``"moments"``; a ``ValueError`` saying so otherwise."""
    if store not in ("samples", "moments"):
        raise ValueError(f"store must be 'samples' or 'moments', got {store!r}")
    return store  # type: ignore[return-value]


class HeadStore:
    """The store layer: keeps the rows the recorder core hands over, as samples or as streamed moments.

    Parameters
    ----------
    store : {"samples", "moments"}
        Keep every row, or only its count, sum and second moment.
    shape : (int, int, int)
        ``(layers, heads, d_head)`` of a row.
    rows : int, optional
        The number of rows to come, when known: samples are then written in
        place rather than joined at the end.

    Notes
    -----
    :meth:`add` takes each batch's rows in order (see
    :meth:`hp_mini.record.core.Rows.end`); :meth:`finish` returns the
    :class:`HeadActivations`.
    """

    def __init__(self, store: Stored, shape: Sequence[int], rows: int | None = None):
        check_store(store)
        self.shape, self.count = tuple(shape), 0
        self.z: torch.Tensor | list[torch.Tensor] | None = None
        if store == "samples":
            self.z = torch.empty(rows, *self.shape) if rows is not None else []
        self.moments = HeadMoments.zeros(self.shape) if store == "moments" else None
        self.factors: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []

    def add(self, z: torch.Tensor, bias_factor: torch.Tensor | None = None,
            positions: torch.Tensor | None = None) -> None:
        """Keep the rows ``z [R, layers, heads, d_head]``, their ``bias_factor [R, layers]`` and ``positions [R, 2]``."""
        if bias_factor is not None:  # every batch has one (post-norm sites), or none has
            self.factors.append(bias_factor)
        if positions is not None:
            self.positions.append(positions)
        if self.moments is not None:
            self.moments = self.moments + HeadMoments.of(z)
        elif isinstance(self.z, list):
            self.z.append(z)
        else:
            self.z[self.count : self.count + len(z)] = z  # type: ignore[index]
        self.count += len(z)

    def finish(self, sites: Sequence[LayerHeads], prompts: Sequence[str] | None, *, W_O: torch.Tensor | None = None,
               with_bias: bool = True) -> HeadActivations:
        """The :class:`HeadActivations` of the rows kept, with the output projections of ``sites``.

        ``W_O`` replaces the sites' projections (``[layers, heads, width, d_head]``);
        ``with_bias=False`` leaves the biases out.
        """
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
        z = torch.cat(self.z) if isinstance(self.z, list) else self.z
        return HeadActivations(
            z, W_O.cpu(), bias, [s.layer for s in sites], self.moments, list(prompts or []),
            torch.cat(self.factors) if folded and self.factors else None,
            torch.cat(self.positions) if self.positions else None,
        )


def record_rows(
    model: nn.Module,
    sites: Sequence[LayerHeads],
    inputs: Inputs,
    prompts: Sequence[str] | None,
    *,
    store: Stored,
    batch_size: int,
    rows: int | None = None,
    progress: bool = False,
    W_O: torch.Tensor | None = None,
    with_bias: bool = True,
) -> HeadActivations:
    """The recorder core (:func:`~hp_mini.record.core.record_batches`) into a :class:`HeadStore`, finished.

    ``prompts`` label the result; ``rows`` is the number of rows when known;
    ``W_O`` and ``with_bias`` go to :meth:`HeadStore.finish`.
    """
    kept = HeadStore(store, (len(sites), sites[0].n_heads, sites[0].d_head), rows)
    record_batches(model, sites, inputs, kept, batch_size=batch_size, progress=progress)
    return kept.finish(sites, prompts, W_O=W_O, with_bias=with_bias)


@renamed_keywords(texts="prompts", heads="sites")
def record_heads(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str] | str,
    *,
    images=None,
    pool: Pool = "mean",
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    store: Stored = "samples",
    sites: list[LayerHeads] | None = None,
    progress: bool = True,
) -> HeadActivations:
    """Record each head's residual contribution, pooled per prompt or per token.

    Parameters
    ----------
    model : nn.Module
        A causal LM or vision-language model (see :func:`attention_heads`).
    tokenizer : tokenizer or processor
        Its tokenizer, or its processor when ``images`` are given.
    prompts : list of str
        The prompts (``n`` of them; ``texts=`` is the old, deprecated name).
    images : list of images, optional
        One image per prompt, for vision-language models.
    pool : {"mean", "last", "image"}, list of bool tensors, callable or None
        ``"mean"``: the prompt's real tokens (the paper's setting for text);
        ``"last"``: its last token; ``"image"``: its image tokens (the paper's
        setting for VLMs); a list: one boolean mask per prompt over its own
        tokens; a callable: ``(input_ids, attention_mask) -> [B, T]`` bool on
        the padded batch. Padding is never pooled. ``None``: no pooling, every
        token is a row, with ``positions [rows, 2]`` (prompt, position); ``z``
        then takes ``4 * tokens * layers * heads * d_head`` bytes (SmolLM2:
        69,120 bytes a token) and ``contributions()`` ``d_model / d_head`` times more.
    batch_size : int
        Prompts per forward pass (an integer of at least 1).
    layers : list of int, optional
        Record only these layers (default: all).
    store : {"samples", "moments"}
        Keep ``z`` of every row, or only streamed first and second moments
        (memory independent of ``n``).
    sites : list of LayerHeads, optional
        The result of :func:`attention_heads`, for models found by hand
        (``heads=`` is the old, deprecated name).
    progress : bool
        Show a progress bar.

    Returns
    -------
    HeadActivations
        ``z [n, layers, heads, d_head]`` (``n`` tokens with ``pool=None``).
        ``contributions()`` are the (pooled) residual writes: ``W_O[h] z_h``,
        ``m W_O[h] z_h`` with a residual multiplier ``m`` (Granite), and
        ``g * W_O[h] z_h / rms(o)`` on post-norm layers (Gemma 2, Gemma 3,
        OLMo 2; ``rms`` of the attention output at each token, before
        pooling). Summed over heads and added to ``bias_shares()``, they are
        the (pooled) tensor the attention adds to the residual stream.

    Raises
    ------
    TypeError
        A prompt that is not a string, or a ``batch_size`` that is not an integer.
    ValueError
        A ``batch_size`` below 1, a model on the meta device, an empty prompt
        (named by its index), an empty ``layers``, a pooling that selects no
        token of a prompt, token ids beyond the model's embedding, prompts
        longer than learned absolute positions allow (longer than a rotary
        model's context only warns), or images given to a text model.
    """
    prompts = check_prompts(prompts, "record_heads", allow_empty=False)
    batch_size = check_count(batch_size, "batch_size")
    check_store(store)
    check_weights_loaded(model, "record_heads")
    inputs = PromptInputs(model, tokenizer, prompts, images=images, pool=pool)
    chosen = prompt_sites(model, sites, layers)
    return record_rows(model, chosen, inputs, prompts, store=store, batch_size=batch_size,
                       rows=None if pool is None else len(prompts), progress=progress)

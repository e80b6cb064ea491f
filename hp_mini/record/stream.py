"""Record the heads over a stream of prompts, in one process or many.

:func:`record_stream` reads prompts lazily, groups them into batches and gives
batch ``b`` to rank ``b % world_size`` (:mod:`hp_mini.parallel`), so that every
forward pass is one that a single process would make with the same batch size.
With ``store="moments"`` the ranks' counts, sums and second moments are added;
with ``store="samples"`` the pooled ``z`` of every rank is gathered and put back
in prompt order (:func:`interleave_batches`), bit for bit the ``z`` of one
process. Before anything is combined, the ranks check that they read the same
prompts (their count and a SHA-256 of their text).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch

from hp_mini.checks import check_count, check_weights_loaded
from hp_mini.parallel import (
    DistContext,
    all_gather_rows,
    broadcast_object,
    all_reduce_sum,
    exchange_status,
)
from hp_mini.record.activations import HeadActivations, HeadMoments, Stored, check_store, record_rows
from hp_mini.record.prompts import Pool, PromptInputs, prompt_sites

__all__ = ["interleave_batches", "record_stream"]


def _batches(prompts: Iterable[str], batch_size: int) -> Iterator[list[str]]:
    it = iter(prompts)
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch:
            return
        yield batch


class _Digest:
    """Iterates over ``prompts``, checking, counting and hashing them (SHA-256)."""

    def __init__(self, prompts: Iterable[str]):
        self.prompts, self.count, self.sha = prompts, 0, hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        for text in self.prompts:
            if not isinstance(text, str):
                raise TypeError(f"prompt {self.count} of the stream is a {type(text).__name__}, not a string")
            if text == "":
                raise ValueError(f"prompt {self.count} of the stream is empty; every prompt needs at least one token")
            data = text.encode("utf-8", "surrogatepass")
            self.sha.update(len(data).to_bytes(8, "little"))
            self.sha.update(data)
            self.count += 1
            yield text

    def summary(self) -> str:
        return f"{self.count} prompts, SHA-256 {self.sha.hexdigest()[:16]}"


def _own_chunks(prompts: Iterable[str], batch_size: int, chunk_batches: int, ctx: DistContext):
    """This rank's batches (``b % world_size == rank``), ``chunk_batches`` at a time.

    Yields ``(chunk, starts)``: the prompts, and the index in the stream of
    each of the chunk's batches' first prompt.
    """
    chunk: list[str] = []
    starts: list[int] = []
    for b, batch in enumerate(_batches(prompts, batch_size)):
        if b % ctx.world_size != ctx.rank:
            continue
        chunk.extend(batch)
        starts.append(b * batch_size)
        if len(starts) == chunk_batches:
            yield chunk, starts
            chunk, starts = [], []
    if chunk:
        yield chunk, starts


def _record_own(model, tokenizer, stream: _Digest, *, pool: Pool, batch_size: int, store: Stored,
                chunk_batches: int, layers: Sequence[int] | None, ctx: DistContext, bar) -> HeadActivations | None:
    """This rank's batches, recorded chunk by chunk (moments merged as they come); None without any."""
    own: HeadActivations | None = None
    parts: list[HeadActivations] = []
    sites = None
    for chunk, starts in _own_chunks(stream, batch_size, chunk_batches, ctx):
        sites = sites or prompt_sites(model, None, layers)
        inputs = PromptInputs(model, tokenizer, chunk, pool=pool,
                              index=lambda i, starts=starts: starts[i // batch_size] + i % batch_size)
        acts = record_rows(model, sites, inputs, None, store=store, batch_size=batch_size, rows=len(chunk))
        if store == "moments":
            own = acts if own is None else HeadActivations.concatenate([own, acts])
        else:
            parts.append(acts)
        if bar is not None:
            bar.update(len(starts) * ctx.world_size)
    return HeadActivations.concatenate(parts) if parts else own


def record_stream(
    model: torch.nn.Module,
    tokenizer,
    prompts: Iterable[str],
    *,
    pool: Literal["mean", "last"] = "mean",
    batch_size: int = 16,
    store: Stored = "moments",
    chunk_batches: int = 8,
    layers: Sequence[int] | None = None,
    ctx: DistContext | None = None,
    progress: bool = True,
) -> HeadActivations:
    """Record the heads over a stream of prompts, sharded across the ranks of a run.

    Parameters
    ----------
    model, tokenizer
        As for :func:`hp_mini.record_heads`.
    prompts : iterable of str
        Read once, lazily (a file's lines, a ``datasets`` stream, a list).
        Every rank reads the whole stream and records its own batches; the
        ranks' streams must be the same, which is checked (their count and a
        SHA-256 of their text) before anything is combined.
    pool : {"mean", "last"}, default "mean"
        As for :func:`hp_mini.record_heads` (a list of masks or a function
        too; not None: rows are pooled per prompt).
    batch_size : int, default 16
        Prompts per forward pass; batch ``b`` goes to rank ``b % world_size``.
    store : {"samples", "moments"}, default "moments"
        ``"moments"``: only counts, sums and second moments, summed across
        ranks with ``all_reduce``; memory does not grow with the number of
        prompts. ``"samples"``: the pooled ``z`` of every prompt, gathered
        from all ranks in prompt order (needed by ``criterion="l1"``).
    chunk_batches : int, default 8
        Batches recorded at a time: at most ``chunk_batches * batch_size``
        prompts are held in memory.
    layers : list of int, optional
        Record only these layers.
    ctx : DistContext, optional
        From :func:`init_distributed`; default one process.
    progress : bool, default True
        A progress bar over batches on rank 0 (tqdm, on stderr).

    Returns
    -------
    HeadActivations
        The same on every rank, ``z [n, layers, heads, d_head]`` (or None
        with moments only). ``prompts`` is empty (the prompts are not kept).
        With ``store="samples"``, ``z`` equals the ``z`` of
        ``record_heads(model, tokenizer, list(prompts), batch_size=batch_size)``
        exactly; with ``store="moments"`` the moments equal its moments up to
        the order of float64 additions.

    Raises
    ------
    DistributedError
        On every rank when the ranks read different prompts, and on the other
        ranks when one fails while reading or recording (that one raises its
        own error); see :func:`exchange_status`.
    """
    ctx = ctx or DistContext()
    batch_size, chunk_batches = _check_arguments(model, prompts, pool, batch_size, store, chunk_batches)
    bar = _bar(prompts, batch_size, ctx) if progress and ctx.is_main else None
    stream = _Digest(prompts)
    own, error = None, None
    try:
        own = _record_own(model, tokenizer, stream, pool=pool, batch_size=batch_size, store=store,
                          chunk_batches=chunk_batches, layers=layers, ctx=ctx, bar=bar)
    except Exception as err:  # told to the other ranks below, then raised here
        error = err
    finally:
        if bar is not None:
            bar.close()
    exchange_status(ctx, error, same={"the prompts they read": stream.summary()})
    if stream.count == 0:
        raise ValueError("the prompt stream is empty; give at least one prompt")
    return _combine(own, store, batch_size, ctx)


def _check_arguments(model, prompts, pool, batch_size, store, chunk_batches) -> tuple[int, int]:
    """Refuse bad arguments of :func:`record_stream` before any prompt is read; the two counts as ``int``."""
    check_store(store)
    counts = check_count(batch_size, "batch_size"), check_count(chunk_batches, "chunk_batches")
    if isinstance(prompts, str):
        raise TypeError("prompts must be an iterable of prompts, not one string")
    if pool is None:
        raise ValueError("record_stream pools every prompt: pool must be 'mean', 'last', a list of masks or a "
                         "function; record per-token rows with record_heads(..., pool=None)")
    check_weights_loaded(model, "record_stream")
    return counts


def _bar(prompts: Iterable[str], batch_size: int, ctx: DistContext):
    """A progress bar over the stream's batches (of unknown total when the stream has no length)."""
    from tqdm.auto import tqdm

    total = math.ceil(len(prompts) / batch_size) if hasattr(prompts, "__len__") else None
    return tqdm(total=total, desc=f"recording heads ({ctx.world_size} process"
                f"{'es' if ctx.world_size > 1 else ''})", unit="batch", leave=False)


def _combine(own: HeadActivations | None, store: Stored, batch_size: int, ctx: DistContext) -> HeadActivations:
    """Every rank's recordings as one, the same on every rank: moments summed, samples put in prompt order."""
    # Rank 0 always holds batch 0, so its projections are the reference ones.
    frame = None if own is None else (own.W_O, own.bias, list(own.layers), own.bias_factor is not None)
    W_O, bias, recorded, folded = broadcast_object(frame, ctx)
    width = (W_O.shape[0], W_O.shape[1], W_O.shape[3])
    if store == "moments":
        mine = own.moments if own is not None else HeadMoments.zeros(width)
        n = int(all_reduce_sum(torch.tensor([mine.count], dtype=torch.long), ctx)[0])  # type: ignore[union-attr]
        moments = HeadMoments(n, all_reduce_sum(mine.sum, ctx), all_reduce_sum(mine.second, ctx))  # type: ignore[union-attr]
        return HeadActivations(None, W_O, bias, recorded, moments, [], None)
    z_own = own.z if own is not None else torch.zeros(0, *width)
    z = interleave_batches(all_gather_rows(z_own, ctx), batch_size)
    factor = None
    if folded:
        own_factor = own.bias_factor if own is not None else None
        if own_factor is None:
            own_factor = torch.ones(len(z_own), width[0])
        factor = interleave_batches(all_gather_rows(own_factor, ctx), batch_size)
    return HeadActivations(z, W_O, bias, recorded, None, [], factor)


def interleave_batches(per_rank: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Rows of every rank put back in prompt order.

    ``per_rank[r]`` holds the rows of batches ``r, r + N, r + 2N, ...`` (``N``
    ranks, ``batch_size`` rows a batch, the last batch possibly shorter).
    """
    world = len(per_rank)
    pieces = [list(torch.split(t, batch_size)) for t in per_rank]
    out = []
    for b in itertools.count():
        r, i = b % world, b // world
        if i >= len(pieces[r]):
            break
        out.append(pieces[r][i])
    if sum(len(p) for p in out) != sum(len(t) for t in per_rank):
        raise RuntimeError("the ranks' batches do not interleave; every rank must read the same prompt stream")
    return torch.cat(out)

"""Record and rank heads in one process or many (``torch.distributed``).

The same code runs in one plain process and under ``torchrun
--nproc_per_node=N`` (or ``accelerate launch``); with one process every
collective is skipped.

* :func:`init_distributed` reads the launcher's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and starts
  the process group: gloo on CPU, nccl on GPU.
* :func:`record_stream` records the heads over a stream of prompts. Prompts
  are read lazily and grouped into batches; batch ``b`` goes to rank
  ``b % world_size``, so every forward pass is one that a single process would
  make with the same batch size. With ``store="moments"`` the ranks' counts,
  sums and second moments are added with ``all_reduce``; with
  ``store="samples"`` the pooled ``z`` of every rank is gathered with
  ``all_gather`` and put back in prompt order, bit for bit the ``z`` of one
  process.
* :func:`rank_heads_distributed` runs SOMP (:func:`hp_mini.pursue_heads`) on
  a contiguous block of heads on each rank and gathers the results, so that
  every rank holds the full ranking.

Failures
--------
A rank that fails never leaves the others waiting. Before the ranks combine
anything, :func:`exchange_status` tells every rank whether another one failed
(a bad line in its prompt file, a prompt its model refuses) and whether all
read the same prompts (their count and a SHA-256 of their text): the rank that
failed raises its own error, the others a :class:`DistributedError` naming it
and its message, and all stop within seconds. As a last resort every
collective gives up after ``HP_MINI_DIST_TIMEOUT_S`` seconds (default 600, see
:func:`collective_timeout`): raise it when one rank may legitimately wait
longer for the others (a much slower model load on one machine).

Security
--------
The ranks exchange Python objects by pickle (``all_gather_object``), and
unpickling runs code: the rendezvous (``MASTER_ADDR:MASTER_PORT``) and the
connections between the ranks must not be reachable by anyone else. On one
machine use ``MASTER_ADDR=127.0.0.1`` (and ``GLOO_SOCKET_IFNAME=lo`` for
gloo); between machines, a private network. torch's store listens on every
interface of rank 0's machine whatever ``MASTER_ADDR`` says, so a firewall
must keep ``MASTER_PORT`` closed to other hosts.

Memory
------
``store="moments"`` (enough for ``criterion="l2"``) keeps
``layers x heads x d_head x (d_head + 1)`` float64 numbers per process,
whatever the number of prompts ``n``. ``store="samples"`` (needed by
``criterion="l1"``) keeps ``n x layers x heads x d_head`` float32 numbers,
``4 n layers d_model`` bytes on a model whose heads fill ``d_model``
(Mistral-7B: 512 KiB per prompt), on every rank once gathered.

Example
-------
>>> import hp_mini
>>> from hp_mini.distributed import init_distributed, record_stream, rank_heads_distributed
>>> ctx = init_distributed()                      # one process unless launched by torchrun
>>> model, tokenizer = hp_mini.load_model()                               # doctest: +SKIP
>>> acts = record_stream(model, tokenizer, open("prompts.txt"), ctx=ctx, store="moments")  # doctest: +SKIP
>>> words = hp_mini.concept_words("countries")
>>> dic = hp_mini.unembedding_dictionary(model, tokenizer, words)         # doctest: +SKIP
>>> ranking = rank_heads_distributed(acts, dic, criterion="l2", ctx=ctx)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from .activations import HeadActivations, HeadMoments, record_heads
from .checks import check_count, check_weights_loaded
from .dictionary import Dictionary
from .pursuit import PursuitResult
from .ranking import HeadRanking, check_ranking_inputs, pursue_heads

__all__ = [
    "DistContext",
    "DistributedError",
    "TIMEOUT_ENV",
    "all_reduce_sum",
    "barrier",
    "collective_timeout",
    "exchange_status",
    "init_distributed",
    "interleave_batches",
    "record_stream",
    "rank_heads_distributed",
    "shard_heads",
    "shutdown_distributed",
]

Head = tuple[int, int]

TIMEOUT_ENV = "HP_MINI_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """Another rank failed, or the ranks disagree on what they read; raised on every rank concerned."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the processes of a run.

    Attributes
    ----------
    rank : int
        This process's index, 0 to ``world_size - 1``.
    world_size : int
        The number of processes (1 for a plain run).
    local_rank : int
        Its index on this machine (its GPU when the backend is nccl).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None for one process.
    started_here : bool
        Whether :func:`init_distributed` started the process group (and
        :func:`shutdown_distributed` should end it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device of this rank's collectives (its GPU with nccl, else the CPU)."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer") from None


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits for the others at a collective before it gives up.

    ``HP_MINI_DIST_TIMEOUT_S`` seconds (default 600), read when the process
    group starts. A failing rank tells the others at once
    (:func:`exchange_status`); the timeout ends a run whose rank hangs or
    vanishes without a word.

    Raises
    ------
    ValueError
        When ``HP_MINI_DIST_TIMEOUT_S`` is not a positive number of seconds.
    """
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"the environment variable {TIMEOUT_ENV}={value!r} must be a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def init_distributed(backend: Literal["gloo", "nccl"] | None = None) -> DistContext:
    """Join the process group described by the launcher's environment variables.

    Collectives time out after :func:`collective_timeout` (``HP_MINI_DIST_TIMEOUT_S``
    seconds, default 600). The ranks exchange Python objects by pickle: keep
    ``MASTER_ADDR:MASTER_PORT`` out of others' reach (see the module's
    Security section).

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Default: nccl when CUDA is available, gloo otherwise.

    Returns
    -------
    DistContext
        ``world_size=1`` and no process group when ``WORLD_SIZE`` is unset or
        1 (a plain ``python`` run).

    Raises
    ------
    ValueError
        When ``WORLD_SIZE`` is above 1 but ``RANK``, ``MASTER_ADDR`` or
        ``MASTER_PORT`` is missing, nccl is asked for without CUDA, or
        ``HP_MINI_DIST_TIMEOUT_S`` is not a positive number.
    """
    world = _env_int("WORLD_SIZE") or 1
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1, got {world}")
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK") or 0,
                           dist.get_backend(), False)
    if world == 1:
        return DistContext()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} is not set: start the run with "
            "torchrun --nproc_per_node=N or accelerate launch, which set them"
        )
    rank = _env_int("RANK") or 0
    local_rank = _env_int("LOCAL_RANK")
    local_rank = rank if local_rank is None else local_rank
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    timeout = collective_timeout()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend='nccl' needs CUDA; use backend='gloo' on CPU")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    return DistContext(rank, world, local_rank, backend, True)


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (nothing for one process)."""
    if ctx.world_size > 1:
        dist.barrier()


def shutdown_distributed(ctx: DistContext, *, failed: bool = False) -> None:
    """End the process group if :func:`init_distributed` started it.

    Parameters
    ----------
    ctx : DistContext
    failed : bool, default False
        The run stopped on an error: end the group without waiting for the
        other ranks, which may be waiting at another collective (or gone).
        Otherwise every rank waits for the others first.
    """
    if ctx.started_here and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def exchange_status(
    ctx: DistContext, error: BaseException | None = None, *, same: Mapping[str, object] | None = None
) -> None:
    """Tell every rank whether this one failed, and check that all hold the same ``same``.

    A collective: every rank calls it at the same point of the run, the ranks
    that failed included, so that none is left waiting for one that stopped.

    Parameters
    ----------
    ctx : DistContext
    error : exception, optional
        What stopped this rank, if anything.
    same : mapping ``{description: value}``, optional
        Small picklable values that must be equal on every rank (the number
        of prompts read and their hash).

    Raises
    ------
    Exception
        ``error`` itself, on the rank that failed.
    DistributedError
        On the other ranks when any rank failed (naming it and its message),
        and on every rank when a value of ``same`` differs between ranks.
    """
    mine = (None if error is None else _describe(error), dict(same or {}))
    statuses = _all_gather_object(mine, ctx)
    if error is not None:
        raise error
    failed = [(r, message) for r, (message, _) in enumerate(statuses) if message is not None]
    if failed:
        raise DistributedError(
            "; ".join(f"rank {r} of {ctx.world_size} failed ({message})" for r, message in failed)
            + "; this rank stops too"
        )
    for key, value in mine[1].items():
        values = [s.get(key) for _, s in statuses]
        if any(v != value for v in values):
            raise DistributedError(
                f"the ranks differ in {key} (" + "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                + "); they must be the same on every rank"
            )


# --------------------------------------------------------------------------- #
# Collectives (no-ops for one process)
# --------------------------------------------------------------------------- #


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of ``t`` over the ranks (``t`` itself for one process), on ``t``'s device."""
    if ctx.world_size == 1:
        return t
    buf = t.to(ctx.device).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def _all_gather_rows(t: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's ``t`` (same trailing shape, any number of rows), in rank order."""
    if ctx.world_size == 1:
        return [t]
    rows = torch.tensor([t.shape[0]], dtype=torch.long, device=ctx.device)
    sizes = [torch.zeros_like(rows) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, rows)
    sizes_ = [int(s) for s in sizes]
    longest = max(sizes_)
    padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=ctx.device)
    padded[: t.shape[0]] = t.to(ctx.device)
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded)
    return [o[:s].to(t.device) for o, s in zip(out, sizes_)]


def _all_gather_object(obj, ctx: DistContext) -> list:
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast_object(obj, ctx: DistContext):
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- #
# Recording over a stream of prompts
# --------------------------------------------------------------------------- #


def _batches(prompts: Iterable[str], batch_size: int) -> Iterator[list[str]]:
    it = iter(prompts)
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch:
            return
        yield batch


class _Digest:
    """Iterates over ``prompts``, counting them and hashing their text (SHA-256)."""

    def __init__(self, prompts: Iterable[str]):
        self.prompts, self.count, self.sha = prompts, 0, hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        for text in self.prompts:
            if not isinstance(text, str):
                raise TypeError(f"prompt {self.count} of the stream is a {type(text).__name__}, not a string")
            data = text.encode("utf-8", "surrogatepass")
            self.sha.update(len(data).to_bytes(8, "little"))
            self.sha.update(data)
            self.count += 1
            yield text

    def summary(self) -> str:
        return f"{self.count} prompts, SHA-256 {self.sha.hexdigest()[:16]}"


def _own_chunks(prompts: Iterable[str], batch_size: int, chunk_batches: int, ctx: DistContext):
    """This rank's batches (``b % world_size == rank``), ``chunk_batches`` at a time."""
    chunk: list[str] = []
    held = 0
    for b, batch in enumerate(_batches(prompts, batch_size)):
        if b % ctx.world_size != ctx.rank:
            continue
        chunk.extend(batch)
        held += 1
        if held == chunk_batches:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def record_stream(
    model: torch.nn.Module,
    tokenizer,
    prompts: Iterable[str],
    *,
    pool: Literal["mean", "last"] = "mean",
    batch_size: int = 16,
    store: Literal["samples", "moments"] = "moments",
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
        As for :func:`hp_mini.record_heads`.
    batch_size : int, default 16
        Prompts per forward pass; batch ``b`` goes to rank ``b % world_size``.
    store : {"samples", "moments"}, default "moments"
        ``"moments"``: only counts, sums and second moments, summed across
        ranks with ``all_reduce``; memory does not grow with the number of
        prompts. ``"samples"``: the pooled ``z`` of every prompt, gathered
        from all ranks in prompt order (needed by ``criterion="l1"``).
    chunk_batches : int, default 8
        Batches handed to :func:`hp_mini.record_heads` at a time: at most
        ``chunk_batches * batch_size`` prompts are held in memory.
    layers : list of int, optional
        Record only these layers.
    ctx : DistContext, optional
        From :func:`init_distributed`; default one process.
    progress : bool, default True
        A progress bar over batches on rank 0 (tqdm, on stderr).

    Returns
    -------
    HeadActivations
        The same on every rank. ``texts`` is empty (the prompts are not
        kept). With ``store="samples"``, ``z`` equals the ``z`` of
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
    if store not in ("samples", "moments"):
        raise ValueError(f"store must be 'samples' or 'moments', got {store!r}")
    batch_size = check_count(batch_size, "batch_size")
    chunk_batches = check_count(chunk_batches, "chunk_batches")
    if isinstance(prompts, str):
        raise TypeError("prompts must be an iterable of prompts, not one string")
    check_weights_loaded(model, "record_stream")

    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        total = math.ceil(len(prompts) / batch_size) if hasattr(prompts, "__len__") else None
        bar = tqdm(total=total, desc=f"recording heads ({ctx.world_size} process"
                   f"{'es' if ctx.world_size > 1 else ''})", unit="batch", leave=False)

    own: HeadActivations | None = None  # this rank's prompts so far (moments: merged as they come)
    parts: list[HeadActivations] = []
    stream = _Digest(prompts)
    error: Exception | None = None
    try:
        for chunk in _own_chunks(stream, batch_size, chunk_batches, ctx):
            acts = record_heads(model, tokenizer, chunk, pool=pool, batch_size=batch_size, layers=layers,
                                store=store, progress=False)
            acts.texts = []  # the prompts are not kept
            if store == "moments":
                own = acts if own is None else HeadActivations.concatenate([own, acts])
            else:
                parts.append(acts)
            if bar is not None:
                bar.update(math.ceil(len(chunk) / batch_size) * ctx.world_size)
    except Exception as err:  # told to the other ranks below, then raised here
        error = err
    finally:
        if bar is not None:
            bar.close()
    exchange_status(ctx, error, same={"the prompts they read": stream.summary()})
    if stream.count == 0:
        raise ValueError("the prompt stream is empty; give at least one prompt")
    if parts:
        own = HeadActivations.concatenate(parts)

    # Rank 0 always holds batch 0, so its projections are the reference ones.
    frame = None if own is None else (own.W_O, own.bias, list(own.layers), own.bias_factor is not None)
    W_O, bias, recorded, folded = _broadcast_object(frame, ctx)
    width = (W_O.shape[0], W_O.shape[1], W_O.shape[3])

    if store == "moments":
        mine = own.moments if own is not None else HeadMoments(
            0, torch.zeros(width, dtype=torch.float64), torch.zeros(*width, width[-1], dtype=torch.float64)
        )
        n = int(all_reduce_sum(torch.tensor([mine.count], dtype=torch.long), ctx)[0])
        moments = HeadMoments(n, all_reduce_sum(mine.sum, ctx), all_reduce_sum(mine.second, ctx))
        return HeadActivations(None, W_O, bias, recorded, moments, [], None)

    z_own = own.z if own is not None else torch.zeros(0, *width)
    z = interleave_batches(_all_gather_rows(z_own, ctx), batch_size)
    factor = None
    if folded:
        own_factor = own.bias_factor if own is not None else None
        if own_factor is None:
            own_factor = torch.ones(len(z_own), width[0])
        factor = interleave_batches(_all_gather_rows(own_factor, ctx), batch_size)
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


# --------------------------------------------------------------------------- #
# Ranking with the heads shared out
# --------------------------------------------------------------------------- #


def shard_heads(heads: Sequence[Head], ctx: DistContext) -> list[Head]:
    """This rank's contiguous block of ``heads`` (sizes differ by at most one)."""
    n, world = len(heads), ctx.world_size
    start = ctx.rank * n // world
    stop = (ctx.rank + 1) * n // world
    return [tuple(h) for h in heads[start:stop]]


def rank_heads_distributed(
    acts: HeadActivations,
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int = 50,
    criterion: Literal["l1", "l2"] = "l1",
    center: bool = True,
    batch_heads: int = 90,
    keep_coefficients: bool = False,
    ctx: DistContext | None = None,
    progress: bool = True,
) -> HeadRanking:
    """Rank every recorded head by SOMP, each rank pursuing a block of the heads.

    The ranking equals :func:`hp_mini.rank_heads` with ``method="somp"`` and
    ``out_dtype=torch.float64``: the scores (the EVR after ``n_atoms`` steps)
    are kept in float64 and heads with equal scores keep their layer-major
    order. The inputs are checked by :func:`hp_mini.ranking.check_ranking_inputs`.

    Parameters
    ----------
    acts : HeadActivations
        The same on every rank (from :func:`record_stream`).
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms.
    n_atoms : int, default 50
        SOMP steps per head (capped at the dictionary's size, with a warning).
    criterion : {"l1", "l2"}, default "l1"
        See :func:`hp_mini.somp`.
    center, batch_heads
        As for :func:`hp_mini.pursue_heads`.
    keep_coefficients : bool, default False
        Keep every head's ``[n, k]`` coefficients. They are dropped by default
        before gathering (they grow with the number of prompts); the atoms,
        their order and the EVR are kept.
    ctx : DistContext, optional
        From :func:`init_distributed`; default one process.
    progress : bool, default True
        A progress bar over this rank's heads, on rank 0.

    Returns
    -------
    HeadRanking
        With float64 ``scores``, identical on every rank.

    Raises
    ------
    DistributedError
        On the other ranks when one fails during its pursuit (that one raises
        its own error); see :func:`exchange_status`.
    """
    ctx = ctx or DistContext()
    dic, n_atoms = check_ranking_inputs(acts, dictionary, n_atoms=n_atoms)
    error: Exception | None = None
    try:
        found = pursue_heads(acts, dic, n_atoms=n_atoms, criterion=criterion, center=center,
                             heads=shard_heads(acts.heads, ctx), batch_heads=batch_heads, dtype=torch.float64,
                             out_dtype=torch.float64, progress=progress and ctx.is_main)
    except Exception as err:  # told to the other ranks, then raised here
        error = err
    exchange_status(ctx, error)
    if not keep_coefficients:
        found = {h: dataclasses.replace(r, coefficients=None) for h, r in found.items()}
    results: dict[Head, PursuitResult] = {}
    for part in _all_gather_object(found, ctx):
        results.update(part)
    return HeadRanking.from_pursuit({h: results[h] for h in acts.heads}, dtype=torch.float64)

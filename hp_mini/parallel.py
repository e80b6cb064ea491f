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
>>> from hp_mini.parallel import init_distributed, record_stream, rank_heads_distributed
>>> ctx = init_distributed()                      # one process unless launched by torchrun
>>> model, tokenizer = hp_mini.load_model()                               # doctest: +SKIP
>>> acts = record_stream(model, tokenizer, open("prompts.txt"), ctx=ctx, store="moments")  # doctest: +SKIP
>>> words = hp_mini.concept_words("countries")
>>> dic = hp_mini.unembedding_dictionary(model, tokenizer, words)         # doctest: +SKIP
>>> ranking = rank_heads_distributed(acts, dic, criterion="l2", ctx=ctx)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

__all__ = ["all_gather_object", "all_gather_rows", "all_reduce_sum", "barrier", "broadcast_object", "collective_timeout", "DEFAULT_TIMEOUT_S", "DistContext", "DistributedError", "exchange_status", "init_distributed", "shutdown_distributed", "TIMEOUT_ENV"]

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
    statuses = all_gather_object(mine, ctx)
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


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of ``t`` over the ranks (``t`` itself for one process), on ``t``'s device."""
    if ctx.world_size == 1:
        return t
    buf = t.to(ctx.device).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_gather_rows(t: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
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


def all_gather_object(obj, ctx: DistContext) -> list:
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

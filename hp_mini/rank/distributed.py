"""Rank heads with SOMP over several processes: each pursues a contiguous block of heads.

:func:`shard_heads` gives each rank its block; :func:`rank_heads_distributed`
runs :func:`hp_mini.pursue_heads` on it and gathers the results, so that every
rank holds the full ranking (one process: no collective at all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch

from hp_mini.model.sites import Head
from hp_mini.parallel import DistContext, all_gather_object, exchange_status
from hp_mini.pursuit import PursuitResult
from hp_mini.rank.ranking import HeadRanking, check_ranking_inputs, pursue_heads
from hp_mini.read.dictionary import Dictionary
from hp_mini.record.activations import HeadActivations

__all__ = ["rank_heads_distributed", "shard_heads"]


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
    order. The inputs are checked by :func:`hp_mini.rank.ranking.check_ranking_inputs`.

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
    for part in all_gather_object(found, ctx):
        results.update(part)
    return HeadRanking.from_pursuit({h: results[h] for h in acts.heads}, dtype=torch.float64)

"""Random control heads for an edit, as the paper draws them.

:func:`random_heads_like` draws random heads with the same number per layer as
a selection and disjoint from it, so that an edit of the selection can be
compared with an edit of as many heads in the same layers. Where a layer has
no other heads left, the nearest layers lend them (:func:`heads_moved` counts
how many moved). The draws are distinct sets as long as there are enough of
them; :func:`distinct_sets` counts the distinct sets of a list of draws.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from hp_mini.model.sites import Head
from hp_mini.record.activations import HeadActivations

__all__ = ["distinct_sets", "heads_moved", "random_heads_like"]

# Draws tried for each new distinct set before a repeat is accepted (fill="nearest" cannot count its sets).
MAX_TRIES = 50


def random_heads_like(
    selected: Sequence[Head],
    acts: HeadActivations | Sequence[Head],
    *,
    n_draws: int = 10,
    seed: int = 0,
    fill: Literal["exact", "nearest"] = "exact",
) -> list[list[Head]]:
    """Random control sets matching a selection layer by layer.

    Parameters
    ----------
    selected : list of (layer, head)
        The selected heads.
    acts : HeadActivations or list of (layer, head)
        The heads to draw from (all recorded heads).
    n_draws : int, default 10
        Number of control sets.
    seed : int, default 0
        Seed of the draws (reproducible).
    fill : {"exact", "nearest"}, default "exact"
        What to do when a layer has fewer other heads than the selection has
        there (a model with 4 heads per layer, 3 of them selected, has 1 other
        head). ``"exact"`` raises. ``"nearest"`` draws what the layer lacks
        from the nearest layers that still have free heads (uniformly among the
        free heads of the nearest such layers): the count per layer is kept
        wherever it can be, and the depth distribution as closely as it can be
        otherwise. :func:`heads_moved` says how many heads were moved.

    Returns
    -------
    list of ``n_draws`` lists of (layer, head)
        Each has as many heads as ``selected``, none of them in ``selected``,
        with the same number in every layer (``fill="exact"``); sorted. The
        draws are distinct sets while distinct sets are left: a set drawn
        again is drawn anew, so a set repeats only once every possible set has
        been drawn (with ``fill="nearest"``, whose sets are not counted: once
        :data:`MAX_TRIES` draws in a row gave known sets). Where no set came
        again, the draws are those of independent draws with the same seed.
        :func:`distinct_sets` counts the distinct sets.

    Examples
    --------
    >>> import hp_mini
    >>> pool = [(layer, head) for layer in range(3) for head in range(4)]
    >>> draws = hp_mini.random_heads_like([(0, 1), (2, 0), (2, 3)], pool, n_draws=2)
    >>> [sorted(layer for layer, _ in d) for d in draws]
    [[0, 2, 2], [0, 2, 2]]
    >>> hp_mini.rank.controls.distinct_sets(hp_mini.random_heads_like([(0, 1), (2, 0), (2, 3)], pool, n_draws=5))
    3
    >>> full = [(1, 0), (1, 1), (1, 2)]           # 3 of layer 1's 4 heads
    >>> draw = hp_mini.random_heads_like(full, pool, n_draws=1, fill="nearest")[0]
    >>> sorted(layer for layer, _ in draw)   # layer 1's last free head, two from layers 0 and 2
    [0, 1, 2]
    """
    pool, per_layer, free = _control_layers(selected, acts, n_draws)
    if fill not in ("exact", "nearest"):
        raise ValueError(f"fill must be 'exact' or 'nearest', got {fill!r}")
    short = {layer: count - len(free[layer]) for layer, count in per_layer.items() if len(free[layer]) < count}
    if short and fill == "exact":
        layer = min(short)
        raise ValueError(
            f"layer {layer} has {per_layer[layer]} selected heads but only {len(free[layer])} others to draw "
            "from; pass fill='nearest' to take the missing heads from the nearest layers"
        )
    chosen = {tuple(h) for h in selected}
    others = sorted(h for h in pool if h not in chosen)
    if len(others) < len(chosen):
        raise ValueError(f"{len(chosen)} heads are selected but only {len(others)} others exist to draw from")
    rng = random.Random(seed)
    possible = math.prod(math.comb(len(free[layer]), count) for layer, count in per_layer.items()) if not short else None
    draws: list[list[Head]] = []
    seen: set[tuple[Head, ...]] = set()
    for _ in range(n_draws):
        draw, tries = _draw(rng, per_layer, free, short, others), 1
        while tuple(draw) in seen and (len(seen) < possible if possible is not None else tries < MAX_TRIES):
            draw, tries = _draw(rng, per_layer, free, short, others), tries + 1
        seen.add(tuple(draw))
        draws.append(draw)
    return draws


def _draw(rng: random.Random, per_layer: dict[int, int], free: dict[int, list[Head]], short: dict[int, int],
          others: list[Head]) -> list[Head]:
    """One control set: each layer's count from its free heads, what a layer lacks from the nearest layers."""
    taken: set[Head] = set()
    for layer in sorted(per_layer):
        taken.update(rng.sample(free[layer], min(per_layer[layer], len(free[layer]))))
    for layer in sorted(short):
        for _ in range(short[layer]):
            left = [h for h in others if h not in taken]
            nearest = min(abs(h[0] - layer) for h in left)
            taken.add(rng.choice([h for h in left if abs(h[0] - layer) == nearest]))
    return sorted(taken)


def distinct_sets(draws: Sequence[Sequence[Head]]) -> int:
    """How many distinct head sets a list of draws holds (the order of heads within a draw does not count).

    Examples
    --------
    >>> from hp_mini.rank.controls import distinct_sets
    >>> distinct_sets([[(1, 0), (2, 1)], [(2, 1), (1, 0)], [(1, 2), (2, 1)]])
    2
    """
    return len({tuple(sorted(tuple(h) for h in draw)) for draw in draws})


def heads_moved(selected: Sequence[Head], acts: HeadActivations | Sequence[Head]) -> int:
    """How many heads of each ``random_heads_like(..., fill="nearest")`` draw lie outside their layer.

    Zero when every layer has enough other heads to match the selection
    exactly (the paper's control); otherwise the number of heads taken from
    the nearest layers instead.

    Examples
    --------
    >>> from hp_mini.rank.controls import heads_moved
    >>> pool = [(layer, head) for layer in range(3) for head in range(4)]
    >>> heads_moved([(1, 0), (1, 1)], pool), heads_moved([(1, 0), (1, 1), (1, 2)], pool)
    (0, 2)
    """
    _, per_layer, free = _control_layers(selected, acts, 1)
    return sum(max(0, count - len(free[layer])) for layer, count in per_layer.items())


def _control_layers(selected, acts, n_draws):
    pool = list(acts.heads) if isinstance(acts, HeadActivations) else [tuple(h) for h in acts]
    chosen = {tuple(h) for h in selected}
    unknown = chosen - set(pool)
    if unknown:
        raise ValueError(f"selected heads {sorted(unknown)} are not among the available heads")
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws must be an integer of at least 1, got {n_draws!r}")
    per_layer: dict[int, int] = {}
    for layer, _ in chosen:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    free = {layer: sorted(h for h in pool if h[0] == layer and h not in chosen) for layer in per_layer}
    return pool, per_layer, free

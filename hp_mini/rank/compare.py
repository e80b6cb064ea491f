"""How much two rankings of the same heads agree: top-k overlap, Jaccard index and Spearman's rho.

:meth:`hp_mini.HeadRanking.compare` returns a :class:`RankingComparison`; the rank
statistics it rests on are :func:`average_ranks` and :func:`spearman`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hp_mini.model.sites import Head, head_label

__all__ = ["RankingComparison", "average_ranks", "jaccard", "spearman"]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``x``, tied values sharing the mean of their ranks."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    values = x[order]
    i, n = 0, len(x)
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN when a list is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denom if denom > 0 else float("nan")


def jaccard(a, b) -> float:
    """The Jaccard index of two sets of heads: the share of the heads in either that are in both.

    Parameters
    ----------
    a, b : iterable of (layer, head)
        Two sets of heads (duplicates count once).

    Returns
    -------
    float
        ``|a & b| / |a | b|``, between 0 and 1.

    Raises
    ------
    ValueError
        When both are empty (the index is not defined).

    Examples
    --------
    >>> jaccard([(0, 1), (2, 3)], [(2, 3), (4, 5)])
    0.3333333333333333
    """
    a, b = set(map(tuple, a)), set(map(tuple, b))
    if not a | b:
        raise ValueError("the Jaccard index of two empty sets is not defined")
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class RankingComparison:
    """The agreement of two rankings (from :meth:`HeadRanking.compare`).

    Attributes
    ----------
    k : int
        Size of the top lists.
    n_heads : int
        Number of heads compared.
    top_a, top_b : list of (layer, head)
        The top-``k`` heads of the first and of the second ranking.
    shared : list of (layer, head)
        Heads in both top lists, sorted.
    jaccard : float
        ``len(shared)`` over the number of heads in either top list.
    spearman : float
        Spearman's rank correlation of the two scores over the ``n_heads`` heads.
    """

    k: int
    n_heads: int
    top_a: list[Head]
    top_b: list[Head]
    shared: list[Head]
    jaccard: float
    spearman: float

    @property
    def overlap(self) -> int:
        """The number of heads in both top lists."""
        return len(self.shared)

    @property
    def chance_jaccard(self) -> float:
        """The mean Jaccard index of two random top-``k`` sets: ``k / (2 n_heads - k)``."""
        return self.k / (2 * self.n_heads - self.k)

    def __str__(self) -> str:
        labels = ", ".join(head_label(*h) for h in self.shared) or "none"
        return (
            f"top {self.k}: {self.overlap} {'head' if self.overlap == 1 else 'heads'} in common ({labels}), "
            f"Jaccard {self.jaccard:.2f}; "
            f"Spearman {self.spearman:.2f} over {self.n_heads} heads"
        )

"""Step 3, rank: heads ordered for a concept, and the controls to compare them with.

- :mod:`~hp_mini.rank.ranking`: :func:`rank_heads` (SOMP's explained variance, or the
  logit lens) and :class:`HeadRanking`.
- :mod:`~hp_mini.rank.compare`: how much two rankings agree.
- :mod:`~hp_mini.rank.controls`: random heads in the same layers.
- :mod:`~hp_mini.rank.distributed`: SOMP over the heads, shared out between processes.

The pursuit itself (MP, OMP, SOMP) is :mod:`hp_mini.pursuit`.
"""

from __future__ import annotations

from hp_mini.rank.ranking import HeadRanking, pursue_heads, rank_heads
from hp_mini.rank.controls import random_heads_like

__all__ = ["HeadRanking", "pursue_heads", "random_heads_like", "rank_heads"]

"""Step 4, edit: scale chosen heads, and generate with the model as edited.

- :mod:`~hp_mini.edit.scaling`: :func:`scale_heads` (alpha = -1 inverts a head, 0
  removes it, 5 enhances it).
- :mod:`~hp_mini.edit.generation`: :func:`generate`, greedy, for text and
  vision-language models.
- :mod:`~hp_mini.edit.tree`: the prefix-tree decoding behind
  ``generate(..., share_prefixes=True)``.
"""

from __future__ import annotations

from hp_mini.edit.scaling import scale_heads
from hp_mini.edit.generation import generate

__all__ = ["generate", "scale_heads"]

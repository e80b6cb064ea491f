"""What hp_mini's vision trainers share: the thread count they train on.

The trained vision models are small: on one thread their matrices train as
fast as on several on an idle machine, and many times faster on a busy one (no
waiting at thread barriers), and one thread makes a run repeat bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads, and give the caller's count back afterwards.

    Parameters
    ----------
    n : int
        At least 1.

    Raises
    ------
    ValueError
        ``n`` is not a positive int.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

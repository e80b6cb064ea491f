"""Step 1, record: what every attention head writes into the residual stream.

- :mod:`~hp_mini.record.core`: the recorder core. It hooks every site, takes
  batches through the model and hands each site's per-token writes to a
  pooling layer and a store; the modules below are its input adapters.
- :mod:`~hp_mini.record.activations`: :func:`record_heads` over text prompts (or
  a vision-language model's image tokens), pooled per prompt or kept per token,
  and its results (:class:`HeadActivations`).
- :mod:`~hp_mini.record.prompts`: how prompts become batches and which positions
  a pooling mode selects.
- :mod:`~hp_mini.record.images`: the heads of an open_clip image tower.
- :mod:`~hp_mini.record.stream`: a stream of prompts, in one process or many.
"""

from __future__ import annotations

from hp_mini.record.activations import HeadActivations, HeadMoments, record_heads

__all__ = ["HeadActivations", "HeadMoments", "record_heads"]

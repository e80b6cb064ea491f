"""The logit lens of attention heads: what each head's mean write says in the vocabulary.

The logit lens reads a vector in the residual stream through the unembedding
(Nostalgebraist, 2020). For a head, the vector is its pooled contribution
``x_h``; :func:`mean_head_writes` gives its mean over the prompts, every head at
once, ``[layers, heads, d_model]``.
"""

from __future__ import annotations

import torch

from hp_mini.record.activations import HeadActivations

__all__ = ["mean_head_writes"]


def mean_head_writes(acts: HeadActivations) -> torch.Tensor:
    """Every head's write into the residual stream, averaged over the prompts.

    ``W_O^h`` times the mean pooled head output, in float64: the vector whose
    dot product with an atom is the head's mean logit for it (the logit lens).

    Parameters
    ----------
    acts : HeadActivations
        With samples or moments.

    Returns
    -------
    torch.Tensor ``[n_layers, n_heads, d_model]``, float64
        Rows in the order of ``acts.layers``.
    """
    if not isinstance(acts, HeadActivations):
        raise TypeError(f"acts must be HeadActivations (from hp_mini.record_heads), got {type(acts).__name__}")
    if acts.z is not None:
        zbar = acts.z.double().mean(0)  # [L, H, dh]
    elif acts.moments is not None:
        zbar = acts.moments.sum.double() / acts.moments.count
    else:
        raise ValueError("acts holds neither samples nor moments; record with store='samples' or 'moments'")
    return torch.einsum("lhdk,lhk->lhd", acts.W_O.double(), zbar)

"""The heads of one attention layer, and how heads are named.

A :class:`LayerHeads` holds what is known of one layer's heads: the output
projection whose input is the concatenation of the heads' outputs ``z``, the
number of heads, the weight layout, and whatever sits between that projection
and the residual add (a post-norm, a constant multiplier). From it come each
head's slice of ``W_O`` and its exact contribution to the residual stream
(see :mod:`hp_mini.model.heads`). :func:`attention_heads` finds one per layer.

A head is named ``(layer, head)`` (:data:`Head`) in code and ``"L{layer}H{head}"``
(:func:`head_label`) on pages and in files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the class only: architectures imports this module's users
    from hp_mini.model.architectures import Norm

__all__ = ["Head", "head_label", "LayerHeads", "parse_head_label"]

Head = tuple[int, int]
"""A head, as ``(layer, head)``: its layer's index in the model and its index in that layer."""


def head_label(layer: int, head: int) -> str:
    """The label of a head, as used throughout the book: ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


def parse_head_label(label: str) -> tuple[int, int]:
    """The ``(layer, head)`` of a label ``"L{layer}H{head}"`` (the inverse of :func:`head_label`)."""
    match = re.fullmatch(r"\s*L(\d+)H(\d+)\s*", label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(f"{label!r} is not a head label: write L<layer>H<head>, e.g. 'L23H4'")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class LayerHeads:
    """The heads of one attention layer.

    Attributes
    ----------
    layer : int
        Index of the layer in the model.
    module : nn.Module
        The output projection. Its input ``[..., n_heads * d_head]`` is the
        concatenation of the heads' outputs ``z``.
    n_heads : int
        Number of (query) heads. With grouped-query attention this is the
        number of query heads, not of key/value heads.
    d_head : int
        Width of one head's output ``z_h``.
    layout : {"out_in", "in_out"}
        How ``module.weight`` is stored: ``"out_in"`` for ``nn.Linear``
        (``[d_model, n_heads * d_head]``), ``"in_out"`` for GPT-2's ``Conv1D``.
    post_norm : Norm or None
        The norm between the projection and the residual add (post-norm layers).
    multiplier : float
        A constant multiplying the attention output before the add (Granite).
    """

    layer: int
    module: nn.Module
    n_heads: int
    d_head: int
    layout: Literal["out_in", "in_out"] = "out_in"
    post_norm: Norm | None = None
    multiplier: float = 1.0

    @property
    def weight(self) -> torch.Tensor:
        """The projection as ``[d_model, n_heads * d_head]``."""
        w = self.module.weight
        return w if self.layout == "out_in" else w.T

    @property
    def d_model(self) -> int:
        return self.weight.shape[0]

    @property
    def W_O(self) -> torch.Tensor:
        """Per-head blocks of the projection, ``[n_heads, d_model, d_head]``: ``o = sum_h W_O[h] z_h + b``."""
        w = self.weight
        return w.reshape(w.shape[0], self.n_heads, self.d_head).permute(1, 0, 2)

    @property
    def bias(self) -> torch.Tensor | None:
        """The projection's bias ``[d_model]`` (it belongs to no head), or ``None``."""
        return getattr(self.module, "bias", None)

    @property
    def gain(self) -> torch.Tensor:
        """The constant per-coordinate factor between ``o`` and the residual write, ``[d_model]`` float32.

        ``multiplier * g`` on post-norm layers, ``multiplier`` elsewhere.
        """
        g = self.post_norm.gain if self.post_norm is not None else torch.ones(self.d_model)
        return self.multiplier * g.to(self.weight.device)

    @property
    def W_write(self) -> torch.Tensor:
        """``W_O`` with :attr:`gain` folded in, ``[n_heads, d_model, d_head]`` float32.

        ``x_h = token_factor(o) * W_write[h] @ z_h`` is head ``h``'s exact residual write.
        """
        return self.gain[None, :, None] * self.W_O.detach().float()

    def split(self, z: torch.Tensor) -> torch.Tensor:
        """``[..., n_heads * d_head]`` -> ``[..., n_heads, d_head]``."""
        return z.reshape(*z.shape[:-1], self.n_heads, self.d_head)

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim >= 2 and z.shape[-2:] == (self.n_heads, self.d_head):
            return z.reshape(*z.shape[:-2], self.n_heads * self.d_head)
        if z.shape[-1] != self.n_heads * self.d_head:
            raise ValueError(
                f"z must be [..., {self.n_heads * self.d_head}] or [..., {self.n_heads}, {self.d_head}], "
                f"got {tuple(z.shape)}"
            )
        return z

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The projection's output ``o = W z + b``, ``[..., d_model]`` float32."""
        z = self._flat(z).float()
        o = z @ self.weight.detach().float().T
        return o + self.bias.detach().float() if self.bias is not None else o

    def token_factor(self, o: torch.Tensor) -> torch.Tensor:
        """The per-token factor ``[..., 1]``: ``1 / rms(o)`` on post-norm layers, 1 elsewhere."""
        if self.post_norm is None:
            return torch.ones(*o.shape[:-1], 1, dtype=torch.float32, device=o.device)
        return self.post_norm.inverse_scale(o)

    def pieces(self, z: torch.Tensor) -> torch.Tensor:
        """The heads' pieces of the projection's output, ``W_O[h] z_h``: ``[..., n_heads, d_model]``.

        Their sum plus :attr:`bias` is ``o``; they are the residual writes only
        on plain pre-norm layers (see :meth:`contributions`).
        """
        z = self.split(self._flat(z))
        return torch.einsum("...hk,hdk->...hd", z.to(self.weight.dtype), self.W_O)

    def contributions(self, z: torch.Tensor) -> torch.Tensor:
        """What each head adds to the residual stream, ``[..., n_heads, d_model]``.

        ``z`` is the projection's input at each token, ``[..., n_heads * d_head]``
        or ``[..., n_heads, d_head]``. With the norm's per-token factor and the
        gain folded in, the contributions plus :meth:`bias_share` sum exactly to
        what the layer adds to the residual stream.
        """
        factor = self.token_factor(self.project(z)) if self.post_norm is not None else 1.0
        zf = self.split(self._flat(z)).float() * (factor[..., None] if self.post_norm is not None else 1.0)
        return torch.einsum("...hk,hdk->...hd", zf, self.W_write)

    def bias_share(self, z: torch.Tensor) -> torch.Tensor | None:
        """The bias's share of the residual write at each token, ``[..., d_model]``, or None without a bias."""
        if self.bias is None:
            return None
        z = self._flat(z)
        b = self.gain * self.bias.detach().float()
        return b * self.token_factor(self.project(z)) if self.post_norm is not None else b.expand(*z.shape[:-1], -1)

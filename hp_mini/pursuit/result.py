"""What a pursuit takes and gives back: factored signals and the sparse code found.

:class:`FactoredSignals` holds signals ``X = Z W^T`` by their factors (an
attention head's contributions), the input of :func:`hp_mini.somp_factored`;
:class:`PursuitResult` is what every pursuit returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["FactoredSignals", "PursuitResult"]


@dataclass
class PursuitResult:
    """The sparse code found by a pursuit.

    Attributes
    ----------
    atoms : LongTensor of shape (k,)
        Indices of the chosen atoms in the dictionary, in selection order.
    labels : list of str
        Their labels (token strings for an unembedding dictionary).
    coefficients : Tensor of shape (n, k), or None
        Least-squares coefficients of every sample on the chosen atoms, column
        ``t`` for ``atoms[t]``: ``H_c ~ coefficients @ D[atoms]`` (``H_c`` is the
        centred data when ``center=True``, see ``mean``). None when the pursuit
        ran from second moments only.
    evr : Tensor of shape (k,)
        Explained variance ratio ``1 - ||R_t||_F^2 / ||H_c||_F^2`` after each step.
    order : LongTensor of shape (k,)
        The chosen atoms sorted by the norm of their coefficient column,
        largest first.
    scores : Tensor of shape (k,)
        The selection criterion of each chosen atom when it was chosen.
    criterion : str
        ``"l1"``, ``"l2"`` or ``"mp"``.
    mean : Tensor of shape (d,), or None
        The mean that was subtracted (``center=True``), else None.
    coefficient_norms : Tensor of shape (k,)
        Norm of each coefficient column (in selection order).
    exact_scores : int or None
        How many exact criterion scores the pursuit computed, summed over its
        steps; every other atom was ruled out by a certified upper bound of its
        score. At most ``k`` times the dictionary's size; the lower, the tighter
        the bounds were. None for :func:`matching_pursuit`.
    screened_scores : int or None
        How many L1 scores were first computed in float32 with a certified
        error bound (the screen of a float64 L1 pursuit, see
        :mod:`hp_mini.pursuit`), summed over the steps; only the atoms whose interval could
        still win were then scored exactly. 0 when the pursuit did not screen,
        None for :func:`matching_pursuit`.
    """

    atoms: torch.Tensor
    labels: list[str]
    coefficients: torch.Tensor | None
    evr: torch.Tensor
    order: torch.Tensor
    scores: torch.Tensor
    criterion: str
    mean: torch.Tensor | None = None
    coefficient_norms: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    exact_scores: int | None = None
    screened_scores: int | None = None

    def __len__(self) -> int:
        return len(self.atoms)

    @property
    def ordered_labels(self) -> list[str]:
        """The labels sorted by coefficient norm (see ``order``)."""
        position = {int(a): i for i, a in enumerate(self.atoms)}
        return [self.labels[position[int(a)]] for a in self.order]

    def to_frame(self):
        """A table with one row per chosen atom, in selection order."""
        import pandas as pd

        return pd.DataFrame(
            {
                "step": range(1, len(self) + 1),
                "atom": self.atoms.tolist(),
                "label": self.labels,
                "score": self.scores.tolist(),
                "evr": self.evr.tolist(),
                "coefficient_norm": self.coefficient_norms.tolist(),
            }
        )

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self.labels[:5]) + (", ..." if len(self) > 5 else "")
        evr = f"{float(self.evr[-1]):.3f}" if len(self) else "n/a"
        return f"PursuitResult(criterion={self.criterion!r}, k={len(self)}, evr={evr}, atoms=[{shown}])"


@dataclass
class FactoredSignals:
    """Signals ``X = Z W^T`` (one row per sample) held by their factors.

    An attention head's contributions have this form: ``Z`` holds its outputs
    before the output projection (``[n, d_head]``) and ``W`` is its slice of
    ``W_O`` (``[d_model, d_head]``), so a pursuit over them can work in
    ``d_head`` coordinates and never form ``X``. The L2 criterion needs only
    the count, mean and scatter matrix of ``Z``; give those instead of ``Z``
    when the samples were not kept.

    Attributes
    ----------
    W : Tensor of shape (d, r)
        The map from the ``r`` coordinates to signal space.
    Z : Tensor of shape (n, r), optional
        The samples' coordinates (not centred).
    n : int, optional
        The number of samples, when ``Z`` is not given.
    mean : Tensor of shape (r,), optional
        The mean of the coordinates, when ``Z`` is not given.
    scatter : Tensor of shape (r, r), optional
        ``sum_i (z_i - mean)(z_i - mean)^T``, when ``Z`` is not given.
    name : str, default "the signals"
        Names these signals in errors and warnings (for a head: ``"L3H4"``).
    """

    W: torch.Tensor
    Z: torch.Tensor | None = None
    n: int | None = None
    mean: torch.Tensor | None = None
    scatter: torch.Tensor | None = None
    name: str = "the signals"

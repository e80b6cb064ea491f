"""SOMP written out literally: the oracle that the fast engine is checked against.

:func:`reference_somp` is SOMP as Head Pursuit states it (L. Basile et al.,
"Head Pursuit: Probing Attention Specialization in Multimodal Transformers",
NeurIPS 2025, arXiv:2510.21518; J. A. Tropp, A. C. Gilbert and M. J. Strauss,
Signal Processing 86, 2006): the full ``v x n`` correlation matrix and a
least-squares refit of every chosen atom at every step. It shares no code with
the engine of :mod:`hp_mini.pursuit`, which reaches the same atoms through an
orthonormal basis and certified bounds. The tests, the
benchmarks and the exercise checkers all compare against this one function.

It is slow by design (``O(v n d)`` per step, in float64): use
:func:`hp_mini.somp` for real work.

Example
-------
>>> import torch
>>> from hp_mini.pursuit.reference import reference_somp
>>> D = torch.eye(4, dtype=torch.float64)
>>> X = torch.tensor([[3.0, 0.0, 1.0, 0.0], [2.0, 0.0, -1.0, 0.0]])
>>> reference_somp(X, D, 2, center=False).atoms
[0, 2]
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

__all__ = ["ReferenceSOMP", "reference_somp"]


class ReferenceSOMP(NamedTuple):
    """What :func:`reference_somp` returns.

    Attributes
    ----------
    atoms : list of int
        The chosen atoms, in selection order.
    evr : Tensor of shape (k,)
        ``1 - ||R_t||_F^2 / ||H||_F^2`` after each step (float64).
    coefficients : Tensor of shape (n, k)
        The least-squares coefficients after the last step: ``H ~ coefficients @ D[atoms]``.
    scores : Tensor of shape (k,)
        The criterion of each atom when it was chosen (float64).
    """

    atoms: list[int]
    evr: torch.Tensor
    coefficients: torch.Tensor
    scores: torch.Tensor


def reference_somp(
    X: torch.Tensor,
    D: torch.Tensor,
    n_atoms: int,
    *,
    criterion: Literal["l1", "l2"] = "l1",
    center: bool = True,
) -> ReferenceSOMP:
    """Simultaneous OMP of the rows of ``X`` in the atoms ``D``, step by literal step.

    Parameters
    ----------
    X : Tensor of shape (n, d)
        The signals, one per row.
    D : Tensor of shape (v, d)
        The atoms, one per row.
    n_atoms : int
        Number of steps.
    criterion : {"l1", "l2"}, default "l1"
        Score of atom ``j``: ``sum_i |<d_j, r_i>|`` or ``sqrt(sum_i <d_j, r_i>^2)``.
    center : bool, default True
        Subtract the mean of ``X`` first (``H = X - mean``), else ``H = X``.

    Returns
    -------
    ReferenceSOMP
        ``(atoms, evr, coefficients, scores)``.

    Notes
    -----
    Each step computes ``P = D R^T``, scores every atom from its row of ``P``,
    takes the best atom not chosen yet (the lowest index among ties), and
    refits all chosen atoms to ``H`` by least squares: ``R = H - C D[S]``
    (Tropp, Gilbert and Strauss 2006). Everything is in float64.
    """
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")
    X, D = torch.as_tensor(X).double(), torch.as_tensor(D).double()
    H = X - X.mean(0) if center else X
    R, chosen, evr, scores = H.clone(), [], [], []
    total = H.square().sum()
    C = H.new_zeros(H.shape[0], 0)
    for _ in range(int(n_atoms)):
        P = D @ R.T  # v x n
        score = P.abs().sum(1) if criterion == "l1" else P.square().sum(1).sqrt()
        score[chosen] = -float("inf")
        p = int(score.argmax())
        scores.append(float(score[p]))
        chosen.append(p)
        DS = D[chosen]  # k x d
        C = torch.linalg.lstsq(DS.T, H.T).solution.T  # n x k:  H ~ C D[S]
        R = H - C @ DS
        evr.append(float(1 - R.square().sum() / total))
    return ReferenceSOMP(chosen, torch.tensor(evr, dtype=torch.float64), C, torch.tensor(scores, dtype=torch.float64))

"""Plain matching pursuit of one signal (Mallat and Zhang 1993): its first step is the logit lens."""

from __future__ import annotations

import torch

from hp_mini.read.dictionary import Dictionary
import hp_mini.pursuit._validation as check
from hp_mini.pursuit.engine import ZERO_RESIDUAL
from hp_mini.pursuit.result import PursuitResult

__all__ = ["matching_pursuit"]


def matching_pursuit(
    x: torch.Tensor,
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int,
    dtype: torch.dtype = torch.float64,
) -> PursuitResult:
    """Plain Matching Pursuit of one signal; its first step is the logit lens.

    Parameters
    ----------
    x : Tensor of shape (d,)
        The signal (for a head: one contribution ``x_h``).
    dictionary : Dictionary or Tensor of shape (v, d)
        The atoms, one per row.
    n_atoms : int
        Number of steps (any integer type).
    dtype : torch.dtype, default torch.float64
        Precision of the computation: float32 or float64 (half-precision
        inputs are upcast).

    Returns
    -------
    PursuitResult
        ``atoms`` may repeat: plain MP never refits, so it can come back to an
        atom. ``coefficients``, of shape (1, k), holds the coefficient of each step.
        Fewer than ``n_atoms`` steps, with a warning, when the residual
        becomes zero or orthogonal to every atom.

    Notes
    -----
    Each step picks ``j = argmax |<d_j, r>|``, takes ``c = <d_j, r> / ||d_j||^2``
    and sets ``r = r - c d_j`` (Mallat & Zhang 1993). Correlated atoms are
    picked one after the other, since nothing is explained away beyond the
    one atom.

    Examples
    --------
    >>> import torch, hp_mini
    >>> D = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    >>> hp_mini.matching_pursuit(torch.tensor([1.0, 1.0]), D, n_atoms=3).atoms.tolist()
    [1, 0, 1]
    """
    check.check_dtype(dtype)
    x, xd = check.signals(x, 1, dtype, name="x", hint="")
    D, labels = check.dictionary_matrix(dictionary, x.shape[0], dtype)
    n_atoms = check.count(n_atoms)  # atoms may repeat: no bound from the dictionary's size
    total = xd.square().sum()
    if total == 0:
        raise ValueError("x is all zeros")
    norms2 = D.square().sum(1)
    atoms, coefs, scores, evr = _steps(xd, D, norms2, n_atoms, total)
    atoms_t = torch.tensor(atoms, dtype=torch.long)
    coef_t = torch.stack(coefs) if coefs else torch.zeros(0, dtype=dtype)
    norms = coef_t.abs() * norms2[atoms_t].sqrt()
    out = check.out_dtype(x, dtype)
    return PursuitResult(
        atoms=atoms_t,
        labels=[labels[j] for j in atoms],
        coefficients=coef_t[None].to(out),
        evr=torch.stack(evr).to(out) if evr else torch.zeros(0, dtype=out),
        order=atoms_t[torch.argsort(norms, descending=True, stable=True)],
        scores=torch.stack(scores).to(out) if scores else torch.zeros(0, dtype=out),
        criterion="mp",
        mean=None,
        coefficient_norms=norms.to(out),
    )


def _steps(xd: torch.Tensor, D: torch.Tensor, norms2: torch.Tensor, n_atoms: int, total: torch.Tensor):
    """The steps of matching pursuit (``norms2`` the squared atom norms): lists of the atoms,
    coefficients, scores and EVR, one entry per step."""
    r = xd.clone()
    energy = total
    atoms, coefs, scores, evr = [], [], [], []
    for step in range(n_atoms):
        if energy <= ZERO_RESIDUAL * total:
            check.warn(f"the residual is zero after {step} atoms; stopped there", stacklevel=4)
            break
        corr = D @ r
        j = int(corr.abs().argmax())
        if corr[j] == 0 or norms2[j] == 0:
            check.warn(f"x is orthogonal to every atom after {step} atoms; stopped there", stacklevel=4)
            break
        c = corr[j] / norms2[j]
        r = r - c * D[j]
        energy = r.square().sum()
        atoms.append(j)
        coefs.append(c)
        scores.append(corr[j].abs())
        evr.append(1 - energy / total)
    return atoms, coefs, scores, evr

"""Sparse codes of signals in a dictionary: matching pursuit, OMP and SOMP.

For a data matrix ``H`` (``n x d``) and a dictionary ``D`` (``v x d``, one atom
per row), Simultaneous Orthogonal Matching Pursuit (SOMP) picks, one step at a
time, the atom whose correlations with the current residual are largest over
*all* samples, refits every chosen atom by least squares and updates the
residual::

    R = H ; S = []
    repeat k times:
        P = D R^T                          # v x n correlations
        p = argmax_j score(P[j])           # over atoms not yet in S
        S = S + [p]
        C = argmin_C || H - C D[S] ||_F    # least-squares refit on the support
        R = H - C D[S]

``score`` is the L1 norm of a row (``criterion="l1"``, the criterion of Head
Pursuit) or its L2 norm (``criterion="l2"``; on centred data it picks the same
atoms as the standard deviation of the correlations). The explained variance
ratio after step ``t`` is ``1 - ||R_t||_F^2 / ||H_c||_F^2``.

How it is computed (exactly, without approximation):

* ``H`` is handled through a factorisation ``H_c = Z W^T`` with ``W``
  ``d x r``. For an attention head ``W`` is its ``W_O`` slice and ``r`` is
  ``d_head``; for a plain matrix it comes from a thin SVD.
* The chosen atoms are kept as an orthonormal basis ``Q`` grown by
  (twice-repeated) Gram-Schmidt, so the residual is ``H_c (I - Q Q^T)`` and no
  least-squares problem is solved during the search.
* With ``F_t = (I - Q Q^T) W L``, where ``M = Z^T Z = L L^T``, the squared L2
  score of atom ``j`` is ``||F_t^T d_j||^2``. A step changes ``F`` by a rank-one
  term, so every score is updated from two dictionary products, ``D q_t`` and
  ``D F_t F_t^T q_t``. The L2 criterion therefore needs only the ``r x r``
  second moment ``M``, never the samples: its memory does not grow with ``n``.
* The L1 criterion needs the per-sample correlations ``p = Z a_j``. Two upper
  bounds come from the same rank-one updates: ``||p||_1 <= sqrt(n) ||p||_2`` and
  ``||p||_1 <= sqrt(sum_i w_i) (sum_i p_i^2 / w_i)^(1/2)`` with ``w_i = ||z_i||``
  (Cauchy-Schwarz; tight when the correlations scale with the samples' norms).
  The exact L1 score (``n x r`` work per atom) is computed only for the atoms
  whose bound can still beat the best exact score found; the others provably
  lose, so the result is the exact argmax.
* The coefficients in the atoms' own basis come from back-substitution with the
  triangular factor ``R`` of ``D[S]^T = Q R``.

References
----------
J. A. Tropp, A. C. Gilbert and M. J. Strauss, "Algorithms for simultaneous
sparse approximation. Part I: Greedy pursuit", Signal Processing 86 (2006).
L. Basile et al., "Head Pursuit: Probing Attention Specialization in Multimodal
Transformers", NeurIPS 2025 (arXiv:2510.21518).

Example
-------
>>> import torch, hp_mini
>>> g = torch.Generator().manual_seed(0)
>>> D = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
>>> X = torch.randn(30, 3, generator=g) @ D[[4, 9, 21]]
>>> result = hp_mini.somp(X, D, n_atoms=3, center=False)
>>> sorted(result.atoms.tolist()), round(float(result.evr[-1]), 6)
([4, 9, 21], 1.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .dictionary import Dictionary, as_dictionary

__all__ = ["PursuitResult", "matching_pursuit", "omp", "somp"]

Criterion = Literal["l1", "l2"]

# The residual counts as zero below this fraction of the initial energy (a
# relative norm of 1e-6: the rounding of float32 data lies below it).
_ZERO_RESIDUAL = 1e-12
# An atom counts as inside the span of the chosen ones below this relative norm.
_DEPENDENT = 1e-10


@dataclass
class PursuitResult:
    """The sparse code found by a pursuit.

    Attributes
    ----------
    atoms : LongTensor ``[k]``
        Indices of the chosen atoms in the dictionary, in selection order.
    labels : list of str
        Their labels (token strings for an unembedding dictionary).
    coefficients : Tensor ``[n, k]`` or None
        Least-squares coefficients of every sample on the chosen atoms, column
        ``t`` for ``atoms[t]``: ``H_c ~ coefficients @ D[atoms]`` (``H_c`` is the
        centred data when ``center=True``, see ``mean``). None when the pursuit
        ran from second moments only.
    evr : Tensor ``[k]``
        Explained variance ratio ``1 - ||R_t||_F^2 / ||H_c||_F^2`` after each step.
    order : LongTensor ``[k]``
        The chosen atoms sorted by the norm of their coefficient column,
        largest first.
    scores : Tensor ``[k]``
        The selection criterion of each chosen atom when it was chosen.
    criterion : str
        ``"l1"``, ``"l2"`` or ``"mp"``.
    mean : Tensor ``[d]`` or None
        The mean that was subtracted (``center=True``), else None.
    coefficient_norms : Tensor ``[k]``
        Norm of each coefficient column (in selection order).
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


# --------------------------------------------------------------------------- #
# Input checks
# --------------------------------------------------------------------------- #


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values")


def _check_n_atoms(n_atoms: int, n_available: int) -> None:
    if not isinstance(n_atoms, int) or isinstance(n_atoms, bool) or n_atoms < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
    if n_atoms > n_available:
        raise ValueError(f"n_atoms={n_atoms} is more than the {n_available} atoms in the dictionary")


def _check_criterion(criterion: str) -> None:
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")


def _dictionary_matrix(dictionary, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[str]]:
    dic = as_dictionary(dictionary)
    D = dic.atoms
    if D.ndim != 2:
        raise ValueError(f"the dictionary must be [v, d], got shape {tuple(D.shape)}")
    if D.shape[1] != d:
        raise ValueError(f"the dictionary's atoms are {D.shape[1]} wide but the signals are {d} wide")
    D = D.to(dtype)
    _check_finite("the dictionary", D)
    return D, dic.labels


# --------------------------------------------------------------------------- #
# The engine: SOMP on a batch of factored signals H_c = Z W^T
# --------------------------------------------------------------------------- #


@dataclass
class _Head:
    """One problem for the engine: H_c = Z W^T, with M = Z^T Z."""

    W: torch.Tensor  # [d, r]
    M: torch.Tensor  # [r, r]
    Z: torch.Tensor | None  # [n, r] or None (moments only)
    n: int
    name: str = ""


def _sqrt_factor(M: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L L^T = M`` for a symmetric PSD ``M`` (eigen-decomposition)."""
    M = 0.5 * (M + M.mT)
    evals, evecs = torch.linalg.eigh(M)
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


def _pursue(
    D: torch.Tensor,
    problems: Sequence[_Head],
    *,
    n_atoms: int,
    criterion: Criterion,
    candidates: int = 256,
    on_warning=None,
) -> list[dict]:
    """Run SOMP on several factored problems at once, step by step.

    All tensors are in ``D.dtype``. Returns, per problem, a dict with ``atoms``,
    ``scores``, ``evr``, ``U`` (``Q^T W L``), ``R`` (triangular factor), ``QW``
    (``Q^T W``).
    """
    v, d = D.shape
    h = len(problems)
    dtype, device = D.dtype, D.device
    r = max(p.W.shape[1] for p in problems)
    k = n_atoms

    W = torch.zeros(h, d, r, dtype=dtype, device=device)
    F = torch.zeros(h, d, r, dtype=dtype, device=device)
    for i, p in enumerate(problems):
        W[i, :, : p.W.shape[1]] = p.W
        F[i, :, : p.W.shape[1]] = p.W.to(dtype) @ _sqrt_factor(p.M.to(dtype))
    Wt = W.clone() if criterion == "l1" else None  # (I - Q Q^T) W, for exact L1 scores
    # For L1, a second quadratic form with the samples weighted by 1/||z_i||:
    # ||p||_1 <= sqrt(sum_i ||z_i||) * sqrt(sum_i p_i^2 / ||z_i||)   (Cauchy-Schwarz),
    # tight when |p_i| is proportional to ||z_i||, where sqrt(n) ||p||_2 is loose.
    F2 = None
    weight_sums = torch.zeros(h, dtype=dtype, device=device)
    if criterion == "l1":
        F2 = torch.zeros(h, d, r, dtype=dtype, device=device)
        for i, p in enumerate(problems):
            Z = p.Z.to(dtype)  # type: ignore[union-attr]
            w = Z.norm(dim=1)
            weight_sums[i] = w.sum()
            Zw = Z / w.clamp_min(torch.finfo(dtype).tiny).sqrt()[:, None]
            F2[i, :, : p.W.shape[1]] = p.W.to(dtype) @ _sqrt_factor(Zw.T @ Zw)

    # Initial squared L2 scores ||F_0^T d_j||^2: the bare products D W, blocked.
    s = _initial_scores(D, F)
    s2 = _initial_scores(D, F2) if F2 is not None else None
    energy0 = F.square().sum((1, 2))  # ||H_c||_F^2
    energy = energy0.clone()

    taken = torch.zeros(h, v, dtype=torch.bool, device=device)
    Q = torch.zeros(h, d, k, dtype=dtype, device=device)
    R = torch.zeros(h, k, k, dtype=dtype, device=device)
    U = torch.zeros(h, k, r, dtype=dtype, device=device)
    atoms = torch.full((h, k), -1, dtype=torch.long)
    scores = torch.zeros(h, k, dtype=dtype)
    evr = torch.zeros(h, k, dtype=dtype)
    n_done = [k] * h
    active = torch.ones(h, dtype=torch.bool)
    for i in range(h):
        if energy0[i] <= 0:
            active[i] = False
            n_done[i] = 0
            if on_warning:
                on_warning(f"{problems[i].name or 'the signal'} has zero variance; no atom was chosen")

    rows = torch.arange(h, device=device)
    for t in range(k):
        if not active.any():
            break
        # 1. choose one atom per problem
        masked = s.masked_fill(taken, -math.inf)
        if criterion == "l2":
            best = masked.argmax(1)
            chosen_scores = masked[rows, best].clamp_min(0).sqrt()
        else:
            best = torch.zeros(h, dtype=torch.long, device=device)
            chosen_scores = torch.zeros(h, dtype=dtype, device=device)
            for i in range(h):
                if active[i]:
                    bound = torch.minimum(
                        masked[i].clamp_min(0).sqrt() * math.sqrt(problems[i].n),
                        s2[i].clamp_min(0).sqrt() * weight_sums[i].sqrt(),  # type: ignore[index]
                    ).masked_fill(taken[i], -1.0)
                    best[i], chosen_scores[i] = _best_l1(
                        D, bound, Wt[i], problems[i], candidates=candidates  # type: ignore[index]
                    )
        # 2. orthogonalise the chosen atoms against the basis (Gram-Schmidt, twice)
        dp = D[best]  # [h, d]
        Qt = Q[:, :, :t]
        proj = torch.einsum("hdt,hd->ht", Qt, dp)
        resid = dp - torch.einsum("hdt,ht->hd", Qt, proj)
        proj2 = torch.einsum("hdt,hd->ht", Qt, resid)
        resid = resid - torch.einsum("hdt,ht->hd", Qt, proj2)
        proj = proj + proj2
        rho = resid.norm(dim=1)
        scale = dp.norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
        for i in range(h):
            if not active[i]:
                continue
            if rho[i] <= _DEPENDENT * scale[i] or energy[i] <= _ZERO_RESIDUAL * energy0[i]:
                active[i] = False
                n_done[i] = t
                if on_warning:
                    why = (
                        "the residual is zero"
                        if energy[i] <= _ZERO_RESIDUAL * energy0[i]
                        else "every remaining atom lies in the span of the chosen ones"
                    )
                    on_warning(f"{problems[i].name or 'the signal'}: {why} after {t} atoms; stopped there")
        act = active.to(device)
        if not act.any():
            break
        q = torch.where(act[:, None], resid / rho.clamp_min(torch.finfo(dtype).tiny)[:, None], 0)
        Q[:, :, t] = q
        R[:, :t, t] = torch.where(act[:, None], proj, 0)
        R[:, t, t] = torch.where(act, rho, 1)
        atoms[active, t] = best[act].cpu()
        scores[active, t] = chosen_scores[act].cpu()
        taken[rows[act], best[act]] = True

        # 3. the rank-one update of F and of every score
        u = torch.einsum("hdr,hd->hr", F, q)  # F_t^T q_t
        U[:, t] = u
        y = torch.einsum("hdr,hr->hd", F, u)  # F_t F_t^T q_t
        F -= q[:, :, None] * u[:, None, :]
        if Wt is not None:
            Wt -= q[:, :, None] * torch.einsum("hdr,hd->hr", Wt, q)[:, None, :]
        if F2 is not None:
            u2 = torch.einsum("hdr,hd->hr", F2, q)
            y2 = torch.einsum("hdr,hr->hd", F2, u2)
            F2 -= q[:, :, None] * u2[:, None, :]
        energy = F.square().sum((1, 2))
        evr[active, t] = (1 - energy / energy0.clamp_min(torch.finfo(dtype).tiny))[act].cpu()
        if t + 1 < k:
            # D q_t and D F_t F_t^T q_t (and the same for F2): one product for all problems
            cols = [q, y] if F2 is None else [q, y, y2]
            cy = D @ torch.cat(cols).T  # [v, 2h] or [v, 3h]
            c, e = cy[:, :h].T, cy[:, h : 2 * h].T
            s += c * (c * u.square().sum(1, keepdim=True) - 2 * e)
            if F2 is not None:
                s2 += c * (c * u2.square().sum(1, keepdim=True) - 2 * cy[:, 2 * h :].T)  # type: ignore[operator]

    out = []
    for i, p in enumerate(problems):
        kk = n_done[i]
        out.append(
            {
                "atoms": atoms[i, :kk].clone(),
                "scores": scores[i, :kk].clone(),
                "evr": evr[i, :kk].clone(),
                "R": R[i, :kk, :kk].clone(),
                "U": U[i, :kk, : p.W.shape[1]].clone(),
                "QW": (Q[i, :, :kk].T @ W[i, :, : p.W.shape[1]]).clone(),
            }
        )
    return out


def _initial_scores(D: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """``||F_i^T d_j||^2`` for every problem ``i`` and atom ``j``, ``[h, v]``, in blocks."""
    v, d = D.shape
    h, _, r = F.shape
    s = torch.empty(h, v, dtype=D.dtype, device=D.device)
    per_block = max(1, 576 // r)
    for start in range(0, h, per_block):
        block = F[start : start + per_block]  # [b, d, r]
        b = block.shape[0]
        prod = D @ block.permute(1, 0, 2).reshape(d, b * r)  # [v, b*r]
        s[start : start + b] = torch.linalg.vector_norm(prod.view(v, b, r), dim=-1).square_().T
        del prod
    return s


def _best_l1(D, bound: torch.Tensor, Wt: torch.Tensor, p: _Head, *, candidates: int):
    """The exact L1 argmax, evaluating only atoms whose upper bound can still win.

    ``bound`` holds an upper bound of every atom's L1 score (negative for chosen
    atoms): ``sqrt(n) ||P_j||_2`` and the weighted Cauchy-Schwarz bound. Once an
    exact L1 score ``b`` is known, atoms whose bound is below ``b`` cannot be
    the argmax.
    """
    Z = p.Z
    r = Z.shape[1]

    def exact(idx: torch.Tensor) -> torch.Tensor:
        A = D[idx] @ Wt[:, :r]  # [b, r]: W^T (I - QQ^T) d_j
        return (A @ Z.T).abs_().sum(1)

    first = torch.topk(bound, min(candidates, int((bound >= 0).sum())), sorted=False).indices
    vals = exact(first)
    best = vals.max()
    # Slack for rounding in the bounds, so that no possible winner is skipped.
    keep = bound >= best * (1 - 1e-9)
    keep[first] = False
    rest = keep.nonzero().flatten()
    idx, all_vals = first, vals
    for start in range(0, len(rest), 4096):
        chunk = rest[start : start + 4096]
        idx = torch.cat([idx, chunk])
        all_vals = torch.cat([all_vals, exact(chunk)])
    top = all_vals.max()
    # The lowest index among exact ties, as argmax over the full row would pick.
    winners = idx[all_vals == top]
    return winners.min(), top


def _finish(
    raw: dict,
    labels: list[str],
    *,
    Z: torch.Tensor | None,
    criterion: str,
    mean: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> PursuitResult:
    atoms, R, U, QW = raw["atoms"], raw["R"], raw["U"], raw["QW"]
    k = len(atoms)
    if k:
        # Columns of C (H_c ~ C D_S) have norms ||R^{-1} Q^T F_0||_rows.
        T = torch.linalg.solve_triangular(R, U, upper=True)
        norms = T.norm(dim=1)
        coefficients = None
        if Z is not None:
            HQ = Z.to(R.dtype) @ QW.T  # [n, k] = H_c Q
            coefficients = torch.linalg.solve_triangular(R, HQ.T, upper=True).T.to(out_dtype)
    else:
        norms = torch.zeros(0, dtype=R.dtype)
        coefficients = None if Z is None else torch.zeros(Z.shape[0], 0, dtype=out_dtype)
    order = atoms[torch.argsort(norms, descending=True, stable=True)]
    return PursuitResult(
        atoms=atoms,
        labels=[labels[int(a)] for a in atoms],
        coefficients=coefficients,
        evr=raw["evr"].to(out_dtype),
        order=order,
        scores=raw["scores"].to(out_dtype),
        criterion=criterion,
        mean=None if mean is None else mean.to(out_dtype),
        coefficient_norms=norms.to(out_dtype),
    )


def _factor(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Xc = Z W^T`` with ``W`` orthonormal, ``r`` = numerical rank of ``Xc``."""
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    tol = S.max() * max(Xc.shape) * torch.finfo(Xc.dtype).eps if S.numel() else 0
    r = max(1, int((S > tol).sum()))
    return U[:, :r] * S[:r], Vh[:r].T


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


# --------------------------------------------------------------------------- #
# Public functions
# --------------------------------------------------------------------------- #


def somp(
    X: torch.Tensor,
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int = 50,
    criterion: Criterion = "l1",
    center: bool = True,
    dtype: torch.dtype = torch.float64,
) -> PursuitResult:
    """Simultaneous Orthogonal Matching Pursuit of the rows of ``X``.

    Parameters
    ----------
    X : Tensor ``[n, d]``
        The signals, one per row (for a head: its pooled contributions).
    dictionary : Dictionary or Tensor ``[v, d]``
        The atoms, one per row. Used as given: normalise them beforehand
        (:func:`unembedding_dictionary` does by default) for the scores to
        compare directions rather than lengths.
    n_atoms : int, default 50
        Number of steps. Stops earlier, with a warning, if the residual
        becomes zero.
    criterion : {"l1", "l2"}, default "l1"
        Score of an atom: the sum over samples of its absolute correlations
        with the residual (``"l1"``, as in Head Pursuit), or their root sum of
        squares (``"l2"``).
    center : bool, default True
        Subtract the mean of ``X`` first (returned as ``result.mean``). The EVR
        is relative to the centred data then, to ``X`` otherwise.
    dtype : torch.dtype, default torch.float64
        Precision of the computation.

    Returns
    -------
    PursuitResult
        ``atoms`` ``[k]`` in selection order, ``coefficients`` ``[n, k]``,
        ``evr`` ``[k]``, ``order`` ``[k]`` (by coefficient norm).

    Raises
    ------
    ValueError
        NaN or infinite values, mismatched widths, ``n_atoms`` larger than the
        dictionary, or data that are zero (zero variance when ``center=True``).

    Notes
    -----
    Exact: the same atoms and EVR as refitting by least squares on the support
    at every step (PAPER.md §3), computed through an orthonormal basis grown by
    Gram-Schmidt and rank-one updates of the scores (see the module docstring).
    An atom is never chosen twice. For one signal both criteria reduce to
    :func:`omp`.

    Examples
    --------
    >>> import torch, hp_mini
    >>> g = torch.Generator().manual_seed(1)
    >>> D = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    >>> X = torch.randn(20, 2, generator=g) @ D[[3, 7]] + 1.0
    >>> r = hp_mini.somp(X, D, n_atoms=2)
    >>> sorted(r.atoms.tolist()), r.coefficients.shape
    ([3, 7], torch.Size([20, 2]))
    """
    _check_criterion(criterion)
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise ValueError(f"X must be [n, d], got shape {tuple(X.shape)}; use omp() for one signal")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    Xd = X.to(dtype)
    _check_finite("X", Xd)
    D, labels = _dictionary_matrix(dictionary, X.shape[1], dtype)
    _check_n_atoms(n_atoms, D.shape[0])
    mean = Xd.mean(0) if center else None
    Xc = Xd - mean if center else Xd
    if not Xc.abs().max() > 0:
        raise ValueError(
            "zero-variance data: every row of X equals the mean" if center else "X is all zeros"
        )
    Z, W = _factor(Xc)
    problem = _Head(W=W, M=Z.T @ Z, Z=Z, n=X.shape[0])
    raw = _pursue(D, [problem], n_atoms=n_atoms, criterion=criterion, on_warning=_warn)[0]
    return _finish(raw, labels, Z=Z, criterion=criterion, mean=mean, out_dtype=X.dtype if X.is_floating_point() else dtype)


def omp(
    x: torch.Tensor,
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int,
    dtype: torch.dtype = torch.float64,
) -> PursuitResult:
    """Orthogonal Matching Pursuit of one signal.

    Parameters
    ----------
    x : Tensor ``[d]``
        The signal.
    dictionary : Dictionary or Tensor ``[v, d]``
        The atoms, one per row.
    n_atoms : int
        Number of steps.
    dtype : torch.dtype, default torch.float64

    Returns
    -------
    PursuitResult
        ``coefficients`` is ``[1, k]``; ``evr`` is ``1 - ||r_t||^2 / ||x||^2``
        (no centring: one signal has no variance).

    Notes
    -----
    Each step picks the atom with the largest absolute correlation ``|<d_j, r>|``
    with the residual and refits all chosen atoms by least squares
    (Pati et al. 1993). Same selections and coefficients as
    :func:`sklearn.linear_model.orthogonal_mp`.

    Examples
    --------
    >>> import torch, hp_mini
    >>> D = torch.eye(4)
    >>> hp_mini.omp(torch.tensor([0.0, 3.0, 0.0, -1.0]), D, n_atoms=2).atoms.tolist()
    [1, 3]
    """
    x = torch.as_tensor(x)
    if x.ndim != 1:
        raise ValueError(f"x must be one signal [d], got shape {tuple(x.shape)}; use somp() for several")
    result = somp(x[None], dictionary, n_atoms=n_atoms, criterion="l2", center=False, dtype=dtype)
    result.criterion = "omp"
    return result


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
    x : Tensor ``[d]``
        The signal (for a head: one contribution ``x_h``).
    dictionary : Dictionary or Tensor ``[v, d]``
        The atoms, one per row.
    n_atoms : int
        Number of steps.
    dtype : torch.dtype, default torch.float64

    Returns
    -------
    PursuitResult
        ``atoms`` may repeat: plain MP never refits, so it can come back to an
        atom. ``coefficients`` ``[1, k]`` holds the coefficient of each step.

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
    x = torch.as_tensor(x)
    if x.ndim != 1:
        raise ValueError(f"x must be one signal [d], got shape {tuple(x.shape)}")
    xd = x.to(dtype)
    _check_finite("x", xd)
    D, labels = _dictionary_matrix(dictionary, x.shape[0], dtype)
    if not isinstance(n_atoms, int) or n_atoms < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
    total = xd.square().sum()
    if total == 0:
        raise ValueError("x is all zeros")
    norms2 = D.square().sum(1)
    r = xd.clone()
    atoms, coefs, evr, scores = [], [], [], []
    for _ in range(n_atoms):
        corr = D @ r
        j = int(corr.abs().argmax())
        if norms2[j] == 0:
            break
        c = corr[j] / norms2[j]
        r = r - c * D[j]
        atoms.append(j)
        coefs.append(c)
        scores.append(corr[j].abs())
        evr.append(1 - r.square().sum() / total)
    atoms_t = torch.tensor(atoms, dtype=torch.long)
    coef_t = torch.stack(coefs) if coefs else torch.zeros(0, dtype=dtype)
    norms = coef_t.abs() * norms2[atoms_t].sqrt()
    out = x.dtype if x.is_floating_point() else dtype
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

"""The public SOMP entry points: :func:`somp`, :func:`omp` and :func:`somp_factored`.

Each checks its input (:mod:`._validation`), presents the signals to the
engine as factored problems (:mod:`hp_mini.pursuit.engine`) and turns what the
engine finds into :class:`~hp_mini.pursuit.result.PursuitResult` objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from hp_mini.read.dictionary import Dictionary
import hp_mini.pursuit._validation as check
from hp_mini.pursuit.engine import CRITERIA, Problem, RawPursuit, factor, pursue
from hp_mini.pursuit.result import FactoredSignals, PursuitResult

__all__ = ["finish", "omp", "somp", "somp_factored"]

Criterion = Literal["l1", "l2"]


def finish(
    raw: RawPursuit,
    labels: list[str],
    *,
    Z: torch.Tensor | None,
    criterion: str,
    mean: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> PursuitResult:
    """The :class:`PursuitResult` of one problem: labels, coefficients and their norms.

    The coefficients in the atoms' own basis come from back-substitution with
    the triangular factor ``R`` of ``D[S]^T = Q R``: the columns of ``C``
    (``H_c ~ C D_S``) have norms ``||R^{-1} Q^T F_0||_rows``, and ``C = Z (Q^T W)^T R^{-T}``
    when the samples ``Z`` are known.
    """
    atoms, R = raw.atoms, raw.R
    coefficients = None
    if len(atoms):
        norms = torch.linalg.solve_triangular(R, raw.U, upper=True).norm(dim=1)
        if Z is not None:
            HQ = Z.to(R.dtype) @ raw.QW.T  # (n, k) = H_c Q
            coefficients = torch.linalg.solve_triangular(R, HQ.T, upper=True).T.to(out_dtype)
    else:
        norms = torch.zeros(0, dtype=R.dtype)
        if Z is not None:
            coefficients = torch.zeros(Z.shape[0], 0, dtype=out_dtype)
    order = atoms[torch.argsort(norms, descending=True, stable=True)]
    return PursuitResult(
        atoms=atoms,
        labels=[labels[int(a)] for a in atoms],
        coefficients=coefficients,
        evr=raw.evr.to(out_dtype),
        order=order,
        scores=raw.scores.to(out_dtype),
        criterion=criterion,
        mean=None if mean is None else mean.to(out_dtype),
        coefficient_norms=norms.to(out_dtype),
        exact_scores=raw.evaluated,
        screened_scores=raw.screened,
    )


def somp(
    X: torch.Tensor, dictionary: Dictionary | torch.Tensor, *, n_atoms: int = 50, criterion: Criterion = "l1",
    center: bool = True, dtype: torch.dtype = torch.float64,
) -> PursuitResult:
    """Simultaneous Orthogonal Matching Pursuit of the rows of ``X``.

    Parameters
    ----------
    X : Tensor of shape (n, d)
        The signals, one per row (for a head: its pooled contributions).
    dictionary : Dictionary or Tensor of shape (v, d)
        The atoms, one per row. Used as given: normalise them beforehand
        (:func:`unembedding_dictionary` does by default) for the scores to
        compare directions rather than lengths.
    n_atoms : int, default 50
        Number of steps (any integer type: Python, NumPy or a one-element
        torch tensor). Stops earlier, with a warning, if the residual becomes
        zero.
    criterion : {"l1", "l2"}, default "l1"
        Score of an atom: the sum over samples of its absolute correlations
        with the residual (``"l1"``, as in Head Pursuit), or their root sum of
        squares (``"l2"``).
    center : bool, default True
        Subtract the mean of ``X`` first (returned as ``result.mean``). The EVR
        is relative to the centred data then, to ``X`` otherwise.
    dtype : torch.dtype, default torch.float64
        Precision of the computation: float32 or float64. Inputs in half
        precision are upcast to it.

    Returns
    -------
    PursuitResult
        ``atoms`` of shape (k,) in selection order, ``coefficients`` of
        shape (n, k), ``evr`` and ``order`` (by coefficient norm) of shape (k,).

    Raises
    ------
    ValueError
        NaN or infinite values, mismatched widths, an empty dictionary, ``n_atoms``
        below 1 or above the dictionary's size, a ``dtype`` other than float32 or
        float64, or data that are zero (zero variance when ``center=True``).
    TypeError
        ``n_atoms`` that is not an integer.

    Notes
    -----
    Exact: the same atoms and EVR as refitting by least squares on the support
    at every step (Tropp, Gilbert and Strauss 2006; Basile et al.,
    NeurIPS 2025, arXiv:2510.21518), computed through an orthonormal basis grown by
    Gram-Schmidt and rank-one updates of the scores (see :mod:`hp_mini.pursuit`).
    An atom is never chosen twice. For one signal both criteria reduce to
    :func:`omp`.

    The centred data are factored by a thin SVD. For float32 ``X`` (computed
    in float64) singular values below ``sqrt(max(n, d)) * eps32 * ||X_c||_F``,
    the size float32 rounding can give them, are dropped: the contributions of
    a head (``z W_O^T``) then keep their rank ``d_head`` rather than the full
    rank their rounding gives them. Other ``X`` (float64, or half precision
    upcast) is taken as exact: those components stay, left out of the float32
    products only, so that they cost next to nothing.

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
    check.check_criterion(criterion, CRITERIA)
    check.check_dtype(dtype)
    X, Xd = check.signals(X, 2, dtype, name="X", hint="; use omp() for one signal")
    D, labels, prepared = check.dictionary_atoms(dictionary, X.shape[1])
    n_atoms = check.count(n_atoms, D.shape[0])
    problem, mean = _problem(Xd, center=center, rounded=X.dtype == torch.float32 and dtype == torch.float64)
    options = dict(n_atoms=n_atoms, criterion=criterion, dtype=dtype, prepared=prepared)
    (raw,) = _pursue(D, [problem], stacklevel=4, **options)
    return finish(raw, labels, Z=problem.Z, criterion=criterion, mean=mean, out_dtype=check.out_dtype(X, dtype))


def _problem(Xd: torch.Tensor, *, center: bool, rounded: bool) -> tuple[Problem, torch.Tensor | None]:
    """``Xd`` (checked, in the working precision) as the engine's problem, and its mean (None
    unless ``center``). ``rounded``: the data were float32 (see :func:`somp`'s Notes)."""
    mean = Xd.mean(0) if center else None
    Xc = Xd - mean if center else Xd
    if not Xc.abs().max() > 0:
        raise ValueError("zero-variance data: every row of X equals the mean" if center else "X is all zeros")
    eps32 = torch.finfo(torch.float32).eps
    # float32 head contributions z W_O^T have rank d_head up to their rounding,
    # which the SVD would otherwise keep as rank.
    Z, W = factor(Xc, eps32 if rounded else None)
    # Otherwise the components of that size stay, exact, but out of the float32 products.
    tail = 0.0 if rounded else math.sqrt(max(Xc.shape)) * eps32 * float(Xc.norm())
    return Problem(W=W, M=Z.T @ Z, Z=Z, n=Xd.shape[0], tail=tail), mean


def _pursue(D: torch.Tensor, problems: list[Problem], *, stacklevel: int, **options) -> list[RawPursuit]:
    """:func:`~hp_mini.pursuit.engine.pursue`, its warnings joined into one RuntimeWarning
    (``stacklevel`` counted from here)."""
    warned: list[str] = []
    raws = pursue(D, problems, on_warning=warned.append, **options)
    if warned:
        shown = "; ".join(warned[:5]) + (f"; and {len(warned) - 5} more" if len(warned) > 5 else "")
        check.warn(shown, stacklevel=stacklevel)
    return raws


def omp(
    x: torch.Tensor, dictionary: Dictionary | torch.Tensor, *, n_atoms: int, dtype: torch.dtype = torch.float64
) -> PursuitResult:
    """Orthogonal Matching Pursuit of one signal.

    Parameters
    ----------
    x : Tensor of shape (d,)
        The signal.
    dictionary : Dictionary or Tensor of shape (v, d)
        The atoms, one per row.
    n_atoms : int
        How many atoms to choose (any integer type, as for :func:`somp`).
    dtype : torch.dtype, default torch.float64
        The working precision, float32 or float64, as for :func:`somp`.

    Returns
    -------
    PursuitResult
        ``coefficients`` is of shape (1, k); ``evr`` is ``1 - ||r_t||^2 / ||x||^2``
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
    x, _ = check.signals(x, 1, dtype, name="x", hint="; use somp() for several")
    result = somp(x[None], dictionary, n_atoms=n_atoms, criterion="l2", center=False, dtype=dtype)
    result.criterion = "omp"
    return result


def somp_factored(
    signals: Sequence[FactoredSignals], dictionary: Dictionary | torch.Tensor, *, n_atoms: int = 50,
    criterion: Criterion = "l1", center: bool = True, dtype: torch.dtype = torch.float64,
    out_dtype: torch.dtype = torch.float32,
) -> list[PursuitResult]:
    """SOMP of several sets of factored signals at once, sharing every dictionary product.

    Parameters
    ----------
    signals : sequence of FactoredSignals
        One set of signals ``X = Z W^T`` per pursuit (for heads: one per head).
        All must have the dictionary's width ``d``; their ``r`` may differ.
    dictionary : Dictionary or Tensor of shape (v, d)
        The atoms, one per row.
    n_atoms : int, default 50
        Number of steps (any integer type). A pursuit stops earlier, with a
        warning, when its residual becomes zero.
    criterion : {"l1", "l2"}, default "l1"
        See :func:`somp`. ``"l1"`` needs the samples ``Z``.
    center : bool, default True
        Subtract each set's mean first.
    dtype : torch.dtype, default torch.float64
        Precision of the computation (float32 or float64).
    out_dtype : torch.dtype, default torch.float32
        Precision of the returned results.

    Returns
    -------
    list of PursuitResult
        One per set, in order: the same as ``somp(Z @ W.T, dictionary, ...)``.
        ``mean`` is in signal space (``W @ mean(Z)``); ``coefficients`` is None
        for sets given by their moments.

    Raises
    ------
    ValueError
        Mismatched shapes, NaN or infinite values (naming the set), an empty
        dictionary, ``n_atoms`` larger than the dictionary, ``criterion="l1"``
        without samples.

    Notes
    -----
    Runs the engine described in :mod:`hp_mini.pursuit` on all the sets
    together, so each step takes one dictionary product for all of them.

    Examples
    --------
    >>> import torch, hp_mini
    >>> g = torch.Generator().manual_seed(0)
    >>> D = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    >>> W = D[[4, 9]].T                       # two directions of R^16
    >>> Z = torch.randn(30, 2, generator=g)
    >>> [r.atoms.tolist() for r in hp_mini.somp_factored([hp_mini.FactoredSignals(W, Z)], D, n_atoms=2)]
    [[9, 4]]
    """
    check.check_criterion(criterion, CRITERIA)
    check.check_dtype(dtype)
    signals = list(signals)
    if not signals:
        return []
    d = torch.as_tensor(signals[0].W).shape[0]
    D, labels, prepared = check.dictionary_atoms(dictionary, d)
    n_atoms = check.count(n_atoms, D.shape[0])
    problems, means = [], []
    for s in signals:
        W, M, Z, n, mean = check.check_factored(
            s, d, center=center, needs_samples=CRITERIA[criterion].needs_samples, dtype=dtype
        )
        problems.append(Problem(W=W, M=M, Z=Z, n=n, name=s.name))
        means.append(W @ mean if center else None)
    raws = _pursue(D, problems, stacklevel=3, n_atoms=n_atoms, criterion=criterion, dtype=dtype, prepared=prepared)
    return [
        finish(raw, labels, Z=p.Z, criterion=criterion, mean=mean, out_dtype=out_dtype)
        for raw, p, mean in zip(raws, problems, means)
    ]

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
  score of atom ``j`` is ``||F_t^T d_j||^2``. At step 0 every score comes from
  the bare products ``D W L`` (any exact method must compute these). A step
  changes ``F`` by a rank-one term, so every squared score then changes by
  ``c_j (c_j ||u_t||^2 - 2 e_j)`` with ``c = D q_t`` and
  ``e = D F_{t-1} F_{t-1}^T q_t``: two dictionary products per step for all
  atoms, taken together in one pass over the dictionary. All these products
  are taken in float32, and their rounding error is bounded rigorously
  (``|fl(x . y) - x . y| <= gamma_{d+3} ||x|| ||y||`` for any summation
  order), so each atom carries a certified *upper bound* of its score.
  The exact score (in the working precision, float64 by default) is computed
  only for the atoms whose bound can still beat the best exact score of the
  step, typically a handful: the argmax is exact, and the working precision is
  spent on ``k x d`` vectors rather than ``v x d`` products. The L2 criterion
  needs only the ``r x r`` second moment ``M``, never the samples, so its memory
  does not grow with ``n``.
* The L1 criterion needs the per-sample correlations ``p = Z a_j``. The
  samples are first given orthonormal columns (``Z = U S V^T``, so ``H_c =
  U (W V S)^T``, ``M`` is the identity and ``L`` too), and then
  ``a_j = F_t^T d_j``. Its bounds are ``||p||_1 <= sqrt(n) ||p||_2``
  (from the L2 bounds) and, once an atom's L1 score is known, that score
  plus ``|c_j| ||Z W^T q_t||_1`` per later step (the triangle inequality, since
  ``a_j`` changes by ``-c_j W^T q_t``). Only the atoms whose bound can still
  win are scored. In float64 they are first *screened*: the step-0 products
  ``D W`` and every step's ``D q_t`` are kept in float32, which gives
  ``a_j = W^T d_j - sum_s u_s (q_s . d_j)`` in ``t r`` operations instead of
  ``d r``, and ``||Z a_j||_1`` in float32 with a certified error bound. Only
  the atoms whose interval reaches the best lower end are scored exactly
  (``d r + n r`` operations in float64), typically one to three per step.
  The screen keeps ``h v (r + k)`` float32 values; when they pass 1 GiB the
  problems are pursued in groups that fit, each group with its own products.
* A product of the dictionary with a few columns (one problem's ``q`` and
  ``y``) is taken as ``D [q y]``, the form BLAS runs at the speed of memory;
  with many columns (a whole model) as ``[q y]^T D^T``, a matrix product at
  the speed of arithmetic.
* The coefficients in the atoms' own basis come from back-substitution with the
  triangular factor ``R`` of ``D[S]^T = Q R``.

References
----------
J. A. Tropp, A. C. Gilbert and M. J. Strauss, "Algorithms for simultaneous
sparse approximation. Part I: Greedy pursuit", Signal Processing 86 (2006).
L. Basile et al., "Head Pursuit: Probing Attention Specialization in Multimodal
Transformers", NeurIPS 2025 (arXiv:2510.21518).
N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM
(2002), §3.1 (the error bound of inner products).

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
import operator
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .dictionary import Dictionary, as_dictionary

__all__ = ["FactoredSignals", "PursuitResult", "matching_pursuit", "omp", "somp", "somp_factored"]

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
    exact_scores : int or None
        How many exact criterion scores the pursuit computed, summed over its
        steps; every other atom was ruled out by a certified upper bound of its
        score. At most ``k`` times the dictionary's size; the lower, the tighter
        the bounds were. None for :func:`matching_pursuit`.
    screened_scores : int or None
        How many L1 scores were first computed in float32 with a certified
        error bound (the screen of a float64 L1 pursuit, see the module
        docstring), summed over the steps; only the atoms whose interval could
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


# --------------------------------------------------------------------------- #
# Input checks
# --------------------------------------------------------------------------- #


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and math.isfinite(float(t.sum())):
        return  # one pass, no temporaries: a NaN or an infinity makes the sum one (so may an overflow)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; the pursuit needs finite numbers")


def _count(n_atoms, n_available: int | None = None) -> int:
    """``n_atoms`` as a Python int: any integer type (Python, NumPy, a one-element torch integer tensor)."""
    if isinstance(n_atoms, bool) or (isinstance(n_atoms, torch.Tensor) and n_atoms.is_floating_point()):
        raise TypeError(f"n_atoms must be an integer, got {n_atoms!r}")
    try:
        k = operator.index(n_atoms)
    except TypeError:
        raise TypeError(f"n_atoms must be an integer, got {type(n_atoms).__name__} {n_atoms!r}") from None
    if k < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {k}")
    if n_available is not None and k > n_available:
        raise ValueError(f"n_atoms={k} is more than the {n_available} atoms in the dictionary")
    return k


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype must be torch.float32 or torch.float64 (the precision the pursuit computes in), got {dtype}; "
            "inputs in half precision are upcast to it"
        )


def _out_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """Results come back in the input's precision, at least float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else dtype


def _check_criterion(criterion: str) -> None:
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")


def _dictionary_matrix(dictionary, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[str]]:
    dic = as_dictionary(dictionary)
    D = dic.atoms
    if D.ndim != 2:
        raise ValueError(f"the dictionary must be [v, d], got shape {tuple(D.shape)}")
    if D.shape[0] == 0:
        raise ValueError("the dictionary is empty: it has no atoms to choose from")
    if D.shape[1] != d:
        raise ValueError(f"the dictionary's atoms are {D.shape[1]} wide but the signals are {d} wide")
    D = D.to(dtype)
    _check_finite("the dictionary", D)
    return D, dic.labels


@dataclass
class _Prepared:
    """What the engine needs of a dictionary beyond its atoms, computed once per atoms tensor.

    ``low`` is the float32 copy for the bounds' products, or None when the
    atoms are float32 already (the atoms themselves are never held here, so
    the cache does not keep them alive). ``dmax`` is the largest atom norm.
    """

    version: int | None
    low: torch.Tensor | None
    dmax: float


# Keyed by id() of the atoms tensor; each entry is dropped when that tensor is
# freed, and redone when it was changed in place (its version counter moved).
# So whatever depends only on the dictionary is prepared once per Dictionary.
_PREPARED: dict[int, _Prepared] = {}


def _prepare(atoms: torch.Tensor) -> _Prepared:
    try:
        version = atoms._version
    except RuntimeError:  # an inference-mode tensor tracks no version: prepare it every time
        version = None
    key = id(atoms)
    known = _PREPARED.get(key)
    if known is not None and version is not None and known.version == version:
        return known
    _check_finite("the dictionary", atoms)
    low = None if atoms.dtype == torch.float32 else atoms.to(torch.float32)
    norms = torch.linalg.vector_norm(atoms, dim=1, dtype=torch.float64)
    prepared = _Prepared(version, low, float(norms.max()) * (1 + 1e-12))
    if version is not None:
        if known is None:
            weakref.finalize(atoms, _PREPARED.pop, key, None)
        _PREPARED[key] = prepared
    return prepared


def _dictionary_atoms(dictionary, d: int) -> tuple[torch.Tensor, list[str], _Prepared]:
    """The atoms (float32 or float64, not copied when they are already), labels and preparation."""
    dic = as_dictionary(dictionary)
    D = dic.atoms
    if D.ndim != 2:
        raise ValueError(f"the dictionary must be [v, d], got shape {tuple(D.shape)}")
    if D.shape[0] == 0:
        raise ValueError("the dictionary is empty: it has no atoms to choose from")
    if D.shape[1] != d:
        raise ValueError(f"the dictionary's atoms are {D.shape[1]} wide but the signals are {d} wide")
    if not D.is_floating_point():
        D = D.to(torch.float64)
    prepared = _prepare(D)
    if D.dtype not in (torch.float32, torch.float64):
        D = prepared.low  # half precision: the float32 copy holds the same numbers
    return D, dic.labels, prepared


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
    candidates: int | None = None,
    on_warning=None,
    dtype: torch.dtype | None = None,
    prepared: _Prepared | None = None,
) -> list[dict]:
    """Run SOMP on several factored problems at once, step by step.

    ``D`` holds the atoms (float32 or float64); all other tensors are in
    ``dtype`` (default ``D.dtype``), and the rows of ``D`` the search needs
    exactly are cast to it. Returns, per problem, a dict with ``atoms``,
    ``scores``, ``evr``, ``U`` (``Q^T W L``), ``R`` (triangular factor), ``QW``
    (``Q^T W``), ``evaluated`` (exact scores computed, summed over steps) and
    ``screened`` (L1 scores screened in float32, summed over steps).

    Every atom carries an *upper bound* of its score, and the exact score (in
    ``D.dtype``) is computed only for atoms whose bound can still beat the best
    exact score of the step, so the argmax is exact. The bounds come from the
    rank-one update of the squared L2 scores, whose two dictionary products per
    step (``D q_t`` and ``D F_t F_t^T q_t``) are taken in float32 with their
    rounding error bounded rigorously: ``|fl(x . y) - x . y| <= gamma ||x|| ||y||``
    with ``gamma = (d + 3) u / (1 - (d + 3) u)`` for any summation order
    (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1), so the
    bounds stay valid. The margin is kept per atom from the step its exact
    score was last computed. The step-0 scores come from the same float32
    products ``D W L``, with their own certified margin.

    The bounds are held in float32 as well, every rounding of their arithmetic
    added to the margin, or rounded outwards where a bound is set or compared.
    Each step therefore costs, beyond the two products, a few passes over
    ``h x v`` float32 values (kept in buffers allocated once), and one pass over
    the ``h x d x r`` factors, taken a few problems at a time while they sit in
    the cache. For L2 the step starts from the single atom with the largest
    bound, since the bounds are usually tight enough to leave no other.
    """
    v, d = D.shape
    h = len(problems)
    dtype = dtype or D.dtype
    device = D.device
    if prepared is None:
        prepared = _prepare(D)
    r = max(p.W.shape[1] for p in problems)
    k = n_atoms
    l1 = criterion == "l1"
    if l1 and dtype == torch.float64 and h > 1 and h * v * (r + k) * 4 > _SCREEN_BYTES:
        # L1's screen would keep more than _SCREEN_BYTES: the problems go in groups
        # that fit, each with its own products (still many columns per product)
        size = max(1, _SCREEN_BYTES // (v * (r + k) * 4))
        return [
            raw
            for start in range(0, h, size)
            for raw in _pursue(
                D, problems[start : start + size], n_atoms=n_atoms, criterion=criterion, candidates=candidates,
                on_warning=on_warning, dtype=dtype, prepared=prepared,
            )
        ]
    tiny = torch.finfo(dtype).tiny

    W = torch.zeros(h, d, r, dtype=dtype, device=device)
    Lm = torch.zeros(h, r, r, dtype=dtype, device=device)  # M = L L^T
    if not l1:
        for i, p in enumerate(problems):
            ri = p.W.shape[1]
            W[i, :, :ri] = p.W.to(dtype)
            Lm[i, :ri, :ri] = _sqrt_factor(p.M.to(dtype))
    else:
        # The samples with orthonormal columns (zero rows and columns pad): with
        # Z = U S V^T, H_c = U (W V S)^T, so W becomes W V S, and M and L the
        # identity. Then F = (I - Q Q^T) W gives the exact L1 scores
        # ||Z F^T d_j||_1 as well as the L2 ones. Until an atom's L1 score is
        # known, ||p||_1 <= sqrt(n) ||p||_2 bounds it.
        n_max = max(p.n for p in problems)
        Z = torch.zeros(h, n_max, r, dtype=dtype, device=device)
        for i, p in enumerate(problems):
            Ui, Si, Vhi = torch.linalg.svd(p.Z.to(dtype), full_matrices=False)  # type: ignore[union-attr]
            ri = Si.shape[0]
            Z[i, : Ui.shape[0], :ri] = Ui
            W[i, :, :ri] = p.W.to(dtype) @ (Vhi.mT * Si)
            Lm[i, :ri, :ri] = torch.eye(ri, dtype=dtype, device=device)
        root_n = torch.tensor([math.sqrt(p.n) for p in problems], dtype=dtype, device=device)
    F = W @ Lm  # (I - Q Q^T) W L, updated every step
    energy0 = F.square().sum((1, 2))  # ||H_c||_F^2

    # The float32 copy for the bounds' products, and their rounding error.
    D_low = D if prepared.low is None else prepared.low
    low = D_low.dtype
    unit = torch.finfo(low).eps / 2
    gamma = (d + 3) * unit / (1 - (d + 3) * unit)
    dmax = prepared.dmax
    # The bounds themselves are held in float32 too (half the memory traffic of
    # float64 on the v-long rows): each addition to them rounds by at most
    # ``unit`` times the size of the result, which is at most E dmax^2 + 2 M
    # (E = ||H_c||^2, M the margin so far). That rounding joins the margin.
    top2 = energy0 * dmax**2

    # Step 0: the bare products D W L (the floor), in float32. Each product
    # p = d_j . f_c is off by at most e_c = gamma dmax ||f_c||, so its square by
    # e_c (2 dmax ||f_c|| + e_c), and the squared score (summed over the columns
    # c in float32) by gamma (2 + gamma) dmax^2 ||F||^2 plus the rounding of
    # that sum, (r + 2) unit (1 + gamma)^2 dmax^2 ||F||^2. G + M is an upper
    # bound of the squared score, M the margin accumulated so far.
    # L1 in float64 screens its candidates first (see ``screened`` below), from
    # the step-0 products D F_0 and every step's products D q_t, kept in float32
    # when they fit in _SCREEN_BYTES.
    screen = l1 and dtype == torch.float64 and h * v * (r + k) * 4 <= _SCREEN_BYTES
    Y0 = torch.empty(h, v, r, dtype=low, device=device) if screen else None
    G2 = _initial_scores(D_low, F, keep=Y0)
    M2 = 1.01 * (gamma * (2 + gamma) + (r + 2) * unit * (1 + gamma) ** 2) * top2
    if l1:
        B1 = torch.full((h, v), math.inf, dtype=low, device=device)  # L1 bounds once known
    if screen:
        Cq = torch.zeros(h, v, k, dtype=low, device=device)  # D q_t in float32, column t
        Z32 = Z.to(low)
        zc = Z.abs().sum(1).norm(dim=1)  # || (||Z_c||_1)_c ||_2
        f0 = energy0.sqrt()  # ||F_0||_F
        gamma_n = torch.tensor([p.n * unit / (1 - p.n * unit) for p in problems], dtype=dtype, device=device)
        gamma_r = r * unit / (1 - r * unit)
        drift = torch.zeros(h, dtype=dtype, device=device)  # sum over steps of ||u_t|| delta_c_t
        usum = torch.zeros(h, dtype=dtype, device=device)  # sum over steps of ||u_t||

    taken = torch.zeros(h, v, dtype=torch.bool, device=device)
    # Work space for the v-long rows, allocated once: fresh buffers this large
    # cost a page fault per 4 KiB every time.
    work = torch.empty(h, v, dtype=low, device=device)
    P = torch.empty(2 * h, v, dtype=low, device=device)
    Pt = torch.empty(v, 2 * h, dtype=low, device=device) if 2 * h <= _NARROW else None
    Q = torch.zeros(h, d, k, dtype=dtype, device=device)  # the orthonormal basis, one column per step
    R = torch.zeros(h, k, k, dtype=dtype, device=device)
    U = torch.zeros(h, k, r, dtype=dtype, device=device)  # rows u_t = L^T W^T q_t
    Wq = torch.zeros(h, k, r, dtype=dtype, device=device)  # rows w_t = W^T q_t
    atoms = torch.full((h, k), -1, dtype=torch.long)
    scores = torch.zeros(h, k, dtype=dtype)
    evr = torch.zeros(h, k, dtype=dtype)
    evaluated = torch.zeros(h, dtype=torch.long)
    screens = torch.zeros(h, dtype=torch.long)
    n_done = [k] * h
    active = torch.ones(h, dtype=torch.bool)
    energy = energy0.clone()
    for i in range(h):
        if energy0[i] <= 0:
            active[i] = False
            n_done[i] = 0
            if on_warning:
                on_warning(f"{problems[i].name or 'the signal'} has zero variance; no atom was chosen")
    slack = 1e-9  # relative: rounding in the exact scores never hides a possible winner

    def take(T: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return T if len(rows) == h else T[rows]  # no copy in the common case

    def keys(rows: torch.Tensor) -> torch.Tensor:
        """What orders the atoms' bounds, ``[len(rows), v]``: for L2 the stored ``G``
        (the bound less a margin shared by the row), for L1 the bounds themselves."""
        if not l1:
            return take(G2, rows)
        s2 = torch.add(take(G2, rows), _up(take(M2, rows))[:, None], out=work[: len(rows)])
        s2 = s2.clamp_min_(0).sqrt_().mul_(_up(take(root_n, rows))[:, None])
        # float32 rounding of the sum, the root and the product: at most 3
        # units relative, inside the factor 1 + 2^-20
        return torch.minimum(s2.mul_(_UP), take(B1, rows), out=s2)

    def first(rows: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``m`` atoms of each problem ``rows`` with the largest bounds, ``[b, m]``,
        and the largest key among the other atoms (None when there are none)."""
        top = torch.topk(keys(rows), min(m + 1, v), dim=1)  # sorted: one pass over the row
        rest = top.values[:, m] if m < v else None
        return top.indices[:, :m], rest

    def can_win(rows: torch.Tensor, rest: torch.Tensor | None, threshold: torch.Tensor) -> torch.Tensor:
        """Whether an atom not evaluated in this round (largest key ``rest``) has a bound at or
        above ``threshold`` (squared for L2), so that it could still win."""
        if rest is None:
            return torch.zeros(len(rows), dtype=torch.bool, device=device)
        if not l1:
            return rest >= _down(threshold - take(M2, rows))  # G + M >= t  <=  G >= t - M, rounded down
        return rest >= _down(threshold)

    def exact(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Exact scores (squared for L2) of atoms ``idx`` ``[b, m]`` for problems ``rows``
        ``[b]``; their bounds become these values (rounded up to float32)."""
        Dk = D[idx].to(dtype)  # [b, m, d]
        at = (rows[:, None], idx)
        if l1:
            a = Dk @ take(F, rows)  # [b, m, r]: F^T d_j (L is the identity)
            val = (a @ take(Z, rows).mT).abs_().sum(-1)
            B1[at] = _up(val)
            G2[at] = _up(a.square().sum(-1) - take(M2, rows)[:, None])
        else:
            val = (Dk @ take(F, rows)).square().sum(-1)
            G2[at] = _up(val - take(M2, rows)[:, None])
        chosen = taken[at]
        if chosen.any():
            G2[at] = G2[at].masked_fill(chosen, -math.inf)
            if l1:
                B1[at] = B1[at].masked_fill(chosen, -math.inf)
            val = val.masked_fill(chosen, -math.inf)
        evaluated[rows.cpu()] += idx.shape[1]
        return val

    def screened(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """L1 scores of atoms ``idx`` ``[b, m]`` for problems ``rows``: exact (see ``exact``)
        where a certified float32 interval of the score reaches the largest lower end
        among them, minus infinity elsewhere (those atoms cannot win the round; their
        bounds become the intervals' upper ends).

        With L the identity, ``F_t^T d_j = F_0^T d_j - sum_s u_s (q_s . d_j)``: the kept
        float32 products give it in ``t r`` operations per atom instead of ``d r``,
        off by at most ``dy`` in norm (the products' errors, ``gamma dmax ||F_0||_F``
        and ``||u_s|| delta_c_s``, and the rounding of the sum). The samples' product
        ``p = Z y`` then errs by at most ``sqrt(n) dy`` (Z has orthonormal columns)
        plus its own rounding, ``(u + gamma_r) (1 + u) zc ||y||``, and the float32
        sum of ``|p|`` by ``gamma_n`` of itself.
        """
        at = (rows[:, None], idx)
        y = Y0[at]  # [b, m, r]
        if t:
            y = torch.baddbmm(y, Cq[at][..., :t], take(U, rows)[:, :t].to(low), alpha=-1)
        est = torch.bmm(y, take(Z32, rows).mT).abs_().sum(-1).to(dtype)
        norm_y = torch.linalg.vector_norm(y, dim=-1).to(dtype) * (1 + (r + 2) * unit)
        g_t = (t + 3) * unit / (1 - (t + 3) * unit)
        dy = gamma * dmax * f0 + drift + g_t * (1 + gamma) * dmax * (f0 + usum)
        err = (take(root_n * dy, rows) * (1 + 1e-9))[:, None] + (unit + gamma_r) * (1 + unit) * take(
            zc, rows
        )[:, None] * norm_y
        err = 1.01 * (err + 1.01 * take(gamma_n, rows)[:, None] * est)
        chosen = taken[at]
        hi = (est + err).masked_fill(chosen, -math.inf)
        lo = (est - err).masked_fill(chosen, -math.inf)
        B1[at] = _up(hi)
        screens[rows.cpu()] += idx.shape[1]
        reach = lo.max(1).values
        survive = hi >= (reach - 2 * slack * reach.abs())[:, None]
        order = torch.argsort(hi, dim=1, descending=True)[:, : int(survive.sum(1).max())]
        val = torch.full_like(hi, -math.inf)
        return val.scatter_(1, order, exact(rows, idx.gather(1, order)))

    score = screened if screen else exact

    def winner(idx: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The argmax of exact scores ``val`` of atoms ``idx`` (``[b, m]``), the lowest index
        among (near-)exact ties, as argmax over a full row picks."""
        top = val.max(1).values
        ties = val >= (top - 1e-12 * top.abs())[:, None]
        return torch.where(ties, idx, v).min(1).values, top

    all_rows = torch.arange(h, device=device)
    for t in range(k):
        live = active.nonzero().flatten().to(device)
        if not len(live):
            break
        # 1. choose one atom per problem: exact scores for the atoms with the
        #    largest bounds, then for any other atom whose bound can still win
        #    (for L2 the tight bounds usually leave one: start from the largest)
        m = min(candidates or ((64 if screen else 16) if l1 else 1), v)
        idx, rest = first(live, m)
        val = score(live, idx)
        best_val = val.max(1).values
        threshold = best_val - slack * best_val.abs()
        pick, top = winner(idx, val)
        best = torch.zeros(h, dtype=torch.long, device=device)
        chosen_scores = torch.zeros(h, dtype=dtype, device=device)
        best[live], chosen_scores[live] = pick, top
        # Bounds above the best exact score remain for some problems: evaluate more
        # atoms, by decreasing bound, in growing rounds (exact values replace the
        # bounds, so the rounds end; the last one covers every atom).
        more = live[can_win(live, rest, threshold)]
        size = m
        while len(more):
            size = min(max(4 * size, 16), v)
            idx_more, rest = first(more, size)
            val_more = score(more, idx_more)
            best_more = val_more.max(1).values
            thr = best_more - slack * best_more.abs()
            pick, top = winner(idx_more, val_more)
            best[more], chosen_scores[more] = pick, top
            more = more[can_win(more, rest, thr)]
        if not l1:
            chosen_scores = chosen_scores.clamp_min(0).sqrt()

        # 2. orthogonalise the chosen atoms against the basis (Gram-Schmidt, twice)
        dp = D[best].to(dtype)  # [h, d]
        Qt = Q[:, :, :t]
        proj = torch.einsum("hdt,hd->ht", Qt, dp)
        resid = dp - torch.einsum("hdt,ht->hd", Qt, proj)
        proj2 = torch.einsum("hdt,hd->ht", Qt, resid)
        resid = resid - torch.einsum("hdt,ht->hd", Qt, proj2)
        proj = proj + proj2
        rho = resid.norm(dim=1)
        scale = dp.norm(dim=1).clamp_min(tiny)
        stopping = active & ((rho <= _DEPENDENT * scale) | (energy <= _ZERO_RESIDUAL * energy0)).cpu()
        for i in stopping.nonzero().flatten().tolist():  # rare: no loop over every problem
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
        q = torch.where(act[:, None], resid / rho.clamp_min(tiny)[:, None], 0)
        Q[:, :, t] = q
        R[:, :t, t] = torch.where(act[:, None], proj, 0)
        R[:, t, t] = torch.where(act, rho, 1)
        atoms[active, t] = best[act].cpu()
        scores[active, t] = chosen_scores[act].cpu()
        chosen_at = (all_rows[act], best[act])
        taken[chosen_at] = True
        G2[chosen_at] = -math.inf
        if l1:
            B1[chosen_at] = -math.inf

        # 3. the rank-one update of F: F_t = F_{t-1} - q_t u_t^T with u_t = F_{t-1}^T q_t
        u, y, w = _rank_one(F, W, q)  # y = F_{t-1} F_{t-1}^T q_t, w = W^T q_t
        Wq[:, t], U[:, t] = w, u
        energy = (energy - u.square().sum(1)).clamp_min(0)  # ||F_t||^2 = ||F_{t-1}||^2 - ||u_t||^2
        evr[active, t] = (1 - energy / energy0.clamp_min(tiny))[act].cpu()
        cols = [q, y]

        # 4. every squared score changes by c_j (c_j ||u||^2 - 2 e_j), c = D q and
        #    e = D y; both products in float32, their error added to the margin
        if t + 1 < k:
            _dictionary_product(D_low, torch.cat(cols).to(low), P, Pt)  # [2h, v]: one product for all problems
            c = P[:h]
            delta_c = gamma * dmax * q.norm(dim=1)
            if screen:
                Cq[:, :, t] = c
                norm_u = u.norm(dim=1)
                drift += norm_u * delta_c
                usum += norm_u
            _add_score_change(G2, c, P[h : 2 * h], u, work)
            M2 = M2 + _margin(u, y, delta_c, gamma, dmax, unit)
            M2 = M2 + 1.01 * unit * (top2 + 2 * M2)  # the float32 addition into G
            if l1:
                step_l1 = (Z @ w[:, :, None]).abs_().sum((1, 2))  # ||Z w_t||_1
                # |c| + delta_c, times ||Z w_t||_1 (a little more, for its rounding),
                # added in float32 and raised by 2^-20 relative for the roundings
                c.abs_().add_(delta_c.to(low)[:, None]).mul_((step_l1 * (1 + 1e-6)).to(low)[:, None])
                B1.add_(c).mul_(_UP)

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
                # Q^T W for the caller's W (for L1 the engine's W is W V S)
                "QW": Q[i, :, :kk].mT @ p.W.to(dtype) if l1 else Wq[i, :kk, : p.W.shape[1]].clone(),
                "evaluated": int(evaluated[i]),
                "screened": int(screens[i]),
            }
        )
    return out


def _rank_one(F: torch.Tensor, W: torch.Tensor, q: torch.Tensor):
    """One step's updates of the ``[h, d, r]`` factors, in place, a few problems at a time.

    Returns ``u = F^T q``, ``y = F u`` (before the update) and ``w = W^T q``, and
    sets ``F -= q u^T``. The problems are
    taken in groups of at least two whose factors fit in a cache, so each
    factor is read from memory once per step; every group gives bit for bit
    what the whole batch gives.
    """
    h, d, r = F.shape
    u = torch.empty(h, r, dtype=F.dtype, device=F.device)
    y = torch.empty(h, d, dtype=F.dtype, device=F.device)
    w = torch.empty(h, r, dtype=F.dtype, device=F.device)
    size = max(2, (1 << 20) // (d * r * F.element_size()))
    buffer = torch.empty(min(size + 1, h), d, r, dtype=F.dtype, device=F.device)
    start = 0
    while start < h:
        end = h if h - start <= size + 1 else start + size  # never a group of one after others
        Fg, qg, b = F[start:end], q[start:end], buffer[: end - start]
        ug = u[start:end]
        ug.copy_(torch.einsum("hdr,hd->hr", Fg, qg))
        y[start:end] = torch.einsum("hdr,hr->hd", Fg, ug)
        Fg.sub_(torch.mul(qg[:, :, None], ug[:, None, :], out=b))
        w[start:end] = torch.einsum("hdr,hd->hr", W[start:end], qg)
        start = end
    return u, y, w


def _dictionary_product(D: torch.Tensor, cols: torch.Tensor, out: torch.Tensor, space: torch.Tensor | None) -> None:
    """``out = cols D^T`` (``[c, v]``). For a few columns (``space``, ``[v, c]``, given)
    the product is taken as ``D cols^T`` and transposed into ``out``: BLAS runs that
    form at the speed of memory, the other several times slower."""
    if space is None:
        torch.matmul(cols, D.T, out=out)
    else:
        torch.matmul(D, cols.T, out=space)
        out.copy_(space.T)


def _add_score_change(G: torch.Tensor, c: torch.Tensor, e: torch.Tensor, u: torch.Tensor, work: torch.Tensor) -> None:
    """``G += c (c ||u||^2 - 2 e)``, ``[h, v]``, the change of every squared score, in ``G``'s
    precision (``work``, shaped like ``G``, holds the change)."""
    a = u.square().sum(1).to(c.dtype)[:, None]
    change = torch.mul(c, a, out=work).sub_(e, alpha=2).mul_(c)
    G += change


def _margin(u, y, delta_c, gamma: float, dmax: float, unit: float) -> torch.Tensor:
    """A bound on the error of :func:`_add_score_change` from float32 ``c`` and ``e``, per problem.

    With ``|c| <= dmax``, ``|e| <= dmax ||y||``, ``|c^ - c| <= dc`` and
    ``|e^ - e| <= de = gamma dmax ||y||``, the change ``a c^2 - 2 c e`` is off by at
    most ``a dc (2 dmax + dc) + 2 (dmax de + dc dmax ||y|| + dc de)``, plus the
    rounding of the float32 arithmetic itself.
    """
    a = u.square().sum(1)
    ny = y.norm(dim=1)
    de = gamma * dmax * ny
    dc = delta_c
    products = a * dc * (2 * dmax + dc) + 2 * (dmax * de + dc * dmax * ny + dc * de)
    arithmetic = 6 * unit * ((dmax + dc) ** 2 * a + 2 * (dmax + dc) * (dmax * ny + de))
    return products + arithmetic


def _initial_scores(D_low: torch.Tensor, F: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``||F_i^T d_j||^2`` for every problem ``i`` and atom ``j``, ``[h, v]``, in blocks.

    The products, their squares and sums are taken in ``D_low``'s precision
    (float32); :func:`_pursue` bounds the error. ``keep`` (``[h, v, r]``), when
    given, receives the products ``F_i^T d_j`` themselves.
    """
    v, d = D_low.shape
    h, _, r = F.shape
    s = torch.empty(h, v, dtype=D_low.dtype, device=D_low.device)
    per_block = max(1, 576 // r)
    space = torch.empty(v * min(per_block, h) * r, dtype=D_low.dtype, device=D_low.device)
    for start in range(0, h, per_block):
        block = F[start : start + per_block]  # [b, d, r]
        b = block.shape[0]
        if b * r < 64:
            # few columns: BLAS is faster with the dictionary on the right
            prod = space[: v * b * r].view(b, r, v)
            torch.matmul(block.mT.reshape(b * r, d).to(D_low.dtype), D_low.T, out=prod.view(b * r, v))
            if keep is not None:
                keep[start : start + b] = prod.mT
            torch.sum(prod.square_(), 1, out=s[start : start + b])
        else:
            prod = space[: v * b * r].view(v, b * r)
            torch.matmul(D_low, block.permute(1, 0, 2).reshape(d, b * r).to(D_low.dtype), out=prod)
            if keep is not None:
                keep[start : start + b] = prod.view(v, b, r).permute(1, 0, 2)
            s[start : start + b] = prod.square_().view(v, b, r).sum(-1).T
    return s


# Raises a float32 value computed by a few correctly rounded operations above
# the exact result (each rounds by at most 2^-24 relative).
_UP = 1 + 2.0**-20

# The most memory the L1 screen may keep (its float32 products, ``h v (r + k)``
# values); above it, the problems are pursued in groups that fit (one problem
# alone that does not fit is scored without the screen).
_SCREEN_BYTES = 1 << 30

# Up to this many columns, a product with the dictionary is taken as D x^T
# (see _dictionary_product).
_NARROW = 8


def _up(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, rounded up: never below ``x``."""
    y = x.to(torch.float32)
    return torch.where(y.to(x.dtype) < x, torch.nextafter(y, y.new_tensor(math.inf)), y)


def _down(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, rounded down: never above ``x``."""
    y = x.to(torch.float32)
    return torch.where(y.to(x.dtype) > x, torch.nextafter(y, y.new_tensor(-math.inf)), y)


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
        exact_scores=raw["evaluated"],
        screened_scores=raw["screened"],
    )


def _factor(Xc: torch.Tensor, data_eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``Xc = Z W^T`` with ``W`` orthonormal, ``r`` = numerical rank of ``Xc``.

    Singular values below ``max(n, d) * eps * s_max`` (``eps`` of ``Xc``'s
    dtype) are dropped, and, when the data were rounded to a resolution
    ``data_eps`` before, those below ``sqrt(max(n, d)) * data_eps * ||Xc||_F``,
    the size their rounding can reach.
    """
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    tol = S.max() * max(Xc.shape) * torch.finfo(Xc.dtype).eps if S.numel() else 0
    if data_eps is not None and S.numel():
        tol = max(tol, math.sqrt(max(Xc.shape)) * data_eps * S.norm())
    r = max(1, int((S > tol).sum()))
    return U[:, :r] * S[:r], Vh[:r].T


def _warn(message: str, stacklevel: int = 4) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


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
        ``atoms`` ``[k]`` in selection order, ``coefficients`` ``[n, k]``,
        ``evr`` ``[k]``, ``order`` ``[k]`` (by coefficient norm).

    Raises
    ------
    ValueError
        NaN or infinite values, mismatched widths, an empty dictionary,
        ``n_atoms`` below 1 or larger than the dictionary, a ``dtype`` other
        than float32 or float64, or data that are zero (zero variance when
        ``center=True``).
    TypeError
        ``n_atoms`` that is not an integer.

    Notes
    -----
    Exact: the same atoms and EVR as refitting by least squares on the support
    at every step (PAPER.md §3), computed through an orthonormal basis grown by
    Gram-Schmidt and rank-one updates of the scores (see the module docstring).
    An atom is never chosen twice. For one signal both criteria reduce to
    :func:`omp`.

    The centred data are factored by a thin SVD. For float32 ``X`` (computed
    in float64) singular values below ``sqrt(max(n, d)) * eps32 * ||X_c||_F``,
    the size float32 rounding can give them, are dropped: the contributions of
    a head (``z W_O^T``) then keep their rank ``d_head`` rather than the full
    rank their rounding gives them. Half-precision ``X`` is upcast to
    ``dtype`` and taken as exact.

    Whatever depends only on the dictionary (its finiteness check, its float32
    copy, its largest atom norm) is computed once per atoms tensor and kept
    until that tensor is freed or changed in place.

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
    _check_dtype(dtype)
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise ValueError(f"X must be [n, d], got shape {tuple(X.shape)}; use omp() for one signal")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    Xd = X.to(dtype)
    _check_finite("X", Xd)
    D, labels, prepared = _dictionary_atoms(dictionary, X.shape[1])
    n_atoms = _count(n_atoms, D.shape[0])
    mean = Xd.mean(0) if center else None
    Xc = Xd - mean if center else Xd
    if not Xc.abs().max() > 0:
        raise ValueError(
            "zero-variance data: every row of X equals the mean" if center else "X is all zeros"
        )
    # float32 head contributions z W_O^T have rank d_head up to their rounding,
    # which the SVD would otherwise keep as rank.
    rounded = X.dtype == torch.float32 and dtype == torch.float64
    Z, W = _factor(Xc, torch.finfo(torch.float32).eps if rounded else None)
    problem = _Head(W=W, M=Z.T @ Z, Z=Z, n=X.shape[0])
    raw = _pursue(D, [problem], n_atoms=n_atoms, criterion=criterion, on_warning=_warn, dtype=dtype, prepared=prepared)[0]
    return _finish(raw, labels, Z=Z, criterion=criterion, mean=mean, out_dtype=_out_dtype(X, dtype))


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
        Number of steps (any integer type).
    dtype : torch.dtype, default torch.float64
        Precision of the computation: float32 or float64 (half-precision
        inputs are upcast).

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
        Number of steps (any integer type).
    dtype : torch.dtype, default torch.float64
        Precision of the computation: float32 or float64 (half-precision
        inputs are upcast).

    Returns
    -------
    PursuitResult
        ``atoms`` may repeat: plain MP never refits, so it can come back to an
        atom. ``coefficients`` ``[1, k]`` holds the coefficient of each step.
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
    _check_dtype(dtype)
    x = torch.as_tensor(x)
    if x.ndim != 1:
        raise ValueError(f"x must be one signal [d], got shape {tuple(x.shape)}")
    xd = x.to(dtype)
    _check_finite("x", xd)
    D, labels = _dictionary_matrix(dictionary, x.shape[0], dtype)
    n_atoms = _count(n_atoms)  # atoms may repeat: no bound from the dictionary's size
    total = xd.square().sum()
    if total == 0:
        raise ValueError("x is all zeros")
    norms2 = D.square().sum(1)
    r = xd.clone()
    energy = total
    atoms, coefs, evr, scores = [], [], [], []
    for step in range(n_atoms):
        if energy <= _ZERO_RESIDUAL * total:
            _warn(f"the residual is zero after {step} atoms; stopped there", stacklevel=3)
            break
        corr = D @ r
        j = int(corr.abs().argmax())
        if corr[j] == 0 or norms2[j] == 0:
            _warn(f"x is orthogonal to every atom after {step} atoms; stopped there", stacklevel=3)
            break
        c = corr[j] / norms2[j]
        r = r - c * D[j]
        energy = r.square().sum()
        atoms.append(j)
        coefs.append(c)
        scores.append(corr[j].abs())
        evr.append(1 - energy / total)
    atoms_t = torch.tensor(atoms, dtype=torch.long)
    coef_t = torch.stack(coefs) if coefs else torch.zeros(0, dtype=dtype)
    norms = coef_t.abs() * norms2[atoms_t].sqrt()
    out = _out_dtype(x, dtype)
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


def _problem(s: FactoredSignals, d: int, *, center: bool, l1: bool, dtype: torch.dtype) -> tuple[_Head, torch.Tensor | None, torch.Tensor]:
    """The engine's problem for ``s``, its centred ``Z`` (or None) and the mean of its coordinates."""
    W = torch.as_tensor(s.W)
    if W.ndim != 2 or W.shape[0] != d:
        raise ValueError(f"{s.name}: W must be [d, r] with d = {d} (the dictionary's width), got shape {tuple(W.shape)}")
    r = W.shape[1]
    W = W.to(dtype)
    _check_finite(f"W of {s.name}", W)
    if s.Z is not None:
        Z = torch.as_tensor(s.Z)
        if Z.ndim != 2 or Z.shape[1] != r:
            raise ValueError(f"{s.name}: Z must be [n, {r}] to match W, got shape {tuple(Z.shape)}")
        Z = Z.to(dtype)
        _check_finite(f"the samples of {s.name}", Z)
        n, mean = Z.shape[0], Z.mean(0)
        if center:
            Z = Z - mean
        M = Z.T @ Z
    else:
        if l1:
            raise ValueError(
                f"{s.name}: criterion='l1' needs every sample (Z), but only moments were given; "
                "use criterion='l2' or give Z"
            )
        if s.n is None or s.mean is None or s.scatter is None:
            raise ValueError(f"{s.name}: give either Z, or all of n, mean and scatter")
        n = operator.index(s.n)
        mean = torch.as_tensor(s.mean).to(dtype)
        M = torch.as_tensor(s.scatter).to(dtype)
        if mean.shape != (r,) or M.shape != (r, r):
            raise ValueError(
                f"{s.name}: mean must be [{r}] and scatter [{r}, {r}] to match W, "
                f"got {tuple(mean.shape)} and {tuple(M.shape)}"
            )
        _check_finite(f"the moments of {s.name}", torch.cat([mean, M.flatten()]))
        if not center:
            M = M + n * torch.outer(mean, mean)
        Z = None
    if n < 1:
        raise ValueError(f"{s.name} has no samples")
    return _Head(W=W, M=M, Z=Z, n=n, name=s.name), Z, mean


def somp_factored(
    signals: Sequence[FactoredSignals],
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int = 50,
    criterion: Criterion = "l1",
    center: bool = True,
    dtype: torch.dtype = torch.float64,
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
    Runs the engine described in the module docstring on all the sets
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
    _check_criterion(criterion)
    _check_dtype(dtype)
    signals = list(signals)
    if not signals:
        return []
    d = torch.as_tensor(signals[0].W).shape[0]
    D, labels, prepared = _dictionary_atoms(dictionary, d)
    n_atoms = _count(n_atoms, D.shape[0])
    problems, zs, means = [], [], []
    for s in signals:
        problem, Z, mean = _problem(s, d, center=center, l1=criterion == "l1", dtype=dtype)
        problems.append(problem)
        zs.append(Z)
        means.append(problem.W @ mean if center else None)
    warned: list[str] = []
    raws = _pursue(
        D, problems, n_atoms=n_atoms, criterion=criterion, on_warning=warned.append, dtype=dtype, prepared=prepared
    )
    if warned:
        shown = "; ".join(warned[:5]) + (f"; and {len(warned) - 5} more" if len(warned) > 5 else "")
        _warn(shown, stacklevel=2)
    return [
        _finish(raw, labels, Z=Z, criterion=criterion, mean=mean, out_dtype=out_dtype)
        for raw, Z, mean in zip(raws, zs, means)
    ]

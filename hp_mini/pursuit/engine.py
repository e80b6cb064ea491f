"""The SOMP engine: many factored problems pursued together, step by step.

This is the documented internal interface of :mod:`hp_mini.pursuit`: the
public functions (:func:`hp_mini.somp`, :func:`hp_mini.somp_factored`) check
their input, build :class:`Problem` objects and call :func:`pursue`, which
returns one :class:`RawPursuit` per problem. Tests may use it directly, for
instance to search from a single candidate per step or to try a criterion;
it also names what a criterion needs (:class:`Criterion`, :class:`Workspace`,
:class:`SquaredBounds`, and the float32 roundings ``up``, ``down``, ``UP``).

Each step of :func:`pursue`:

1. chooses one atom per problem: the criterion scores exactly the atoms with
   the largest bounds, then, in growing rounds, any other atom whose bound can
   still beat the best exact score (exact values replace the bounds, so the
   rounds end; the last one covers every atom);
2. orthogonalises the chosen atom against the basis (Gram-Schmidt, twice), or
   stops a problem whose residual is zero or whose atom lies in the span;
3. applies the rank-one update ``F_t = F_{t-1} - q_t u_t^T``;
4. takes the step's two float32 dictionary products ``[D q, D y]`` for all
   problems at once, a block of :data:`~._bounds.CHUNK` atoms at a time, and
   updates each block's squared bounds (:class:`~._bounds.SquaredBounds`) and
   the criterion's own while the block sits in the cache; for a criterion that
   scores one candidate first, the largest key of each block is kept for the
   next step.

Every tensor but the atoms is in the working precision ``dtype``; the rows of
``D`` the search needs exactly are cast to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hp_mini.pursuit._bounds import CHUNK, UP, SquaredBounds, TailSplit, down, pick, rows_of, up
from hp_mini.pursuit._criteria import CRITERIA, SLACK, Criterion, L1Criterion, L2Criterion, Workspace, sqrt_factor
from hp_mini.pursuit._validation import PREPARED, PreparedDictionary, prepare

__all__ = [
    "CHUNK",
    "CRITERIA",
    "DEPENDENT",
    "PREPARED",
    "UP",
    "ZERO_RESIDUAL",
    "Criterion",
    "L1Criterion",
    "L2Criterion",
    "PreparedDictionary",
    "Problem",
    "RawPursuit",
    "SquaredBounds",
    "TailSplit",
    "Workspace",
    "down",
    "factor",
    "pick",
    "prepare",
    "pursue",
    "rows_of",
    "sqrt_factor",
    "up",
]

# The residual counts as zero below this fraction of the initial energy (a
# relative norm of 1e-6: the rounding of float32 data lies below it).
ZERO_RESIDUAL = 1e-12
# An atom counts as inside the span of the chosen ones below this relative norm.
DEPENDENT = 1e-10


@dataclass
class Problem:
    """One problem for the engine: ``H_c = Z W^T``, with ``M = Z^T Z``.

    Attributes
    ----------
    W : Tensor of shape (d, r)
        The map from the ``r`` coordinates to signal space.
    M : Tensor of shape (r, r)
        The second moment of the (centred) coordinates.
    Z : Tensor of shape (n, r), or None
        The (centred) coordinates; None when only ``M`` is known.
    n : int
        The number of samples.
    name : str, default ""
        Names the problem in warnings.
    tail : float, default 0.0
        Columns of ``F = W L`` with a norm at most this are left out of the
        float32 products and bounded together (:class:`~._bounds.TailSplit`):
        less work for the same, exact, selection.
    """

    W: torch.Tensor
    M: torch.Tensor
    Z: torch.Tensor | None
    n: int
    name: str = ""
    tail: float = 0.0


@dataclass
class RawPursuit:
    """What :func:`pursue` finds for one problem, ``k`` the steps it took.

    Attributes
    ----------
    atoms : LongTensor of shape (k,)
        The chosen atoms, in order.
    scores : Tensor of shape (k,)
        The criterion of each when chosen.
    evr : Tensor of shape (k,)
        The explained variance ratio after each step.
    R : Tensor of shape (k, k)
        The triangular factor of ``D[atoms]^T = Q R``.
    U : Tensor of shape (k, r)
        ``Q^T W L``.
    QW : Tensor of shape (k, r)
        ``Q^T W`` for the problem's own ``W``.
    evaluated : int
        Exact scores computed, summed over the steps.
    screened : int
        Scores screened in float32 first, summed over the steps.
    """

    atoms: torch.Tensor
    scores: torch.Tensor
    evr: torch.Tensor
    R: torch.Tensor
    U: torch.Tensor
    QW: torch.Tensor
    evaluated: int
    screened: int


def factor(Xc: torch.Tensor, data_eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``Xc = Z W^T`` with ``W`` orthonormal, ``r`` = numerical rank of ``Xc``.

    Singular values below ``max(n, d) * eps * s_max`` (``eps`` of ``Xc``'s
    dtype) are dropped, and, when the data were rounded to a resolution
    ``data_eps`` before, those below ``sqrt(max(n, d)) * data_eps * ||Xc||_F``,
    the size their rounding can reach.

    Parameters
    ----------
    Xc : Tensor of shape (n, d)
        The (centred) signals.
    data_eps : float, optional
        The resolution the data were rounded to.

    Returns
    -------
    Z : Tensor of shape (n, r)
    W : Tensor of shape (d, r)
    """
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    tol = S.max() * max(Xc.shape) * torch.finfo(Xc.dtype).eps if S.numel() else 0
    if data_eps is not None and S.numel():
        tol = max(tol, math.sqrt(max(Xc.shape)) * data_eps * S.norm())
    r = max(1, int((S > tol).sum()))
    return U[:, :r] * S[:r], Vh[:r].T


def pursue(
    D: torch.Tensor,
    problems: Sequence[Problem],
    *,
    n_atoms: int,
    criterion: str | type = "l2",
    candidates: int | None = None,
    on_warning: Callable[[str], None] | None = None,
    dtype: torch.dtype | None = None,
    prepared: PreparedDictionary | None = None,
) -> list[RawPursuit]:
    """Run SOMP on several factored problems at once, step by step.

    Parameters
    ----------
    D : Tensor of shape (v, d)
        The atoms, float32 or float64 (checked finite by :func:`prepare`).
    problems : sequence of Problem
        The problems, all ``d`` wide.
    n_atoms : int
        The number of steps.
    criterion : str or Criterion class, default "l2"
        A name in :data:`CRITERIA` or a class implementing :class:`Criterion`.
    candidates : int, optional
        Atoms scored exactly first in each step (default: the criterion's).
        Any value gives the same atoms; 1 exercises the bounds the most.
    on_warning : callable, optional
        Receives a message for each problem that stops early.
    dtype : torch.dtype, optional
        The working precision (default ``D.dtype``).
    prepared : PreparedDictionary, optional
        ``prepare(D)``, when the caller has it.

    Returns
    -------
    list of RawPursuit
        One per problem, in order.

    Notes
    -----
    Every atom carries an upper bound of its score, and the exact score is
    computed only for the atoms whose bound can still beat the best exact score
    of the step, so the argmax is exact (ties go to the lowest index). A
    criterion may ask for the problems to go in groups (:meth:`Criterion.group_size`),
    each group with its own products.
    """
    kind = CRITERIA[criterion] if isinstance(criterion, str) else criterion
    prepared = prepared or prepare(D)
    dtype = dtype or D.dtype
    r = max(p.W.shape[1] for p in problems)
    size = kind.group_size(len(problems), D.shape[0], r, n_atoms, dtype)
    options = dict(n_atoms=n_atoms, criterion=kind, candidates=candidates, on_warning=on_warning, dtype=dtype)
    if size < len(problems):
        groups = [problems[start : start + size] for start in range(0, len(problems), size)]
        return [raw for group in groups for raw in pursue(D, group, prepared=prepared, **options)]
    return _Search(D, problems, prepared, **options).run()


def _batch(problems: Sequence[Problem], kind, dtype: torch.dtype, device) -> tuple:
    """The problems as the criterion presents them, zero padded: ``W`` (h, d, r), ``L``
    (h, r, r) and ``Z`` (h, n, r) or None."""
    h, d = len(problems), problems[0].W.shape[0]
    r = max(p.W.shape[1] for p in problems)
    W = torch.zeros(h, d, r, dtype=dtype, device=device)
    L = torch.zeros(h, r, r, dtype=dtype, device=device)
    factors = [kind.factor(p.W, p.M, p.Z, dtype) for p in problems]
    Z = None
    if factors[0][2] is not None:
        Z = torch.zeros(h, max(f[2].shape[0] for f in factors), r, dtype=dtype, device=device)
    for i, (Wi, Li, Zi) in enumerate(factors):
        ri = Li.shape[0]
        W[i, :, :ri] = Wi
        L[i, :ri, :ri] = Li
        if Z is not None:
            Z[i, : Zi.shape[0], :ri] = Zi
    return W, L, Z


def _winner(idx: torch.Tensor, val: torch.Tensor, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The argmax of exact scores ``val`` of atoms ``idx`` (of shape (b, m)), the lowest index
    among (near-)exact ties, as argmax over a full row picks; and the maximum."""
    top = val.max(1).values
    ties = val >= (top - 1e-12 * top.abs())[:, None]
    return torch.where(ties, idx, v).min(1).values, top


def _orthogonalise(Q: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (h, d) less its projection on the orthonormal columns of ``Q`` (h, d, t), by
    Gram-Schmidt repeated twice; and the coefficients of that projection (h, t)."""
    proj = torch.bmm(x[:, None, :], Q)[:, 0]
    resid = x - torch.bmm(Q, proj[:, :, None])[:, :, 0]
    proj2 = torch.bmm(resid[:, None, :], Q)[:, 0]
    resid = resid - torch.bmm(Q, proj2[:, :, None])[:, :, 0]
    return resid, proj + proj2


def _rank_one(F: torch.Tensor, W: torch.Tensor | None, q: torch.Tensor, mask: torch.Tensor | None = None):
    """One step's updates of the (h, d, r) factors, in place, a few problems at a time.

    Returns ``u = F^T q``, ``y = F u`` (before the update), ``w = W^T q`` (None
    when ``W`` is None: nothing needs it) and ``F (u * mask)`` (``y`` when ``mask``,
    of shape (h, r), is None), and sets ``F -= q u^T``. The problems are taken in groups of at least two whose
    factors fit in a cache, so each factor is read from memory once per step;
    every group gives bit for bit what the whole batch gives.
    """
    h, d, r = F.shape
    u = torch.empty(h, r, dtype=F.dtype, device=F.device)
    y = torch.empty(h, d, dtype=F.dtype, device=F.device)
    w = None if W is None else torch.empty(h, r, dtype=F.dtype, device=F.device)
    ym = y if mask is None else torch.empty(h, d, dtype=F.dtype, device=F.device)
    size = max(2, (1 << 20) // (d * r * F.element_size()))
    start = 0
    while start < h:
        end = h if h - start <= size + 1 else start + size  # never a group of one after others
        Fg, qg = F[start:end], q[start:end]
        ug = u[start:end]
        torch.bmm(qg[:, None, :], Fg, out=ug[:, None, :])
        torch.bmm(Fg, ug[:, :, None], out=y[start:end, :, None])
        if mask is not None:
            torch.bmm(Fg, (ug * mask[start:end])[:, :, None], out=ym[start:end, :, None])
        Fg.baddbmm_(qg[:, :, None], ug[:, None, :], alpha=-1)
        if w is not None:
            torch.bmm(qg[:, None, :], W[start:end], out=w[start:end, None, :])
        start = end
    return u, y, w, ym


class _Search:
    """The state of one batch of problems through the steps (see :func:`pursue`)."""

    def __init__(self, D, problems, prepared, *, n_atoms, criterion, candidates, on_warning, dtype):
        self.D, self.problems, self.k, self.on_warning = D, problems, n_atoms, on_warning
        self.D_low = D if prepared.low is None else prepared.low
        h, (v, d) = len(problems), D.shape
        device, k = D.device, n_atoms
        self.h, self.v, self.device, self.dtype, self.tiny = h, v, device, dtype, torch.finfo(dtype).tiny
        self.W, L, Z = _batch(problems, criterion, dtype, device)
        r = self.W.shape[2]
        F = self.W @ L  # (I - Q Q^T) W L, updated every step
        self.energy0 = F.square().sum((1, 2))  # ||H_c||_F^2
        tails = torch.tensor([p.tail for p in problems], dtype=dtype, device=device)
        split = TailSplit.of(F, tails, prepared.dmax) if bool((tails > 0).any()) else None
        F_main = F if split is None else split.columns(F)
        keep = criterion.keeps_products(h, v, F_main.shape[2], k, dtype)
        tail = None if split is None else split.tail2
        bounds = SquaredBounds(self.D_low, F_main, prepared.dmax, self.energy0, keep=keep, tail=tail)
        self.ws = Workspace(
            D=D, dtype=dtype, F=F, Z=Z, n=[p.n for p in problems], energy=self.energy0, bounds=bounds, split=split,
            taken=torch.zeros(h, v, dtype=torch.bool, device=device),
            U=torch.zeros(h, k, r, dtype=dtype, device=device),  # rows u_t = L^T W^T q_t
            evaluated=torch.zeros(h, dtype=torch.long), screened=torch.zeros(h, dtype=torch.long), n_atoms=k,
        )
        self.criterion: Criterion = criterion(self.ws)
        self.candidates = min(candidates or self.criterion.candidates, v)
        width = min(CHUNK, v)  # work space for one block of atoms: the products, the bounds' change
        self.P = torch.empty(2 * h * width, dtype=self.D_low.dtype, device=device)
        self.work = torch.empty(h * width, dtype=self.D_low.dtype, device=device)
        # the largest key of each block of atoms, kept by each step's update for the next step's
        # first candidate when that is one atom (None: no step has updated them yet)
        self.blocks: torch.Tensor | None = None
        self.needs_w = criterion.whitens or any(p.Z is not None for p in problems)
        self.Q = torch.zeros(h, d, k, dtype=dtype, device=device)  # the orthonormal basis, one column per step
        self.R = torch.zeros(h, k, k, dtype=dtype, device=device)
        self.Wq = torch.zeros(h, k, r, dtype=dtype, device=device)  # rows w_t = W^T q_t
        self.atoms = torch.full((h, k), -1, dtype=torch.long)
        self.scores = torch.zeros(h, k, dtype=dtype)
        self.evr = torch.zeros(h, k, dtype=dtype)
        self.n_done = [k] * h
        self.active = torch.ones(h, dtype=torch.bool)
        self.energy = self.energy0.clone()
        for i in (self.energy0 <= 0).nonzero().flatten().tolist():
            self._stop(i, 0, f"{problems[i].name or 'the signal'} has zero variance; no atom was chosen")

    def _stop(self, i: int, steps: int, message: str) -> None:
        self.active[i] = False
        self.n_done[i] = steps
        if self.on_warning:
            self.on_warning(message)

    def run(self) -> list[RawPursuit]:
        """All the steps, then the results."""
        for t in range(self.k):
            live = self.active.nonzero().flatten().to(self.device)
            if not len(live):
                break
            best, chosen_scores = self._choose(live, t)
            act = self._extend(best, chosen_scores, t)
            if act is None:
                break
            self._advance(act, t)
        return self._results()

    def _first(self, rows: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``m`` atoms of each problem ``rows`` with the largest bounds, of shape (b, m),
        and the largest bound among the other atoms (None when there are none)."""
        top = torch.topk(self.criterion.bound(rows), min(m + 1, self.v), dim=1)  # sorted: one pass over the row
        rest = top.values[:, m] if m < self.v else None
        return top.indices[:, :m], rest

    def _first_of_blocks(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``_first(rows, 1)`` gives, from the blocks' largest keys that the last update kept:
        the best atom of the best block, and the largest key among the other blocks' and its own
        other atoms (ties go to the lowest index, as for one pass over the row)."""
        tops = rows_of(self.blocks, rows)
        block = tops.argmax(1, keepdim=True)
        others = tops.scatter(1, block, -math.inf).amax(1)
        pos = block * CHUNK + torch.arange(CHUNK, device=self.device)
        keys = self.criterion.bound(rows, pos.clamp_max(self.v - 1)).masked_fill(pos >= self.v, -math.inf)
        best = keys.argmax(1, keepdim=True)
        own = keys.scatter(1, best, -math.inf).amax(1)
        return pos.gather(1, best), torch.maximum(others, own)

    def _choose(self, live: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1: the exact argmax of the criterion for every live problem, and its score.

        Exact scores for the atoms with the largest bounds; then, while bounds above
        the best exact score remain for some problems, more atoms by decreasing
        bound, in growing rounds.
        """
        best = torch.zeros(self.h, dtype=torch.long, device=self.device)
        chosen_scores = torch.zeros(self.h, dtype=self.dtype, device=self.device)
        rows, size = live, self.candidates
        while len(rows):
            if self.blocks is not None and size == 1 and self.v > 1:
                idx, rest = self._first_of_blocks(rows)
            else:
                idx, rest = self._first(rows, size)
            self.blocks = None  # exact scores change the keys
            val = self.criterion.score(rows, idx, t)
            pick, top = _winner(idx, val, self.v)
            best[rows], chosen_scores[rows] = pick, top
            if rest is None:
                break
            rows = rows[self.criterion.can_win(rows, rest, top - SLACK * top.abs())]
            size = min(max(4 * size, 16), self.v)
        return best, self.criterion.reported(chosen_scores)

    def _extend(self, best: torch.Tensor, chosen_scores: torch.Tensor, t: int) -> torch.Tensor | None:
        """Step 2: the chosen atoms join the basis; the problems that stop here are stopped.
        Returns which problems go on (None when none does)."""
        dp = self.D[best].to(self.dtype)  # (h, d)
        resid, proj = _orthogonalise(self.Q[:, :, :t], dp)
        rho = resid.norm(dim=1)
        scale = dp.norm(dim=1).clamp_min(self.tiny)
        zero = self.energy <= ZERO_RESIDUAL * self.energy0
        stopping = self.active & ((rho <= DEPENDENT * scale) | zero).cpu()
        for i in stopping.nonzero().flatten().tolist():  # rare: no loop over every problem
            why = "the residual is zero" if zero[i] else "every remaining atom lies in the span of the chosen ones"
            self._stop(i, t, f"{self.problems[i].name or 'the signal'}: {why} after {t} atoms; stopped there")
        act = self.active.to(self.device)
        if not act.any():
            return None
        q = torch.where(act[:, None], resid / rho.clamp_min(self.tiny)[:, None], 0)
        self.Q[:, :, t] = q
        self.R[:, :t, t] = torch.where(act[:, None], proj, 0)
        self.R[:, t, t] = torch.where(act, rho, 1)
        self.atoms[self.active, t] = best[act].cpu()
        self.scores[self.active, t] = chosen_scores[act].cpu()
        chosen_at = (torch.arange(self.h, device=self.device)[act], best[act])
        self.ws.taken[chosen_at] = True
        self.ws.bounds.G[chosen_at] = -math.inf
        self.criterion.exclude(chosen_at)
        return act

    def _advance(self, act: torch.Tensor, t: int) -> None:
        """Steps 3 and 4: the rank-one update of ``F``, the EVR, and every bound's update from the
        step's two float32 products ``c = D q`` and ``e = D y``, a block of atoms at a time."""
        ws, h, q = self.ws, self.h, self.Q[:, :, t]
        split = ws.split
        mask = None if split is None else split.mask
        # y = F_{t-1} F_{t-1}^T q_t, w = W^T q_t; the bounds' u and y of the main columns
        u, y, w, y_main = _rank_one(ws.F, self.W if self.needs_w else None, q, mask)
        u_main = u if split is None else split.entries(u)
        ws.U[:, t] = u
        if w is not None:
            self.Wq[:, t] = w
        self.energy = (self.energy - u.square().sum(1)).clamp_min(0)  # ||F_t||^2 = ||F_{t-1}||^2 - ||u_t||^2
        self.evr[self.active, t] = (1 - self.energy / self.energy0.clamp_min(self.tiny))[act].cpu()
        if t + 1 == self.k:
            return
        cols = torch.cat([q, y_main]).to(self.D_low.dtype)
        delta_c = ws.bounds.gamma * ws.bounds.dmax * q.norm(dim=1)
        ws.bounds.start_step(u_main, y_main, delta_c)
        self.criterion.start_step(t, delta_c, u_main, w)
        track = self.candidates == 1
        n_blocks = -(-self.v // CHUNK)
        tops = torch.empty(h, n_blocks, dtype=self.D_low.dtype, device=self.device) if track else None
        all_rows = torch.arange(h, device=self.device)
        for j in range(n_blocks):
            atoms = slice(j * CHUNK, min((j + 1) * CHUNK, self.v))
            n = atoms.stop - atoms.start
            P = torch.matmul(cols, self.D_low[atoms].T, out=self.P[: 2 * h * n].view(2 * h, n))
            ws.bounds.update(atoms, P[:h], P[h:], self.work[: h * n].view(h, n))
            self.criterion.update(atoms, P[:h])
            if track:
                tops[:, j] = self.criterion.bound(all_rows, atoms).amax(1)
        self.blocks = tops

    def _results(self) -> list[RawPursuit]:
        out = []
        for i, p in enumerate(self.problems):
            kk, ri = self.n_done[i], p.W.shape[1]
            # Q^T W for the caller's W (a whitening criterion's W is W V S)
            QW = self.Q[i, :, :kk].mT @ p.W.to(self.dtype) if self.criterion.whitens else self.Wq[i, :kk, :ri].clone()
            out.append(
                RawPursuit(
                    atoms=self.atoms[i, :kk].clone(),
                    scores=self.scores[i, :kk].clone(),
                    evr=self.evr[i, :kk].clone(),
                    R=self.R[i, :kk, :kk].clone(),
                    U=self.ws.U[i, :kk, :ri].clone(),
                    QW=QW,
                    evaluated=int(self.ws.evaluated[i]),
                    screened=int(self.ws.screened[i]),
                )
            )
        return out

"""Selection criteria of SOMP: each one object implementing :class:`Criterion`.

The engine (:mod:`hp_mini.pursuit.engine`) keeps the basis, the rank-one
updates and the certified bounds of the squared L2 scores
(:class:`~._bounds.SquaredBounds`) for every criterion; a criterion says how a
problem is presented to the engine, which atoms can still win, how an atom is
scored exactly, and how its own bounds follow each step. See the protocol in
:mod:`hp_mini.pursuit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from hp_mini.pursuit._bounds import UP, SquaredBounds, TailSplit, down, pick, rows_of, up
from hp_mini.pursuit._screen import L1Screen, survivors

__all__ = ["CRITERIA", "SLACK", "Criterion", "L1Criterion", "L2Criterion", "Workspace", "sqrt_factor"]

@dataclass
class Workspace:
    """What the engine shares with its criterion for one batch of ``h`` problems.

    Attributes
    ----------
    D : Tensor of shape (v, d)
        The atoms, float32 or float64.
    dtype : torch.dtype
        The working precision of the exact scores.
    F : Tensor of shape (h, d, r)
        ``(I - Q Q^T) W L``, updated in place every step.
    Z : Tensor of shape (h, n, r), or None
        The samples as the criterion's ``factor`` gave them (zero padded).
    n : list of int
        The number of samples of each problem.
    energy : Tensor of shape (h,)
        ``||F_0||_F^2``, the energy of each problem.
    bounds : SquaredBounds
        The certified bounds of the squared L2 scores.
    split : TailSplit or None
        The columns of ``F`` that the bounds' products leave out, if any.
    taken : BoolTensor of shape (h, v)
        The atoms already chosen.
    U : Tensor of shape (h, k, r)
        Row ``s`` is ``u_s = F_{s-1}^T q_s``.
    evaluated, screened : LongTensor of shape (h,)
        Exact scores and float32 screens computed so far, per problem.
    n_atoms : int
        The number of steps.
    """

    D: torch.Tensor
    dtype: torch.dtype
    F: torch.Tensor
    Z: torch.Tensor | None
    n: list[int]
    energy: torch.Tensor
    bounds: SquaredBounds
    split: TailSplit | None
    taken: torch.Tensor
    U: torch.Tensor
    evaluated: torch.Tensor
    screened: torch.Tensor
    n_atoms: int

    def project(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``F_t^T d_j`` in the working precision for atoms ``idx`` (of shape (b, m)) of
        problems ``rows``: of shape (b, m, r)."""
        return self.D[idx].to(self.dtype) @ rows_of(self.F, rows)

    def settle(self, rows: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        """Count the exact scores ``val`` of atoms ``idx`` of problems ``rows``, and rule the
        atoms already chosen out of them, of the L2 bounds and of the bounds ``others``."""
        at = (rows[:, None], idx)
        chosen = self.taken[at]
        if chosen.any():
            for bound in (self.bounds.G, *others):
                bound[at] = bound[at].masked_fill(chosen, -math.inf)
            val = val.masked_fill(chosen, -math.inf)
        self.evaluated[rows.cpu()] += idx.shape[1]
        return val


class Criterion(Protocol):
    """What the engine asks of a selection criterion (see :mod:`hp_mini.pursuit`)."""

    name: ClassVar[str]
    needs_samples: ClassVar[bool]
    whitens: ClassVar[bool]
    candidates: int

    @staticmethod
    def factor(
        W: torch.Tensor, M: torch.Tensor, Z: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The problem as the engine sees it: ``(W, L, Z)`` with ``F_0 = W L``."""

    @classmethod
    def group_size(cls, h: int, v: int, r: int, k: int, dtype: torch.dtype) -> int:
        """How many of ``h`` problems may be pursued together."""

    @classmethod
    def keeps_products(cls, h: int, v: int, r: int, k: int, dtype: torch.dtype) -> bool:
        """Whether the step-0 float32 products ``D F_0`` are kept (``bounds.products``)."""

    def __init__(self, ws: Workspace) -> None:
        """Built once per batch of problems, with the engine's workspace."""

    def bound(self, rows: torch.Tensor, atoms: slice | torch.Tensor | None = None) -> torch.Tensor:
        """float32 keys that order upper bounds of the scores (``atoms`` as for :func:`~._bounds.pick`)."""

    def can_win(self, rows: torch.Tensor, rest: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """Whether an atom with key ``rest`` may score ``threshold`` or more."""

    def score(self, rows: torch.Tensor, idx: torch.Tensor, step: int) -> torch.Tensor:
        """Exact scores of atoms ``idx`` (minus infinity for those that cannot win); tightens their bounds."""

    def exclude(self, at: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The atoms ``at`` were chosen: they never win again."""

    def start_step(self, step: int, delta_c: torch.Tensor, u: torch.Tensor, w: torch.Tensor | None) -> None:
        """Before step ``step``'s updates (``w`` is None when no criterion or result needs it)."""

    def update(self, atoms: slice, c: torch.Tensor) -> None:
        """Keep its bounds of the block ``atoms`` valid after the step, from ``c = D q`` (float32)."""

    def reported(self, best: torch.Tensor) -> torch.Tensor:
        """The score a result reports for the winner's exact value ``best``."""


# Relative: rounding in the exact scores never hides a possible winner.
SLACK = 1e-9


def sqrt_factor(M: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L L^T = M`` for a symmetric PSD ``M`` (eigen-decomposition)."""
    M = 0.5 * (M + M.mT)
    evals, evecs = torch.linalg.eigh(M)
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


class L2Criterion:
    """The root sum of squares of an atom's correlations with the residual.

    Needs only the second moment ``M`` of the samples. The squared score is
    ``||F_t^T d_j||^2`` with ``F = W L``, ``L L^T = M``; the engine's squared
    bounds are its bounds, tight enough that each step starts from the single
    atom with the largest one.
    """

    name: ClassVar[str] = "l2"
    needs_samples: ClassVar[bool] = False
    whitens: ClassVar[bool] = False

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.candidates = 1

    @staticmethod
    def factor(W, M, Z, dtype):
        """``W``, ``L`` with ``L L^T = M``, and no samples."""
        return W.to(dtype), sqrt_factor(M.to(dtype)), None

    @classmethod
    def group_size(cls, h, v, r, k, dtype):
        """All problems together."""
        return h

    @classmethod
    def keeps_products(cls, h, v, r, k, dtype):
        """The step-0 products are not needed again."""
        return False

    def bound(self, rows, atoms=None):
        """What orders the atoms' bounds: the stored ``G`` (the bound less the row's margin)."""
        return pick(self.ws.bounds.G, rows, atoms)

    def can_win(self, rows, rest, threshold):
        """``G + M >= t``, that is ``G >= t - M`` rounded down (``M`` with the tail's bound)."""
        return rest >= down(threshold - self.ws.bounds.margin(rows))

    def score(self, rows, idx, step):
        """Exact squared scores; the bounds become them."""
        val = self.ws.project(rows, idx).square().sum(-1)
        self.ws.bounds.set_exact(rows, idx, val)
        return self.ws.settle(rows, idx, val)

    def exclude(self, at):
        """Nothing beyond the squared bounds."""

    def start_step(self, step, delta_c, u, w):
        """Nothing beyond the squared bounds."""

    def update(self, atoms, c):
        """Nothing beyond the squared bounds."""

    def reported(self, best):
        """The root of the squared score."""
        return best.clamp_min(0).sqrt()


class L1Criterion:
    """The sum over samples of an atom's absolute correlations with the residual (Head Pursuit).

    Needs every sample: they are given orthonormal columns (``Z = U S V^T``, so
    ``H_c = U (W V S)^T``, ``M`` and ``L`` the identity), and then the L1 score
    of atom ``j`` is ``||Z a_j||_1`` with ``a_j = F_t^T d_j``. Its bounds are
    ``||p||_1 <= sqrt(n) ||p||_2`` (from the squared L2 bounds) and, once an
    atom's L1 score is known, that score plus ``|c_j| ||Z W^T q_t||_1`` per later
    step (the triangle inequality, since ``a_j`` changes by ``-c_j W^T q_t``).
    In float64 the candidates are screened in float32 first (:mod:`._screen`)
    when the kept products fit in ``screen_bytes``; above it the problems are
    pursued in groups that fit (a problem alone that does not fit is scored
    without the screen).
    """

    name: ClassVar[str] = "l1"
    needs_samples: ClassVar[bool] = True
    whitens: ClassVar[bool] = True
    screen_bytes: ClassVar[int] = 1 << 30

    def __init__(self, ws: Workspace):
        self.ws = ws
        b = ws.bounds
        self.B1 = torch.full_like(b.G, math.inf)  # L1 bounds once known
        self.root_n = torch.tensor([math.sqrt(m) for m in ws.n], dtype=ws.dtype, device=ws.F.device)
        self.screen = None
        if b.products is not None:
            Z = ws.Z if ws.split is None else ws.split.columns(ws.Z)
            self.screen = L1Screen(b.products, Z, ws.n, ws.energy, ws.n_atoms, bounds=b)
        self.candidates = 16 if self.screen is None else 64

    @staticmethod
    def factor(W, M, Z, dtype):
        """``W V S``, the identity and ``U``, from the thin SVD ``Z = U S V^T``."""
        U, S, Vh = torch.linalg.svd(Z.to(dtype), full_matrices=False)
        return W.to(dtype) @ (Vh.mT * S), torch.eye(S.shape[0], dtype=dtype, device=W.device), U

    @classmethod
    def group_size(cls, h, v, r, k, dtype):
        """As many problems as the screen's ``h v (r + k)`` float32 values allow in ``screen_bytes``."""
        if dtype == torch.float64 and h > 1 and h * v * (r + k) * 4 > cls.screen_bytes:
            return max(1, cls.screen_bytes // (v * (r + k) * 4))
        return h

    @classmethod
    def keeps_products(cls, h, v, r, k, dtype):
        """In float64, when the screen fits in ``screen_bytes``."""
        return dtype == torch.float64 and h * v * (r + k) * 4 <= cls.screen_bytes

    def bound(self, rows, atoms=None):
        """``min(sqrt(n (G + M)), B1)``; the float32 rounding of the sum, the root and the
        product (at most 3 units relative) lies inside the factor ``UP``."""
        b = self.ws.bounds
        out = b.work[: len(rows)] if atoms is None else None
        s2 = torch.add(pick(b.G, rows, atoms), up(b.margin(rows))[:, None], out=out)
        s2 = s2.clamp_min_(0).sqrt_().mul_(up(rows_of(self.root_n, rows))[:, None])
        return torch.minimum(s2.mul_(UP), pick(self.B1, rows, atoms), out=s2)

    def can_win(self, rows, rest, threshold):
        """A bound at or above the threshold, rounded down."""
        return rest >= down(threshold)

    def score(self, rows, idx, step):
        """Exact scores where the screen's interval reaches the largest lower end among
        the candidates, minus infinity elsewhere (those cannot win the round; their
        bounds become the intervals' upper ends)."""
        if self.screen is None:
            return self.exact(rows, idx)
        at = (rows[:, None], idx)
        est, err = self.screen.interval(rows, idx, step, self.root_n)
        chosen = self.ws.taken[at]
        hi = (est + err).masked_fill(chosen, -math.inf)
        lo = (est - err).masked_fill(chosen, -math.inf)
        self.B1[at] = up(hi)
        self.ws.screened[rows.cpu()] += idx.shape[1]
        order = survivors(lo, hi, SLACK)
        val = torch.full_like(hi, -math.inf)
        return val.scatter_(1, order, self.exact(rows, idx.gather(1, order)))

    def exact(self, rows, idx):
        """Exact L1 scores in the working precision; both bounds become them."""
        a = self.ws.project(rows, idx)  # (b, m, r): F^T d_j (L is the identity)
        val = (a @ rows_of(self.ws.Z, rows).mT).abs_().sum(-1)
        self.B1[rows[:, None], idx] = up(val)
        self.ws.bounds.set_exact(rows, idx, a.square().sum(-1))
        return self.ws.settle(rows, idx, val, self.B1)

    def exclude(self, at):
        """Chosen atoms never win again."""
        self.B1[at] = -math.inf

    def start_step(self, step, delta_c, u, w):
        """Before step ``step``'s updates: ``||Z w_t||_1`` (a little more, for its rounding), and
        what the screen keeps of the step."""
        if self.screen is not None:
            self.screen.record(step, u, delta_c)
        low = self.B1.dtype
        step_l1 = (self.ws.Z @ w[:, :, None]).abs_().sum((1, 2))  # ||Z w_t||_1
        self.step, self.delta_c, self.step_l1 = step, delta_c.to(low)[:, None], (step_l1 * (1 + 1e-6)).to(low)[:, None]

    def update(self, atoms, c):
        """``B1 += (|c| + delta_c) ||Z w_t||_1`` for the atoms ``atoms``, added in float32 and
        raised by ``UP`` for the roundings; ``c`` is overwritten."""
        if self.screen is not None:
            self.screen.Cq[:, self.step, atoms] = c
        c.abs_().add_(self.delta_c).mul_(self.step_l1)
        self.B1[:, atoms].add_(c).mul_(UP)

    def reported(self, best):
        """The score itself."""
        return best


CRITERIA: dict[str, type] = {c.name: c for c in (L1Criterion, L2Criterion)}

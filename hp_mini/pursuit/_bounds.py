"""Certified float32 upper bounds of every atom's squared L2 score.

The engine keeps, for every problem ``i`` and atom ``j``, a float32 value
``G[i, j]`` and, per problem, a margin ``M[i]`` (in the working precision) such
that ``G + M`` is never below the exact squared score ``||F_t^T d_j||^2``,
however the float32 products were summed. The derivations:

* **Products.** For any summation order, a float32 inner product of length
  ``d`` errs by at most ``gamma ||x|| ||y||`` with
  ``gamma = (d + 3) u / (1 - (d + 3) u)``, ``u = 2^-24`` the unit roundoff
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM
  2002, §3.1; ``d + 3`` leaves room for the rounding of the inputs).
* **Step 0.** Each product ``p = d_j . f_c`` (``f_c`` a column of ``F_0``) is
  off by at most ``e_c = gamma dmax ||f_c||``, so its square by
  ``e_c (2 dmax ||f_c|| + e_c)``, and the squared score (summed over the
  columns in float32) by ``gamma (2 + gamma) dmax^2 ||F||^2`` plus the
  rounding of that sum, ``(r + 2) u (1 + gamma)^2 dmax^2 ||F||^2``
  (:func:`initial_margin`).
* **Each later step.** The squared score changes by ``c_j (a c_j - 2 e_j)``
  with ``c = D q``, ``e = D y``, ``a = ||u||^2``. With ``|c| <= dmax``,
  ``|e| <= dmax ||y||``, ``|c^ - c| <= dc = gamma dmax ||q||`` and
  ``|e^ - e| <= de = gamma dmax ||y||``, the float32 change is off by at most
  ``a dc (2 dmax + dc) + 2 (dmax de + dc dmax ||y|| + dc de)``, plus six
  roundings of its own arithmetic (:func:`step_margin`). The identity
  ``||(F - q u^T)^T d||^2 = ||F^T d||^2 - 2 (q . d) (d . F u) + (q . d)^2 ||u||^2``
  holds for any ``u`` and any subset of the columns of ``F`` (with ``u`` and
  ``y = F u`` restricted to it: see :class:`TailSplit`). The products are taken a
  block of :data:`CHUNK` atoms at a time; the bound holds for any summation
  order, so the blocks change no margin.
* **The bounds' own arithmetic.** ``G`` is held in float32 (half the memory
  traffic of float64 on the ``v``-long rows). Each addition to it rounds by at
  most ``u`` times the result, which is at most ``E dmax^2 + 2 M``
  (``E = ||H_c||_F^2``): that rounding joins the margin. Where an exact score
  sets a bound, or a bound is compared with a threshold, the value is rounded
  outwards (:func:`up`, :func:`down`).

The margin is kept per problem from step 0; an atom whose exact score was
computed has ``G`` set to that score less the margin so far, so its bound
carries only the margin accumulated since.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "CHUNK",
    "UP",
    "SquaredBounds",
    "TailSplit",
    "down",
    "initial_margin",
    "initial_scores",
    "pick",
    "rows_of",
    "step_margin",
    "up",
]

# Raises a float32 value computed by a few correctly rounded operations above
# the exact result (each rounds by at most 2^-24 relative).
UP = 1 + 2.0**-20

# Atoms per block of a step's products: each block's products, bounds' update
# and maxima are taken while the block sits in the cache (measured on SmolLM2's
# 49,152 atoms: faster than one product over the whole dictionary, for one
# problem and for 270).
CHUNK = 2048


def up(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, rounded up: never below ``x``."""
    y = x.to(torch.float32)
    return torch.where(y.to(x.dtype) < x, torch.nextafter(y, y.new_tensor(math.inf)), y)


def down(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, rounded down: never above ``x``."""
    y = x.to(torch.float32)
    return torch.where(y.to(x.dtype) > x, torch.nextafter(y, y.new_tensor(-math.inf)), y)


def rows_of(T: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows ``rows`` (sorted, distinct) of ``T``; ``T`` itself, not a copy, when they are all of them."""
    return T if len(rows) == T.shape[0] else T[rows]


def pick(T: torch.Tensor, rows: torch.Tensor, atoms: slice | torch.Tensor | None = None) -> torch.Tensor:
    """``T`` (of shape (h, v)) at the problems ``rows`` and the atoms ``atoms``: all of them
    (None), a block (a slice), or per problem (an index tensor of shape (len(rows), m))."""
    if atoms is None:
        return rows_of(T, rows)
    if isinstance(atoms, slice):
        return rows_of(T[:, atoms], rows)
    return T[rows[:, None], atoms]


def initial_scores(D_low: torch.Tensor, F: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``||F_i^T d_j||^2`` for every problem ``i`` and atom ``j``, of shape (h, v), in blocks.

    The products, their squares and sums are taken in ``D_low``'s precision
    (float32); :func:`initial_margin` bounds the error. ``keep`` (of shape
    (h, v, r)), when given, receives the products ``F_i^T d_j`` themselves.
    """
    v, d = D_low.shape
    h, _, r = F.shape
    s = torch.empty(h, v, dtype=D_low.dtype, device=D_low.device)
    per_block = max(1, 576 // r)
    space = torch.empty(v * min(per_block, h) * r, dtype=D_low.dtype, device=D_low.device)
    for start in range(0, h, per_block):
        block = F[start : start + per_block]  # (b, d, r)
        b = block.shape[0]
        if b * r < 64:
            # few columns: BLAS is faster with the dictionary on the right
            prod = space[: v * b * r].view(b, r, v)
            torch.matmul(block.mT.reshape(b * r, d).to(D_low.dtype), D_low.T, out=prod.view(b * r, v))
            if keep is not None:
                keep[start : start + b] = prod.mT
            torch.sum(prod.square_(), 1, out=s[start : start + b])
        else:
            maps = block.permute(1, 0, 2).reshape(d, b * r).to(D_low.dtype)
            for first in range(0, v, CHUNK):  # a block of atoms at a time: its products stay in the cache
                n = min(CHUNK, v - first)
                prod = torch.matmul(D_low[first : first + n], maps, out=space[: n * b * r].view(n, b * r))
                if keep is not None:
                    keep[start : start + b, first : first + n] = prod.view(n, b, r).permute(1, 0, 2)
                s[start : start + b, first : first + n] = prod.square_().view(n, b, r).sum(-1).T
    return s


def initial_margin(gamma: float, unit: float, r: int, top2: torch.Tensor) -> torch.Tensor:
    """The error bound of :func:`initial_scores` (``top2 = ||F||^2 dmax^2`` per problem), raised by 1%."""
    return 1.01 * (gamma * (2 + gamma) + (r + 2) * unit * (1 + gamma) ** 2) * top2


def step_margin(u, y, delta_c, gamma: float, dmax: float, unit: float) -> torch.Tensor:
    """A bound on the error of :meth:`SquaredBounds.update` from float32 ``c`` and ``e``, per problem.

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


class TailSplit:
    """Columns of ``F`` left out of the float32 products, and a bound of what they add.

    The columns of ``F = W L`` whose norm is at most the problem's ``tail`` (the
    size rounding gives them, for instance) would cost as much in every float32
    product as the others while adding next to nothing to any score. They are
    left out of the bounds' products and bounded together instead: with
    ``F_t = (I - Q Q^T) F_0``, the tail's part of any squared score is
    ``||F_tail,t^T d_j||^2 <= ||F_tail,0||_2^2 dmax^2 <= ||F_tail,0||_F^2 dmax^2``,
    a constant ``tail2`` (raised by ``1e-6`` relative for the rounding of the
    stored ``F``). The bounds track the main columns exactly (the rank-one
    update holds for any subset of columns) and add ``tail2``; the exact scores
    still use every column, so the selection stays exact.

    Parameters
    ----------
    F : Tensor of shape (h, d, r)
        The problems' factors ``F_0``.
    tail : Tensor of shape (h,)
        Per problem, the column norm at or below which a column joins the tail
        (0: no tail).
    dmax : float
        An upper bound of the atoms' norms.

    Attributes
    ----------
    r : int
        The number of main columns (the most of any problem).
    idx : LongTensor of shape (h, r)
        The main columns of each problem, in order, padded.
    valid : BoolTensor of shape (h, r)
        Which entries of ``idx`` are main columns (the others pad).
    mask : Tensor of shape (h, r_F)
        1 on the main columns of ``F``, 0 on the tail.
    tail2 : Tensor of shape (h,)
        The bound of the tail's part of any squared score.
    """

    def __init__(self, F: torch.Tensor, tail: torch.Tensor, dmax: float):
        norms = torch.linalg.vector_norm(F, dim=1)  # (h, r)
        main = (norms > tail[:, None]) | (tail[:, None] <= 0)
        self.r = max(1, int(main.sum(1).max()))
        self.idx = torch.argsort((~main).to(torch.int8), dim=1, stable=True)[:, : self.r]
        self.valid = main.gather(1, self.idx)
        self.mask = main.to(F.dtype)
        self.tail2 = norms.square().mul(~main).sum(1) * dmax**2 * (1 + 1e-6)

    @staticmethod
    def of(F: torch.Tensor, tail: torch.Tensor, dmax: float) -> TailSplit | None:
        """The split of ``F``, or None when no column is in a tail."""
        split = TailSplit(F, tail, dmax)
        return None if bool(split.mask.all()) else split

    def columns(self, T: torch.Tensor) -> torch.Tensor:
        """The main columns of ``T`` (of shape (h, x, r_F)), zero padded: of shape (h, x, r)."""
        return T.gather(2, self.idx[:, None, :].expand(T.shape[0], T.shape[1], self.r)) * self.valid[:, None, :]

    def entries(self, u: torch.Tensor) -> torch.Tensor:
        """The main entries of ``u`` (of shape (h, r_F)), zero padded: of shape (h, r)."""
        return u.gather(1, self.idx) * self.valid


class SquaredBounds:
    """Upper bounds ``G + M`` of the squared L2 scores of every atom, for ``h`` problems.

    Parameters
    ----------
    D_low : Tensor of shape (v, d)
        The atoms in float32.
    F : Tensor of shape (h, d, r)
        The problems' factors ``F_0 = W L`` (working precision).
    dmax : float
        An upper bound of the atoms' norms.
    energy : Tensor of shape (h,)
        ``||F_0||_F^2``, the problems' energies.
    keep : bool, default False
        Keep the float32 products ``F_0^T d_j`` as ``products`` (of shape
        (h, v, r)), for a criterion that reuses them.
    tail : Tensor of shape (h,), optional
        A bound of what the columns left out of ``F`` add to any squared score
        (:class:`TailSplit`); ``G + M + tail`` is then the bound.

    Attributes
    ----------
    G : Tensor of shape (h, v)
        float32; ``G + M`` bounds every squared score from above.
    M : Tensor of shape (h,)
        The margin, in the working precision.
    products : Tensor of shape (h, v, r), or None
        The kept step-0 products.
    tail : Tensor of shape (h,), or None
        See the parameter.
    work : Tensor of shape (h, v)
        float32 work space for passes over the rows (allocated once: fresh
        buffers this large cost a page fault per 4 KiB every time).
    unit, gamma, dmax : float
        The unit roundoff of float32, the products' error factor and ``dmax``.
    """

    def __init__(
        self, D_low: torch.Tensor, F: torch.Tensor, dmax: float, energy: torch.Tensor, *, keep: bool = False, tail=None
    ):
        v, d = D_low.shape
        h, _, r = F.shape
        low = D_low.dtype
        self.unit = torch.finfo(low).eps / 2
        self.gamma = (d + 3) * self.unit / (1 - (d + 3) * self.unit)
        self.dmax = dmax
        self.top2 = energy * dmax**2
        self.products = torch.empty(h, v, r, dtype=low, device=F.device) if keep else None
        self.G = initial_scores(D_low, F, keep=self.products)
        self.M = initial_margin(self.gamma, self.unit, r, self.top2)
        self.work = torch.empty(h, v, dtype=low, device=F.device)
        self.tail = tail

    def margin(self, rows: torch.Tensor) -> torch.Tensor:
        """What ``G`` lacks to bound the squared scores of problems ``rows``: ``M``, and the tail's bound."""
        return rows_of(self.M if self.tail is None else self.M + self.tail, rows)

    def set_exact(self, rows: torch.Tensor, idx: torch.Tensor, squared: torch.Tensor) -> None:
        """Atoms ``idx`` (of shape (b, m)) of problems ``rows`` have exact squared scores ``squared``."""
        self.G[rows[:, None], idx] = up(squared - rows_of(self.M, rows)[:, None])

    def start_step(self, u: torch.Tensor, y: torch.Tensor, delta_c: torch.Tensor) -> None:
        """Before a step's updates: ``a = ||u||^2`` in float32, and the step's error (``delta_c``
        the error bound of ``c = D q``) and its rounding into ``G`` added to the margin."""
        self.a = u.square().sum(1).to(self.G.dtype)[:, None]
        self.M = self.M + step_margin(u, y, delta_c, self.gamma, self.dmax, self.unit)
        self.M = self.M + 1.01 * self.unit * (self.top2 + 2 * self.M)  # the float32 addition into G

    def update(self, atoms: slice, c: torch.Tensor, e: torch.Tensor, work: torch.Tensor) -> None:
        """``G += c (a c - 2 e)`` for the atoms ``atoms``: the change of their squared scores, from
        the float32 products ``c = D q`` and ``e = D y`` (of shape (h, len(atoms)), as ``work``)."""
        self.G[:, atoms].addcmul_(torch.mul(c, self.a, out=work).sub_(e, alpha=2), c)

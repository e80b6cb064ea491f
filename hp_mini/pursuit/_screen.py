"""The float32 screen of L1 scores: a certified interval for each candidate, cheaply.

In float64, an exact L1 score ``||Z a_j||_1`` with ``a_j = F_t^T d_j`` costs
``d r + n r`` operations. The screen keeps, in float32, the step-0 products
``D F_0`` (kept by :class:`~._bounds.SquaredBounds`) and every step's
``D q_s``; with ``L`` the identity (the L1 criterion whitens the samples),

    F_t^T d_j = F_0^T d_j - sum_s u_s (q_s . d_j),

``t r`` operations per atom instead of ``d r``, and ``||Z y||_1`` follows in
float32. The error bound of that estimate:

* ``y`` is off by at most ``dy``: the kept products' errors,
  ``gamma dmax ||F_0||_F`` and ``||u_s|| delta_c_s`` (``delta_c_s`` the error
  bound of ``D q_s``), and the rounding of the sum of ``t + 1`` terms,
  ``gamma_t (1 + gamma) dmax (||F_0||_F + sum_s ||u_s||)``;
* the samples' product ``p = Z y`` then errs by at most ``sqrt(n) dy`` (``Z``
  has orthonormal columns) plus its own rounding,
  ``(u + gamma_r) (1 + u) zc ||y||`` with ``zc = || (||Z_c||_1)_c ||_2``;
* and the float32 sum of ``|p|`` by ``gamma_n`` of itself.

When columns of ``F`` were left out of the products (:class:`~._bounds.TailSplit`),
the estimate uses the others only: their part of ``a_j``, at most
``sqrt(tail2)`` in norm, joins ``dy``.

Every term is raised by 1% for the roundings of the bound's own arithmetic.
Only the atoms whose interval reaches the largest lower end among the
candidates are then scored exactly.
"""

from __future__ import annotations

import torch

from hp_mini.pursuit._bounds import SquaredBounds, rows_of

__all__ = ["L1Screen", "survivors"]


class L1Screen:
    """Certified float32 intervals of L1 scores, from kept products.

    Parameters
    ----------
    products : Tensor of shape (h, v, r)
        The float32 step-0 products ``F_0^T d_j``.
    Z : Tensor of shape (h, n, r)
        The samples, with orthonormal columns (zero padded).
    n : list of int
        The number of samples of each problem.
    energy : Tensor of shape (h,)
        ``||F_0||_F^2``.
    n_atoms : int
        The number of steps (columns kept of ``D q_s``).
    bounds : SquaredBounds
        The squared bounds: float32's unit roundoff, the products' error
        factor, the largest atom norm and the tail's bound, if any (the tail's
        part of ``a_j`` is at most ``sqrt(tail2)`` in norm: it joins ``dy``).
    """

    def __init__(self, products, Z, n: list[int], energy, n_atoms: int, *, bounds: SquaredBounds):
        h, v, r = products.shape
        dtype, low = Z.dtype, products.dtype
        unit, gamma, dmax = bounds.unit, bounds.gamma, bounds.dmax
        self.products = products
        # D q_t in float32, row t: each step writes one contiguous row per problem
        self.Cq = torch.zeros(h, n_atoms, v, dtype=low, device=Z.device)
        self.U = torch.zeros(h, n_atoms, r, dtype=dtype, device=Z.device)  # u_t of the kept columns, row t
        self.tail = None if bounds.tail is None else bounds.tail.sqrt()
        self.Z32 = Z.to(low)
        self.zc = Z.abs().sum(1).norm(dim=1)  # || (||Z_c||_1)_c ||_2
        self.f0 = energy.sqrt()  # ||F_0||_F
        self.gamma_n = torch.tensor([m * unit / (1 - m * unit) for m in n], dtype=dtype, device=Z.device)
        self.gamma_r = r * unit / (1 - r * unit)
        self.drift = torch.zeros(h, dtype=dtype, device=Z.device)  # sum over steps of ||u_t|| delta_c_t
        self.usum = torch.zeros(h, dtype=dtype, device=Z.device)  # sum over steps of ||u_t||
        self.unit, self.gamma, self.dmax, self.r = unit, gamma, dmax, r

    def record(self, step: int, u: torch.Tensor, delta_c: torch.Tensor) -> None:
        """Step ``step``'s ``u = F^T q`` and the error bound ``delta_c`` of its products ``D q``
        (which the criterion stores in ``Cq[:, step]``)."""
        self.U[:, step] = u
        norm_u = u.norm(dim=1)
        self.drift += norm_u * delta_c
        self.usum += norm_u

    def interval(
        self, rows: torch.Tensor, idx: torch.Tensor, step: int, root_n: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimate and its error bound, both of shape (b, m), of the L1 scores of atoms
        ``idx`` for problems ``rows`` at step ``step`` (``root_n`` the square roots of the
        sample counts)."""
        unit, gamma, dmax, U = self.unit, self.gamma, self.dmax, self.U
        at = (rows[:, None], idx)
        y = self.products[at]  # (b, m, r)
        if step:
            steps = torch.arange(step, device=idx.device)
            cq = self.Cq[rows[:, None, None], steps[None, :, None], idx[:, None, :]]  # (b, step, m)
            y = torch.baddbmm(y, cq.mT, rows_of(U, rows)[:, :step].to(y.dtype), alpha=-1)
        est = torch.bmm(y, rows_of(self.Z32, rows).mT).abs_().sum(-1).to(U.dtype)
        norm_y = torch.linalg.vector_norm(y, dim=-1).to(U.dtype) * (1 + (self.r + 2) * unit)
        g_t = (step + 3) * unit / (1 - (step + 3) * unit)
        dy = gamma * dmax * self.f0 + self.drift + g_t * (1 + gamma) * dmax * (self.f0 + self.usum)
        if self.tail is not None:
            dy = dy + self.tail
        err = (rows_of(root_n * dy, rows) * (1 + 1e-9))[:, None] + (unit + self.gamma_r) * (1 + unit) * rows_of(
            self.zc, rows
        )[:, None] * norm_y
        err = 1.01 * (err + 1.01 * rows_of(self.gamma_n, rows)[:, None] * est)
        return est, err


def survivors(lo: torch.Tensor, hi: torch.Tensor, slack: float) -> torch.Tensor:
    """The columns of ``hi`` (of shape (b, m)), by decreasing ``hi``, that every row needs
    scored exactly: as many as the row with the most intervals reaching its largest lower end."""
    reach = lo.max(1).values
    survive = hi >= (reach - 2 * slack * reach.abs())[:, None]
    return torch.argsort(hi, dim=1, descending=True)[:, : int(survive.sum(1).max())]


"""Sparse codes of signals in a dictionary: matching pursuit, OMP and SOMP.

For a data matrix ``H`` of shape (n, d) and a dictionary ``D`` of shape (v, d)
(one atom per row), Simultaneous Orthogonal Matching Pursuit (SOMP) picks,
one step at a time, the atom whose correlations with the current residual are
largest over *all* samples, refits every chosen atom by least squares and
updates the residual::

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

* ``H`` is handled through a factorisation ``H_c = Z W^T`` with ``W`` of
  shape (d, r). For an attention head ``W`` is its ``W_O`` slice and ``r`` is
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
  atoms and all problems, taken together as ``[q y]^T D^T`` a block of atoms
  at a time, each block's bounds updated while it sits in the cache. All these products
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
* Columns of ``F`` no larger than rounding (those of float64 data that were
  float32 once, say) are left out of the float32 products and bounded
  together; they stay in every exact score, so they cost next to nothing and
  change nothing.
* Whatever depends only on the dictionary (its finiteness check, its float32
  copy, its largest atom norm) is computed once per atoms tensor and kept
  until that tensor is freed or changed in place.
* The coefficients in the atoms' own basis come from back-substitution with the
  triangular factor ``R`` of ``D[S]^T = Q R``.

The package
-----------
* :mod:`hp_mini.pursuit.result`: :class:`PursuitResult`, :class:`FactoredSignals`.
* ``_validation``: every check of the input, and what is prepared once per
  dictionary (its float32 copy and largest atom norm).
* ``_bounds``: the certified float32 bounds of the squared L2 scores (their
  derivation is in that module), the float32 products, ``up``/``down``.
* ``_criteria``: the criterion protocol and the two criteria (see below);
  ``_screen``: L1's float32 screen.
* :mod:`hp_mini.pursuit.engine`: the step loop (:func:`~hp_mini.pursuit.engine.pursue`),
  its input :class:`~hp_mini.pursuit.engine.Problem` and its typed result
  :class:`~hp_mini.pursuit.engine.RawPursuit`; the documented interface
  below the public functions.
* ``_somp`` (:func:`somp`, :func:`omp`, :func:`somp_factored`), ``_mp``
  (:func:`matching_pursuit`), and :mod:`hp_mini.pursuit.reference`, the literal
  oracle the engine is tested against.

A criterion
-----------
A selection criterion is one class that implements
:class:`~hp_mini.pursuit.engine.Criterion` (:class:`~hp_mini.pursuit.engine.L2Criterion`
and :class:`~hp_mini.pursuit.engine.L1Criterion` are the two there are),
registered by its ``name`` in :data:`hp_mini.pursuit.engine.CRITERIA` for the
public functions to accept that name; :func:`~hp_mini.pursuit.engine.pursue`
also takes the class itself. The engine keeps, for every criterion, the basis,
the rank-one updates and the certified bounds ``G + M`` of every atom's squared
L2 score (:class:`~hp_mini.pursuit.engine.Workspace` hands them over), and asks
the criterion:

``name``, ``needs_samples``, ``whitens``
    Its name; whether it needs every sample ``Z`` or only their second moment
    ``M``; whether ``factor`` replaces ``W`` (then ``Q^T W`` is recomputed from
    the caller's ``W`` at the end).
``factor(W, M, Z, dtype)``
    How a problem is presented to the engine: ``(W, L, Z)`` with ``F_0 = W L``.
``group_size(h, v, r, k, dtype)``, ``keeps_products(h, v, r, k, dtype)``
    How many problems may go together, and whether the step-0 float32
    products ``D F_0`` are kept for it (``bounds.products``).
``__init__(workspace)``, ``candidates``
    Built once per batch; ``candidates`` atoms are scored exactly first in
    each step (1: the engine takes it from the blocks' maxima of ``bound``).
``bound(rows, atoms=None)``
    Per atom, a float32 key that orders upper bounds of the score: never
    below it.
``can_win(rows, rest, threshold)``
    Whether a key ``rest`` may belong to an atom whose score reaches
    ``threshold`` (the best exact score of a round, less a relative 1e-9).
``score(rows, idx, step)``
    The exact scores (in the working precision) of atoms ``idx``, which also
    tighten their bounds (``Workspace.bounds.set_exact``, ``Workspace.settle``).
``exclude(at)``, ``start_step(step, delta_c, u, w)``, ``update(atoms, c)``
    Keep its own bounds, if any, valid: when atoms are chosen, and after each
    step, a block of atoms at a time (``c = D q_t`` in float32, each entry
    within ``delta_c`` of the exact product).
``reported(best)``
    The score a result reports for the winner's exact value.

The argmax is exact whatever the keys are, as long as they never fall below
the scores; so a new criterion is one new class and its test against a
literal oracle (``tests/test_pursuit_engine.py`` has one for the largest
absolute correlation).

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

from hp_mini.pursuit.result import FactoredSignals, PursuitResult  # noqa: I001  (the types first: the modules below use them)
from hp_mini.pursuit._mp import matching_pursuit
from hp_mini.pursuit._somp import omp, somp, somp_factored

__all__ = ["FactoredSignals", "PursuitResult", "matching_pursuit", "omp", "somp", "somp_factored"]

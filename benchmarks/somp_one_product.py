"""Would one dictionary product per step do? A simulation of the one-sided bound.

The engine (``hp_mini.pursuit``) keeps every atom's squared L2 score exact at
every step through two products with the dictionary, ``c = D q`` and
``e = D y``: with ``u = F^T q``, ``y = F u`` and ``a = ||u||^2``, each score
changes by ``c_j (a c_j - 2 e_j)``. Those two products alone take about 2.7x
the float32 floor on SmolLM2 (``benchmarks/somp.py`` times them), so a 2x target
needs fewer of them.

The change is the quadratic form of the rank-two matrix ``sym(q z^T)``,
``z = a q - 2 y``: one positive eigenvalue ``lam = (||z|| - a) / 2`` with
eigenvector ``p``, and one negative one. Dropping the negative part gives an
upper bound that needs one product per step: ``B_j += lam (p . d_j)^2``. An atom
whose bound reaches the step's best exact score must then be re-evaluated
exactly (``d r`` multiply-adds, where the bound's update costs ``d``).

The second product could instead be taken cheaply: in bfloat16, where this
machine's matrix units make it faster, ``e`` comes back rounded to 8 bits, off
by up to ``3 * 2^-8 ||d_j|| ||y||``, and the exact change plus twice ``|c_j|``
times that error is again an upper bound. It is followed the same way (its own
float32 roundings left out, so its count is the least it would need).

For some SmolLM2 heads (full vocabulary, L2, 50 steps) this follows the exact
scores in float64 step by step, and counts the atoms whose one-sided bound
reaches the best score, that is, the re-evaluations the one-product engine
would need. It also checks that the bound never falls below the exact score,
and times that many re-evaluations in their cheapest form (from kept float32
products) against the product they would save.

Run from the repository root (about 2 minutes)::

    .venv/bin/python benchmarks/somp_one_product.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hp_mini  # noqa: E402
from hp_mini.pursuit import FactoredSignals, somp_factored  # noqa: E402
from hp_mini.rank.ranking import head_signals
from somp import activations, recorded  # noqa: E402

# The error of a bfloat16 product with float32 accumulation, rounded to bfloat16, relative
# to ||d|| ||y||: the inputs' roundings (2^-8 each) and the output's.
BF16_ERROR = 3 * 2.0**-8


def factor(s: FactoredSignals) -> torch.Tensor:
    """``F = W L`` with ``L L^T`` the centred scatter matrix: the head's signals in factored form."""
    M = s.scatter.double()
    evals, evecs = torch.linalg.eigh(0.5 * (M + M.T))
    return s.W.double() @ (evecs * evals.clamp_min(0).sqrt())


def reevaluation_seconds(v: int, r: int, steps: int, count: int, heads: int) -> float:
    """Seconds for ``count`` re-evaluations per head and step, over ``heads`` heads and
    ``steps - 1`` steps, in their cheapest form: from kept float32 products (the
    step-0 products ``D F`` and every step's ``D q_s``), ``F_t^T d_j = (D F)_j -
    sum_s u_s (D q_s)_j`` costs ``r t`` multiply-adds per atom instead of ``d r``.
    Stand-in values; the atoms are drawn at random, as the bounds leave them."""
    g = torch.Generator().manual_seed(0)
    kept = torch.randn(heads, v, r, generator=g)  # D F
    cq = torch.randn(heads, v, steps, generator=g)  # D q_s
    u = torch.randn(heads, steps, r, generator=g)
    rows = torch.arange(heads)[:, None]
    total = 0.0
    for t in range(1, steps):
        idx = torch.randint(0, v, (heads, count), generator=g)
        start = time.perf_counter()
        torch.baddbmm(kept[rows, idx], cq[rows, idx][..., :t], u[:, :t], alpha=-1).square().sum(-1)
        total += time.perf_counter() - start
    return total


def saved_product_seconds(D32: torch.Tensor, heads: int, steps: int) -> float:
    """Seconds for the product the one-product engine saves, ``[heads, d] x [d, v]`` per later step."""
    cols = torch.randn(heads, D32.shape[1], generator=torch.Generator().manual_seed(1))
    out = torch.empty(heads, D32.shape[0])
    torch.matmul(cols, D32.T, out=out)
    start = time.perf_counter()
    for _ in range(steps - 1):
        torch.matmul(cols, D32.T, out=out)
    return time.perf_counter() - start


def bfloat16_share(D32: torch.Tensor) -> float:
    """Seconds of a bfloat16 product ``[540, d] x [d, v]`` (two vectors for each of SmolLM2's 270
    heads) over those of the float32 one, best of three each."""
    cols = torch.randn(540, D32.shape[1], generator=torch.Generator().manual_seed(2))
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = cols.to(dtype), D32.T.to(dtype)
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return times[torch.bfloat16] / times[torch.float32]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="3,12,20,27")
    parser.add_argument("--heads", default="0,2,4,6,8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=hp_mini.cache_dir() / "bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = hp_mini.load_model("smollm2-135m", progress=False)
    full = hp_mini.unembedding_dictionary(model, tok)
    z, W_O = recorded(model, tok, "smollm2-135m", 1000, args.cache)
    acts = activations(z, W_O, moments_only=True)
    D = full.atoms.double()
    v, d = D.shape
    heads = [(int(l), int(h)) for l in args.layers.split(",") for h in args.heads.split(",")]
    norms = D.norm(dim=1)
    per_step, half_per_step = torch.zeros(args.steps), torch.zeros(args.steps)
    engine_exact = 0.0  # the engine's exact scores per head and step, from its two float32 products
    for layer, head in heads:
        s = head_signals(acts, layer, head)
        F = factor(s)
        G = (D @ F).square().sum(1)  # exact squared scores
        bound, half = G.clone(), G.clone()
        Q = torch.zeros(d, 0, dtype=torch.float64)
        taken = torch.zeros(v, dtype=torch.bool)
        chosen, counts, half_counts = [], [], []
        for _ in range(args.steps):
            best = int(G.masked_fill(taken, -math.inf).argmax())
            reach = (bound >= G[best]) & ~taken
            counts.append(int(reach.sum()))
            bound[reach] = G[reach]  # re-evaluated exactly
            reach = (half >= G[best]) & ~taken
            half_counts.append(int(reach.sum()))
            half[reach] = G[reach]
            taken[best] = True
            chosen.append(best)
            r = D[best] - Q @ (Q.T @ D[best])
            r = r - Q @ (Q.T @ r)
            q = r / r.norm()
            Q = torch.cat([Q, q[:, None]], 1)
            u = F.T @ q
            y = F @ u
            a = float(u @ u)
            c = D @ q
            change = c * (a * c - 2 * (D @ y))
            G = G + change
            half = half + change + 2 * c.abs() * BF16_ERROR * norms * float(y.norm())
            F = F - torch.outer(q, u)
            zz = a * q - 2 * y
            lam = (float(zz.norm()) - a) / 2
            p = q + zz / zz.norm()
            p = p / p.norm()
            bound = bound + lam * (D @ p).square()
            assert bool((bound[~taken] >= G[~taken] - 1e-9 * float(G.max())).all()), "the bound fell below a score"
        # the simulation chose what the engine chooses
        engine = somp_factored([s], full, n_atoms=args.steps, criterion="l2")[0]
        assert engine.atoms.tolist() == chosen, (layer, head)
        engine_exact += engine.exact_scores / (len(heads) * args.steps)
        per_step += torch.tensor(counts, dtype=torch.float)
        half_per_step += torch.tensor(half_counts, dtype=torch.float)
        print(f"L{layer}H{head}: {sum(counts) / len(counts):.0f} re-evaluations per step, "
              f"{sum(half_counts) / len(half_counts):.0f} with e in bfloat16 (same atoms as the engine)", flush=True)
    mean = float(per_step.sum() / (len(heads) * args.steps))
    print()
    print(f"{len(heads)} heads, {v:,} atoms, {args.steps} steps: {mean:,.0f} exact re-evaluations per head and "
          f"step ({mean / v:.1%} of the atoms). Each costs d r = {d * 64:,} multiply-adds (r = 64), the "
          f"product it would save d = {d} per atom: the one-product engine would do {mean * 64 / v:.1f}x the "
          "arithmetic of the product it saves.")
    count = round(mean)
    redo = reevaluation_seconds(v, 64, args.steps, count, len(heads))
    saved = saved_product_seconds(full.atoms.float(), len(heads), args.steps)
    per_head = v * (64 + args.steps) * 4
    print(f"In their cheapest form, from kept float32 products (D F and every D q_s: {per_head / 2**20:.0f} MiB "
          f"per head, {270 * per_head / 2**30:.1f} GiB for SmolLM2's 270 heads), {count:,} re-evaluations per "
          f"head and step take {redo:.2f} s for these {len(heads)} heads over {args.steps} steps "
          f"({args.threads} threads), against {saved:.2f} s for the product they would save "
          f"([{len(heads)}, {d}] x [{d}, {v:,}] per step): {redo / saved:.1f}x.")
    half = float(half_per_step.sum() / (len(heads) * args.steps))
    share = bfloat16_share(full.atoms.float())
    redo_half = reevaluation_seconds(v, 64, args.steps, round(half), len(heads))
    print(f"With e in bfloat16 instead: {half:,.0f} exact re-evaluations per head and step, where the engine "
          f"needs {engine_exact:.1f}. The bfloat16 product takes {share:.2f} of the time of the float32 one "
          f"here, so it saves {(1 - share) * saved:.2f} s of the {saved:.2f} s above; the re-evaluations, in "
          f"the same cheapest form (the same {270 * per_head / 2**30:.1f} GiB kept), take {redo_half:.2f} s.")


if __name__ == "__main__":
    main()

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

For some SmolLM2 heads (full vocabulary, L2, 50 steps) this follows the exact
scores in float64 step by step, and counts the atoms whose one-sided bound
reaches the best score, that is, the re-evaluations the one-product engine
would need. It also checks that the bound never falls below the exact score.

Run from the repository root (about 2 minutes)::

    .venv/bin/python benchmarks/somp_one_product.py
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hp_mini  # noqa: E402
from hp_mini.pursuit import FactoredSignals, somp_factored  # noqa: E402
from hp_mini.ranking import head_signals  # noqa: E402
from somp import activations, recorded  # noqa: E402


def factor(s: FactoredSignals) -> torch.Tensor:
    """``F = W L`` with ``L L^T`` the centred scatter matrix: the head's signals in factored form."""
    M = s.scatter.double()
    evals, evecs = torch.linalg.eigh(0.5 * (M + M.T))
    return s.W.double() @ (evecs * evals.clamp_min(0).sqrt())


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
    per_step = torch.zeros(args.steps)
    for layer, head in heads:
        s = head_signals(acts, layer, head)
        F = factor(s)
        G = (D @ F).square().sum(1)  # exact squared scores
        bound = G.clone()
        Q = torch.zeros(d, 0, dtype=torch.float64)
        taken = torch.zeros(v, dtype=torch.bool)
        chosen, counts = [], []
        for _ in range(args.steps):
            best = int(G.masked_fill(taken, -math.inf).argmax())
            reach = (bound >= G[best]) & ~taken
            counts.append(int(reach.sum()))
            bound[reach] = G[reach]  # re-evaluated exactly
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
            G = G + c * (a * c - 2 * (D @ y))
            F = F - torch.outer(q, u)
            zz = a * q - 2 * y
            lam = (float(zz.norm()) - a) / 2
            p = q + zz / zz.norm()
            p = p / p.norm()
            bound = bound + lam * (D @ p).square()
            assert bool((bound[~taken] >= G[~taken] - 1e-9 * float(G.max())).all()), "the bound fell below a score"
        # the simulation chose what the engine chooses
        engine = somp_factored([s], full, n_atoms=args.steps, criterion="l2")[0].atoms.tolist()
        assert engine == chosen, (layer, head)
        per_step += torch.tensor(counts, dtype=torch.float)
        print(f"L{layer}H{head}: {sum(counts) / len(counts):.0f} re-evaluations per step "
              f"(same atoms as the engine)", flush=True)
    mean = float(per_step.sum() / (len(heads) * args.steps))
    print()
    print(f"{len(heads)} heads, {v:,} atoms, {args.steps} steps: {mean:,.0f} exact re-evaluations per head and "
          f"step ({mean / v:.1%} of the atoms). Each costs d r = {d * 64:,} multiply-adds (r = 64), the "
          f"product it would save d = {d} per atom: the one-product engine would do {mean * 64 / v:.1f}x the "
          "arithmetic of the product it saves.")


if __name__ == "__main__":
    main()

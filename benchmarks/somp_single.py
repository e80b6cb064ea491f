"""Benchmark of one ``hp_mini.somp`` call on one real head, against the reference SOMP.

The chapters and the head explorer call :func:`hp_mini.somp` on one head at a
time, so its fixed cost matters as much as its cost per step. For each number
of prompts ``n`` and each criterion this times, at the same thread count and in
the same run:

* ``hp_mini.somp(acts.head(layer, head), full_vocabulary, n_atoms=steps)``;
* :func:`hp_mini.pursuit.reference.reference_somp` on the same data (the full ``v x n``
  correlations and a least-squares refit every step, in float64),

asserts that both choose identical atoms, and prints the speed-up. It also times
``steps`` bare float32 passes over the dictionary (one per step, as the engine
takes them), the memory traffic that bounds one call from below. The first
``somp`` call on a dictionary prepares what depends only on the dictionary; it
is timed separately ("first call"), and the table reports the later calls (the
best of ``--repeats``), which is what a chapter calling ``somp`` head after
head sees.

The signals are given in float32 (as recorded) and in float64 (as the paper
authors' code takes them): the two should cost the same (``--signals``).
``--engine FILE`` times another version of the pursuit module instead.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/somp_single.py

The head outputs are recorded once and cached under ``$HP_MINI_CACHE/bench``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hp_mini  # noqa: E402
from _prompts import prompts  # noqa: E402
from hp_mini.pursuit.reference import reference_somp
from somp import load_engine  # noqa: E402


def recorded(model, tok, layer: int, n: int, cache: Path) -> hp_mini.HeadActivations:
    """Head outputs of one layer for ``n`` benchmark prompts, cached."""
    path = cache / f"single_L{layer}_n{n}.pt"
    if path.exists():
        saved = torch.load(path)
        return hp_mini.HeadActivations(saved["z"], saved["W_O"], None, [layer])
    acts = hp_mini.record_heads(model, tok, prompts(n), layers=[layer], batch_size=50, progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"z": acts.z, "W_O": acts.W_O}, path)
    return acts


def best_of(fn, repeats: int):
    out, best = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=23)
    parser.add_argument("--heads", default="4,0", help="heads of that layer (comma-separated)")
    parser.add_argument("--sizes", default="24,300", help="numbers of prompts (comma-separated)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--signals", default="float32,float64",
                        help="precisions the signals are given in (comma-separated): the recorded float32, "
                        "or float64 as the paper authors' code takes them")
    parser.add_argument("--engine", type=Path, default=None,
                        help="time the pursuit module in this file instead of hp_mini.pursuit "
                        "(an earlier version of it, to compare in the same conditions)")
    parser.add_argument("--cache", type=Path, default=hp_mini.cache_dir() / "bench")
    args = parser.parse_args()
    somp = hp_mini.somp if args.engine is None else load_engine(args.engine).somp

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    model, tok = hp_mini.load_model()
    full = hp_mini.unembedding_dictionary(model, tok)
    sizes = [int(s) for s in args.sizes.split(",")]
    heads = [int(h) for h in args.heads.split(",")]
    acts = recorded(model, tok, args.layer, max(sizes), args.cache)
    del model

    start = time.perf_counter()
    somp(acts.head(args.layer, heads[0])[: sizes[0]], full, n_atoms=args.steps)
    first = time.perf_counter() - start
    print(f"first call on the dictionary (includes its preparation): {first:.2f} s")

    # The floor of one call: each step reads the whole float32 dictionary once,
    # for the two products D [q y] that update every atom's bound. They are
    # timed in both forms (the engine takes [q y]^T D^T, a block of atoms at a
    # time), and a bare read (a sum) too; the table divides by the first.
    D32 = full.atoms.float()
    cols = torch.randn(2, D32.shape[1], generator=torch.Generator().manual_seed(0))
    out = torch.empty(D32.shape[0], 2)
    out_t = torch.empty(2, D32.shape[0])

    def passes():
        for _ in range(args.steps):
            torch.matmul(D32, cols.T, out=out)

    def passes_transposed():
        for _ in range(args.steps):
            torch.matmul(cols, D32.T, out=out_t)

    def reads():
        for _ in range(args.steps):
            D32.sum()

    _, t_pass = best_of(passes, max(args.repeats, 3))
    _, t_pass_t = best_of(passes_transposed, max(args.repeats, 3))
    _, t_read = best_of(reads, max(args.repeats, 3))
    print(f"{args.steps} bare passes over the float32 dictionary, D [q y] ([v, d] x [d, 2]): {t_pass:.3f} s; "
          f"as [q y]^T D^T ([2, d] x [d, v]): {t_pass_t:.3f} s; {args.steps} bare reads (a sum): {t_read:.3f} s")

    rows = []
    references = {}  # the reference takes every input in float64: run once per head, n and criterion
    for head in heads:
        for n in sizes:
            for signals in args.signals.split(","):
                X = acts.head(args.layer, head)[:n].to(getattr(torch, signals))
                for criterion in ("l1", "l2"):
                    fast, t_fast = best_of(lambda: somp(X, full, n_atoms=args.steps, criterion=criterion), args.repeats)
                    if (head, n, criterion) not in references:
                        references[head, n, criterion] = best_of(
                            lambda: reference_somp(X, full.atoms, args.steps, criterion=criterion), 1
                        )
                    ref, t_ref = references[head, n, criterion]
                    assert fast.atoms.tolist() == ref.atoms, (head, n, criterion, fast.atoms.tolist(), ref.atoms)
                    assert float((fast.evr.double() - ref.evr).abs().max()) < 1e-5
                    rows.append((head, n, signals, criterion, t_ref, t_fast))
                    print(f"L{args.layer}H{head} n={n} {signals} {criterion}: reference {t_ref:.2f} s, "
                          f"somp {t_fast:.3f} s, {t_ref / t_fast:.1f}x, atoms identical", flush=True)

    print()
    print(f"One somp call, SmolLM2 L{args.layer}, {len(full)} atoms, {args.steps} steps, "
          f"{threads} threads, load {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    print("| head | n | signals | criterion | reference, s | somp, s | speed-up | somp / bare passes | "
          "reference / bare passes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for head, n, signals, criterion, t_ref, t_fast in rows:
        print(f"| L{args.layer}H{head} | {n} | {signals} | {criterion} | {t_ref:.2f} | {t_fast:.3f} | "
              f"{t_ref / t_fast:.1f}x | {t_fast / t_pass:.2f}x | {t_ref / t_pass:.1f}x |")
    print(f"\nBare passes: {args.steps} products D [q y] ([v, d] x [d, 2]) in float32, {t_pass:.3f} s (best of "
          f"{max(args.repeats, 3)}; {t_pass_t:.3f} s as [q y]^T D^T, {t_read:.3f} s for {args.steps} bare reads). "
          "A method that updates every atom's score each step reads the dictionary once per step, so "
          "reference / bare passes is about the largest speed-up it can reach.")


if __name__ == "__main__":
    main()

"""Benchmark of the pursuit engine on SmolLM2: one table.

(a) whole-model, full-vocabulary head pursuit (270 heads, 49,152 atoms,
    50 steps, 1,000 prompts), for each criterion;
(b) the bare products ``D W_O`` for all layers, which any exact method must
    compute, in float64 (the precision of the pursuit's results) and in
    float32 (the precision of the engine's certified bounds), and the ratios a/b;
(c) the per-head speed-up over a straightforward reference implementation
    (full correlation matrix and a least-squares solve every step), with
    identical atoms asserted;
(d) peak memory of the pursuit, and how it changes when the number of prompts
    doubles (from n/2 to n).

Run from the repository root::

    .venv/bin/python benchmarks/somp.py

Recorded activations are cached (``--cache``, default ``$HP_MINI_CACHE/bench``)
so that a second run skips the model's forward passes.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hp_mini  # noqa: E402
from _prompts import prompts  # noqa: E402
from hp_mini.activations import HeadActivations, HeadMoments  # noqa: E402
from hp_mini.reference import reference_somp  # noqa: E402


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms from /proc."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def recorded(model, tok, part: int, cache: Path) -> torch.Tensor:
    """Pooled head outputs ``[1000, 30, 9, 64]`` of prompts ``1000 * part ...``, cached."""
    path = cache / f"z_{part}.pt"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        acts = hp_mini.record_heads(model, tok, prompts(1000, start=1000 * part), batch_size=100)
        torch.save({"z": acts.z, "texts": acts.texts}, path)
    return torch.load(path)["z"]


def activations(z: torch.Tensor, W_O: torch.Tensor, *, moments_only: bool) -> HeadActivations:
    if not moments_only:
        return HeadActivations(z, W_O, None, list(range(W_O.shape[0])))
    m = HeadMoments(0, torch.zeros(z.shape[1:], dtype=torch.float64), torch.zeros(*z.shape[1:], z.shape[-1], dtype=torch.float64))
    for chunk in z.split(250):  # streamed, as record_heads(store="moments") does
        c = chunk.double()
        m.count += len(c)
        m.sum += c.sum(0)
        m.second += torch.einsum("nlhk,nlhj->lhkj", c, c)
    return HeadActivations(None, W_O, None, list(range(W_O.shape[0])), m)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--ref-steps", type=int, default=20, help="steps of the per-head comparison (c)")
    parser.add_argument("--ref-head", default=None, help="layer,head for (c) (default: a middle layer's head 4)")
    parser.add_argument("--memory-layers", type=int, default=2, help="layers (x 9 heads) for (d)")
    parser.add_argument("--layers", type=int, default=None, help="only the first LAYERS layers (quick runs)")
    parser.add_argument("--cache", type=Path, default=hp_mini.cache_dir() / "bench")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    model, tok = hp_mini.load_model()
    full = hp_mini.unembedding_dictionary(model, tok)
    W_O = torch.stack([site.W_write for site in hp_mini.attention_heads(model)])  # gain folded in, as recorded
    z = recorded(model, tok, 0, args.cache)
    if args.layers is not None:
        z, W_O = z[:, : args.layers], W_O[: args.layers]
    del model  # only the recording needs it
    n, L, H, dh = z.shape
    v, d = full.atoms.shape
    print(f"{L * H} heads, {v} atoms, d_model {d}, d_head {dh}, {n} prompts, {args.steps} steps, float64")
    samples = activations(z, W_O, moments_only=False)
    moments = activations(z, W_O, moments_only=True)

    # (b) the bare products D W_O, all layers, in the dtype of the pursuit
    D64 = full.atoms.double()
    W64 = W_O.double()

    def floor():
        for layer in range(L):
            D64 @ W64[layer].permute(1, 0, 2).reshape(d, H * dh)

    _, t_floor = timed(floor)
    D32, W32 = full.atoms.float(), W_O.float()

    def floor32():
        for layer in range(L):
            D32 @ W32[layer].permute(1, 0, 2).reshape(d, H * dh)

    _, t_floor32 = timed(floor32)
    print(f"(b) bare products: {t_floor:.1f} s in float64, {t_floor32:.1f} s in float32", flush=True)

    # (a) whole model, both criteria
    run = {}
    for criterion, acts in (("l2", moments), ("l1", samples)):
        with PeakRSS() as mem:
            res, t = timed(lambda: hp_mini.pursue_heads(acts, full, n_atoms=args.steps, criterion=criterion, progress=False))
        run[criterion] = (res, t, mem.mib)
        print(f"(a) {criterion}: {t:.1f} s, peak +{mem.mib:.0f} MiB", flush=True)

    # (c) per head against the reference, same steps, identical atoms asserted
    head = tuple(int(x) for x in args.ref_head.split(",")) if args.ref_head else (L // 2, min(4, H - 1))
    X = samples.head(*head)
    per_head = {}
    for criterion, acts in (("l2", moments), ("l1", samples)):
        fast, t_fast = timed(
            lambda: hp_mini.pursue_heads(acts, full, n_atoms=args.ref_steps, criterion=criterion, heads=[head], progress=False)[head]
        )
        ref, t_ref = timed(lambda: reference_somp(X, full.atoms, args.ref_steps, criterion=criterion))
        ref_atoms, ref_evr = ref.atoms, ref.evr.tolist()
        assert fast.atoms.tolist() == ref_atoms, (criterion, fast.atoms.tolist(), ref_atoms)
        assert run[criterion][0][head].atoms[: args.ref_steps].tolist() == ref_atoms
        assert max(abs(a - b) for a, b in zip(fast.evr.tolist(), ref_evr)) < 1e-5
        per_head[criterion] = (t_ref, t_fast)
        print(f"(c) {criterion}: reference {t_ref:.1f} s, fast {t_fast:.2f} s, atoms identical", flush=True)

    # (d) memory when the number of prompts doubles (n/2 -> n), on a subset of heads
    subset = [(layer, h) for layer in range(min(args.memory_layers, L)) for h in range(H)]
    memory = {}
    for criterion in ("l2", "l1"):
        for zz in (z[: n // 2], z):
            acts = activations(zz, W_O, moments_only=criterion == "l2")
            with PeakRSS() as mem:
                hp_mini.pursue_heads(acts, full, n_atoms=args.steps, criterion=criterion, heads=subset, progress=False)
            memory[(criterion, len(zz))] = mem.mib
            del acts
        print(f"(d) {criterion}: {memory[(criterion, n // 2)]:.0f} -> {memory[(criterion, n)]:.0f} MiB", flush=True)

    t2, t1 = run["l2"][1], run["l1"][1]
    print()
    print(f"SOMP benchmark: SmolLM2-135M, {L * H} of 270 heads, {v} atoms, {args.steps} steps, {n} prompts "
          f"(float64, {torch.get_num_threads()} threads)")
    print("| measure | L2 | L1 |")
    print("|---|---|---|")
    print(f"| (a) whole-model pursuit, s | {t2:.1f} | {t1:.1f} |")
    print(f"| (b) bare products D W_O (all layers), float64, s | {t_floor:.1f} | {t_floor:.1f} |")
    print(f"| a / b (float64 floor) | {t2 / t_floor:.2f} | {t1 / t_floor:.2f} |")
    print(f"| (b') the same products in float32, s | {t_floor32:.1f} | {t_floor32:.1f} |")
    print(f"| a / b' (float32 floor) | {t2 / t_floor32:.2f} | {t1 / t_floor32:.2f} |")
    r2, f2 = per_head["l2"]
    r1, f1 = per_head["l1"]
    print(f"| (c) one head ({hp_mini.head_label(*head)}), {args.ref_steps} steps: reference / fast, s | {r2:.1f} / {f2:.2f} | {r1:.1f} / {f1:.2f} |")
    print(f"| (c) speed-up per head (identical atoms) | {r2 / f2:.0f}x | {r1 / f1:.0f}x |")
    print(f"| (d) peak memory, whole model, MiB above start | {run['l2'][2]:.0f} | {run['l1'][2]:.0f} |")
    h2 = n // 2
    print(f"| (d) peak memory, {len(subset)} heads, n={h2} -> n={n}, MiB above start | {memory[('l2', h2)]:.0f} -> {memory[('l2', n)]:.0f} "
          f"| {memory[('l1', h2)]:.0f} -> {memory[('l1', n)]:.0f} |")
    print("L2 runs from the streamed moments (store='moments'); L1 from the per-prompt outputs.")
    print("Results are float64 (exact argmax); the per-step dictionary products are float32 with certified error bounds.")
    print(f"Load average during the run: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()

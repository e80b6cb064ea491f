"""Whole-model head pursuit against its float32 floor, in one run at one thread count.

For one model, every attention head, the full vocabulary as the dictionary,
``--steps`` SOMP steps and ``--prompts`` prompts, this times in the same
process, at ``--threads`` threads:

* the floor: the bare float32 products ``D W_O`` of the dictionary with every
  head's output map, all layers (any exact method computes these; the engine
  takes its per-step products in float32 with certified error bounds, so the
  float32 products are the floor), timed before and after the pursuits;
* :func:`hp_mini.pursue_heads` for each criterion (L2 from the streamed
  moments, ``store="moments"``; L1 from the per-prompt outputs);
* the peak resident memory of the process during each pursuit, above its
  level with the model, the dictionary and the activations loaded;
* the engine's own float32 products, bare (step 0: the floor's products; each
  later step: one ``[2 heads, d] x [d, v]`` product), which bound the
  pursuit's time from below whatever the rest of the engine does;
* what any design that keeps a bound for every atom needs at least: one
  product ``[heads, d] x [d, v]`` per later step, and one update of the bounds
  and one maximum per row over ``heads x v`` values (with one product per step
  the bounds are looser: ``benchmarks/somp_one_product.py`` counts the exact
  re-evaluations that costs);

and prints a Markdown table of the ratio pursuit / floor, with the thread
count and the load average at the start and the end. The ratio is against the
faster of the two floor timings (the conservative one).

The targets:

* SmolLM2-135M (``--model smollm2-135m``: 270 heads, 49,152 atoms, 50 steps,
  1,000 prompts): L2 within 2x and L1 within 2.5x of the floor, at 1 and at 2
  threads, and faster at 2 threads than at 1;
* Gemma-3-270M (``--model gemma3-270m``: 72 heads, 262,144 atoms, 50 steps,
  500 prompts): L2 within 2x of the floor, peak memory at most 4 GB above the
  loaded model.

Run from the repository root, one process per thread count::

    .venv/bin/python benchmarks/somp.py --model smollm2-135m --threads 1
    .venv/bin/python benchmarks/somp.py --model smollm2-135m --threads 2
    .venv/bin/python benchmarks/somp.py --model gemma3-270m --threads 1 --criteria l2

The pooled head outputs are recorded once and cached (``--cache``, default
``$HP_MINI_CACHE/bench``), so later runs skip the model's forward passes.
``--engine FILE`` pursues with the ``somp_factored`` of another version of the
pursuit module, kept in one file, to compare two engines in the same
conditions.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hp_mini  # noqa: E402
from _prompts import prompts  # noqa: E402
from hp_mini.record.activations import HeadActivations, HeadMoments

DEFAULT_PROMPTS = {"smollm2-135m": 1000, "gemma3-270m": 500}
# The targets: the largest ratio pursuit / float32 floor allowed per criterion.
TARGETS = {"smollm2-135m": {"l2": 2.0, "l1": 2.5}, "gemma3-270m": {"l2": 2.0}}
GEMMA_MEMORY_TARGET_GB = 4.0


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory of the process while inside, sampled every 10 ms from /proc."""

    def __enter__(self):
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def recorded(model, tok, name: str, n: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled head outputs ``z [n, layers, heads, d_head]`` and ``W_O`` of ``n`` prompts, cached."""
    path = cache / f"somp_{name}_n{n}.pt"
    if path.exists():
        saved = torch.load(path)
        return saved["z"], saved["W_O"]
    acts = hp_mini.record_heads(model, tok, prompts(n), batch_size=50, progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"z": acts.z, "W_O": acts.W_O}, path)
    return acts.z, acts.W_O


def activations(z: torch.Tensor, W_O: torch.Tensor, *, moments_only: bool) -> HeadActivations:
    layers = list(range(W_O.shape[0]))
    if not moments_only:
        return HeadActivations(z, W_O, None, layers)
    shape = z.shape[1:]
    m = HeadMoments(0, torch.zeros(shape, dtype=torch.float64), torch.zeros(*shape, shape[-1], dtype=torch.float64))
    for chunk in z.split(250):  # streamed, as record_heads(store="moments") does
        c = chunk.double()
        m.count += len(c)
        m.sum += c.sum(0)
        m.second += torch.einsum("nlhk,nlhj->lhkj", c, c)
    return HeadActivations(None, W_O, None, layers, m)


def products32(D32: torch.Tensor, heads: int, steps: int, per_head: int = 2) -> float:
    """Seconds for the engine's per-step float32 products after step 0, bare.

    Each of the ``steps - 1`` later steps takes one product ``[q; y] D^T`` of two
    ``d``-vectors per head with the dictionary, ``[2 heads, d] x [d, v]`` (step 0
    takes ``D W_O L``, the floor's products). Timed here on stand-in vectors into
    one reused buffer, this is the arithmetic the engine cannot avoid: with the
    floor it bounds the pursuit's time from below. ``per_head=1`` times one
    vector per head and step instead (``D q`` alone), the least any design
    that keeps a bound for every atom needs.
    """
    v, d = D32.shape
    g = torch.Generator().manual_seed(0)
    cols = torch.randn(per_head * heads, d, generator=g)
    out = torch.empty(per_head * heads, v, dtype=torch.float32)
    torch.matmul(cols, D32.T, out=out)  # warm-up
    start = time.perf_counter()
    for _ in range(steps - 1):
        torch.matmul(cols, D32.T, out=out)
    return time.perf_counter() - start


def bookkeeping32(heads: int, v: int, steps: int) -> float:
    """Seconds for the least bookkeeping per step of a design that keeps a bound for
    every atom: one update of the ``heads x v`` float32 bounds from the step's
    product (``B += |c| s``: an absolute value and a fused multiply-add, two passes)
    and one maximum per row, for each of the ``steps - 1`` later steps."""
    g = torch.Generator().manual_seed(1)
    bounds, c = torch.rand(heads, v, generator=g), torch.randn(heads, v, generator=g)
    work, scale = torch.empty(heads, v), torch.rand(heads, 1, generator=g)
    start = time.perf_counter()
    for _ in range(steps - 1):
        bounds.addcmul_(torch.abs(c, out=work), scale)
        bounds.amax(1)
    return time.perf_counter() - start


def floor32(D32: torch.Tensor, W32: torch.Tensor) -> float:
    """Seconds for the bare float32 products ``D W_O`` of every layer (into one reused buffer)."""
    L, H, d, dh = W32.shape
    maps = [W32[layer].permute(1, 0, 2).reshape(d, H * dh).contiguous() for layer in range(L)]
    out = torch.empty(D32.shape[0], H * dh, dtype=torch.float32)
    torch.matmul(D32, maps[0], out=out)  # warm-up: pages of the buffer, the library's first call
    start = time.perf_counter()
    for m in maps:
        torch.matmul(D32, m, out=out)
    return time.perf_counter() - start


def load_engine(path: Path):
    """The pursuit module in ``path`` (an earlier version of ``hp_mini/pursuit``), loaded
    inside the ``hp_mini`` package so that its relative imports work."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"hp_mini._bench_engine_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(DEFAULT_PROMPTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=None, help="default: 1000 (SmolLM2), 500 (Gemma)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--criteria", default=None, help="comma-separated; default l2,l1 (SmolLM2), l2 (Gemma)")
    parser.add_argument("--layers", type=int, default=None, help="only the first LAYERS layers (quick runs)")
    parser.add_argument("--engine", type=Path, default=None,
                        help="pursue with the somp_factored of the module in this file instead of "
                        "hp_mini.pursuit's (an earlier version, to compare in the same conditions)")
    parser.add_argument("--cache", type=Path, default=hp_mini.cache_dir() / "bench")
    args = parser.parse_args()
    if args.engine is not None:
        from hp_mini.rank import ranking

        ranking.somp_factored = load_engine(args.engine).somp_factored
    torch.set_num_threads(args.threads)
    n = args.prompts or DEFAULT_PROMPTS[args.model]
    criteria = (args.criteria or ("l2,l1" if args.model == "smollm2-135m" else "l2")).split(",")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    load_start = load()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"load average {load_start} (1 / 5 min) at the start", flush=True)

    model, tok = hp_mini.load_model(args.model)
    full = hp_mini.unembedding_dictionary(model, tok)
    z, W_O = recorded(model, tok, args.model, n, args.cache)
    if args.layers is not None:
        z, W_O = z[:, : args.layers], W_O[: args.layers]
    _, L, H, dh = z.shape
    v, d = full.atoms.shape
    D32, W32 = full.atoms.float(), W_O.float()
    data = {c: activations(z, W_O, moments_only=c == "l2") for c in criteria}
    print(f"{args.model}: {L * H} heads, {v} atoms, d_model {d}, d_head {dh}, {n} prompts, "
          f"{args.steps} steps, dictionary {full.atoms.dtype}", flush=True)

    floor_before = floor32(D32, W32)
    print(f"float32 floor: {floor_before:.1f} s", flush=True)
    base = rss()  # the model, the dictionary and the activations loaded
    runs, exact, screened = {}, {}, {}
    for criterion in criteria:
        acts = data[criterion]
        with PeakRSS() as mem:
            start = time.perf_counter()
            found = hp_mini.pursue_heads(acts, full, n_atoms=args.steps, criterion=criterion, progress=False)
            seconds = time.perf_counter() - start
        assert len(found) == L * H and all(len(r) == args.steps for r in found.values())
        runs[criterion] = (seconds, (mem.peak - base) / 2**30)
        exact[criterion] = sum(r.exact_scores for r in found.values()) / (L * H * args.steps)
        screened[criterion] = sum(r.screened_scores for r in found.values()) / (L * H * args.steps)
        print(f"{criterion}: {seconds:.1f} s, peak +{runs[criterion][1]:.2f} GiB, "
              f"{exact[criterion]:.1f} exact scores per head and step", flush=True)
        del found
    floor_after = floor32(D32, W32)
    floor = min(floor_before, floor_after)
    steps_products = products32(D32, L * H, args.steps)
    one_product = products32(D32, L * H, args.steps, per_head=1)
    least_bookkeeping = bookkeeping32(L * H, v, args.steps)
    bound = floor + steps_products  # the engine's own products, bare: its arithmetic bound
    load_end = load()

    targets = TARGETS[args.model]
    print()
    print(f"`{command}`  ")
    print(f"{args.model}, {L * H} heads, {v:,} atoms, {args.steps} steps, {n:,} prompts, "
          f"{torch.get_num_threads()} thread(s) on {os.cpu_count()} CPUs; "
          f"load average (1 / 5 min) {load_start} at the start, {load_end} at the end.")
    print()
    print("| criterion | threads | pursuit, s | float32 floor, s (before / after) | ratio | target | "
          "peak memory above the loaded model, GiB |")
    print("|---|---|---|---|---|---|---|")
    for criterion, (seconds, peak) in runs.items():
        target = targets.get(criterion)
        ratio = seconds / floor
        verdict = "n/a" if target is None else f"<= {target}x: {'met' if ratio <= target else 'not met'}"
        print(f"| {criterion.upper()} | {torch.get_num_threads()} | {seconds:.1f} | "
              f"{floor_before:.1f} / {floor_after:.1f} | {ratio:.2f}x | {verdict} | {peak:.2f} |")
    if args.model == "gemma3-270m":
        worst = max(peak for _, peak in runs.values())
        print(f"\nPeak memory target (<= {GEMMA_MEMORY_TARGET_GB} GB above the loaded model): "
              f"{'met' if worst * 2**30 / 1e9 <= GEMMA_MEMORY_TARGET_GB else 'not met'} "
              f"({worst * 2**30 / 1e9:.2f} GB).")
    print(f"\nWhat bounds the ratio: the engine's own float32 products, bare, take the floor's "
          f"products (step 0) and {args.steps - 1} products [2 x {L * H} heads, {d}] x [{d}, {v:,}] "
          f"({steps_products:.1f} s, timed in this run): {bound:.1f} s in all, "
          f"{bound / floor:.2f}x the floor. The rest of each pursuit is the exact scores, the "
          f"bounds' passes over the heads x atoms rows and the rank-one updates:")
    for criterion, (seconds, _) in runs.items():
        print(f"- {criterion.upper()}: pursuit / own products = {seconds / bound:.2f}x "
              f"({seconds - bound:.1f} s beyond them); exact scores computed: "
              f"{exact[criterion]:.1f} per head and step, of {v:,} atoms"
              + (f" (after {screened[criterion]:.1f} float32 screens)" if screened[criterion] else ""))
    least = floor + one_product + least_bookkeeping
    print(f"\nA design with one product per step, D q alone (the least that keeps a bound for every "
          f"atom), would take the floor and {args.steps - 1} products [{L * H} heads, {d}] x [{d}, {v:,}] "
          f"({one_product:.1f} s): {(floor + one_product) / floor:.2f}x the floor; with the least "
          f"bookkeeping per step (one update of the {L * H} x {v:,} bounds and one maximum per row, "
          f"{least_bookkeeping:.2f} s), {least / floor:.2f}x, before any exact score. Its bounds are "
          f"looser, and benchmarks/somp_one_product.py measures the exact re-evaluations they cost.")
    print("\nResults are float64 with an exact argmax; the per-step dictionary products are float32 "
          "with certified error bounds. The ratio is against the faster floor timing.")


if __name__ == "__main__":
    main()

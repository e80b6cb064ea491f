"""Full-size editing experiments of the chapter "Editing text generation".

Question answering and toxicity on SmolLM2 (or any causal LM), with the paper's
controls at full size: 10 random draws per k (the chapter uses fewer to stay
within its time budget). Prints the two tables (median normalised scores) and
writes the tidy tables as CSV when asked.

    python benchmarks/editing_text.py                    # both experiments, 10 draws
    python benchmarks/editing_text.py --only qa --n-random 3
    python benchmarks/editing_text.py --csv results/     # also save the tidy tables
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import hp_mini
from hp_mini.dictionary import concept_words, unembedding_dictionary
from hp_mini.evaluation import edit_table, evaluate_head_edits, qa_evaluator, summarize_edits, toxicity_evaluator
from hp_mini.ranking import rank_heads
from hp_mini.textdata import QA_FEWSHOT, load_text_dataset, qa_prompt, toxic_words


SKIP_LAYERS = 3  # token-copying first layers are left out of every selection (see the book)


def _outside_first_layers(heads):
    return [h for h in heads if h[0] >= SKIP_LAYERS]


def fractions_of_heads(n_heads: int, fractions=(0.01, 0.02, 0.04)) -> list[int]:
    return [max(1, round(f * n_heads)) for f in fractions]


def _per_k(model, evaluate, selections, ks, alpha, acts, n_random, seed):
    """evaluate_head_edits one k at a time, printing each partial table as it is done."""
    import pandas as pd

    baseline = evaluate()
    print("unedited:", {m: round(v, 3) for m, v in baseline.items()}, flush=True)
    parts = []
    for i, k in enumerate(ks):
        part = evaluate_head_edits(model, evaluate, selections, ks=[k], alpha=alpha, pool=acts, n_random=n_random,
                                   seed=seed, baseline=baseline, progress=False)
        parts.append(part if i == 0 else part[part.method != "unedited"])
        print(edit_table(part).to_string(), flush=True)
    return pd.concat(parts, ignore_index=True)


def qa_experiment(model, tok, *, ks, n_random, n_atoms, seed, alpha=-1.0):
    """Countries vs other questions; heads chosen on the selection split, scored on the evaluation split."""
    sel = load_text_dataset("qa", split="selection")
    ev = load_text_dataset("qa", split="evaluation")
    acts = hp_mini.record_heads(model, tok, [qa_prompt(q) for q in sel["question"]], progress=False)
    countries = unembedding_dictionary(model, tok, concept_words("countries"))
    somp = rank_heads(acts, countries, n_atoms=n_atoms, progress=False)
    lens = rank_heads(acts, countries, method="logit_lens", progress=False)
    evaluate = qa_evaluator(model, tok, [qa_prompt(q) for q in ev["question"]], ev["answers"], ev["group"],
                            prefix=QA_FEWSHOT)
    selections = {"SOMP": _outside_first_layers(somp.heads), "logit lens": _outside_first_layers(lens.heads)}
    table = _per_k(model, evaluate, selections, ks, alpha, acts, n_random, seed)
    # Enhancement: the largest SOMP set scaled by 5 (no controls).
    enhanced = evaluate_head_edits(model, evaluate, {"SOMP": selections["SOMP"]}, ks=[ks[-1]], alpha=5.0, progress=False)
    return table, somp, lens, enhanced


def toxicity_experiment(model, tok, *, ks, n_random, n_atoms, seed):
    """Toxic continuations; heads chosen with the selection words, scored with the held-out words."""
    sel = load_text_dataset("toxicity", split="selection")
    ev = load_text_dataset("toxicity", split="evaluation")
    acts = hp_mini.record_heads(model, tok, list(sel["prompt"]), progress=False)
    words = unembedding_dictionary(model, tok, toxic_words("selection"))
    somp = rank_heads(acts, words, n_atoms=min(n_atoms, len(words)), progress=False)
    lens = rank_heads(acts, words, method="logit_lens", progress=False)
    evaluate = toxicity_evaluator(model, tok, list(ev["prompt"]), toxic_words("held_out"))
    selections = {"SOMP": _outside_first_layers(somp.heads), "logit lens": _outside_first_layers(lens.heads)}
    table = _per_k(model, evaluate, selections, ks, -1.0, acts, n_random, seed)
    return table, somp, lens, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", choices=["qa", "toxicity"], default=None)
    parser.add_argument("--n-random", type=int, default=10)
    parser.add_argument("--n-atoms", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None, help="folder to write the tidy tables to")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tok = hp_mini.load_model(args.model)
    n_heads = sum(s.n_heads for s in hp_mini.attention_heads(model))
    ks = fractions_of_heads(n_heads)
    print(f"{args.model}: {n_heads} heads, editing k = {ks} (1%, 2%, 4%), {args.n_random} random draws\n")
    experiments = {"qa": qa_experiment, "toxicity": toxicity_experiment}
    for name, run in experiments.items():
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        print(f"running {name} ...", flush=True)
        table, somp, lens, enhanced = run(model, tok, ks=ks, n_random=args.n_random, n_atoms=args.n_atoms, seed=args.seed)
        print(f"== {name} ({time.perf_counter() - start:.0f} s) ==")
        print("SOMP top heads:", " ".join(hp_mini.head_label(*h) for h in _outside_first_layers(somp.heads)[: ks[-1]]))
        print("logit-lens top heads:", " ".join(hp_mini.head_label(*h) for h in _outside_first_layers(lens.heads)[: ks[-1]]))
        base = table[table.method == "unedited"].set_index("metric")["value"]
        print("unedited:", ", ".join(f"{m} = {v:.3f}" for m, v in base.items()))
        print("\nmedian normalised score (random: median over draws)")
        print(edit_table(table).to_string())
        summary = summarize_edits(table[table.method == "random"])
        print("\nrandom controls, interquartile range")
        print(summary[["q25", "q75"]].round(2).to_string())
        print()
        if enhanced is not None:
            print("enhancement (alpha = 5), normalised:")
            print(edit_table(enhanced).to_string(), "\n")
        if args.csv:
            args.csv.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.csv / f"editing_{name}.csv", index=False)


if __name__ == "__main__":
    main()

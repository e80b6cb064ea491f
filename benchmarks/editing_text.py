"""Full-size editing experiments of the chapter "Editing text generation".

Question answering and toxicity on SmolLM2 (or any causal LM) with the paper's
controls at full size: 10 random draws per k (median and interquartile range),
heads selected with the paper's L1 criterion, k = 1%, 2% and 4% of the heads.
The data and generation settings are the chapter's. Prints, as Markdown:

- QA, heads inverted (alpha = -1): F1 on country answers (target) and on the
  other answers, normalised to the unedited model, for SOMP, random (median
  [IQR]) and logit-lens heads at each k;
- QA, heads enhanced (alpha = 5), the same layout;
- toxicity (alpha = -1): classifier toxic fraction, mean classifier toxicity
  and held-out lexical rate, normalised, and the raw held-out word counts.

    python benchmarks/editing_text.py                       # everything, 10 draws, L1 (about 30 min on 1 CPU thread)
    python benchmarks/editing_text.py --only qa --n-random 3
    python benchmarks/editing_text.py --criterion l2 --csv results/   # faster ranking; tidy tables as CSV
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import hp_mini
from hp_mini.dictionary import concept_words, unembedding_dictionary
from hp_mini.evaluation import edit_table, evaluate_head_edits, qa_evaluator, toxicity_evaluator
from hp_mini.ranking import rank_heads
from hp_mini.textdata import QA_FEWSHOT, load_text_dataset, qa_prompt, toxic_words

SKIP_LAYERS = 3  # token-copying first layers are left out of every selection (see the book)


def _outside_first_layers(heads, skip=SKIP_LAYERS):
    return [h for h in heads if h[0] >= skip]


def fractions_of_heads(n_heads: int, fractions=(0.01, 0.02, 0.04)) -> list[int]:
    return [max(1, round(f * n_heads)) for f in fractions]


def markdown(wide) -> str:
    """A wide ``edit_table`` as a Markdown table, columns named ``k=3 SOMP`` etc."""
    flat = wide.copy()
    flat.columns = [f"k={k} {method}" for k, method in wide.columns]
    flat.index.name = "metric"
    return flat.to_markdown()


def _sweep(model, evaluate, selections, ks, alpha, acts, n_random, seed, baseline):
    """evaluate_head_edits one k at a time, printing each partial table as it is done."""
    import pandas as pd

    parts = []
    for k in ks:
        start = time.perf_counter()
        part = evaluate_head_edits(model, evaluate, selections, ks=[k], alpha=alpha, pool=acts, n_random=n_random,
                                   seed=seed, baseline=baseline, progress=False)
        parts.append(part if not parts else part[part.method != "unedited"])
        print(f"  alpha={alpha:g} k={k} done in {time.perf_counter() - start:.0f} s", flush=True)
    return pd.concat(parts, ignore_index=True)


def _rank(acts, dictionary, *, n_atoms, criterion):
    somp = rank_heads(acts, dictionary, n_atoms=min(n_atoms, len(dictionary)), criterion=criterion, progress=False)
    lens = rank_heads(acts, dictionary, method="logit_lens", progress=False)
    return {"SOMP": _outside_first_layers(somp.heads), "logit lens": _outside_first_layers(lens.heads)}


def qa_experiment(model, tok, *, ks, n_random, n_atoms, criterion, seed, max_new_tokens=5):
    """Countries vs other questions; heads chosen on the selection split, scored on the evaluation split."""
    sel = load_text_dataset("qa", split="selection")
    ev = load_text_dataset("qa", split="evaluation")
    acts = hp_mini.record_heads(model, tok, [qa_prompt(q) for q in sel["question"]], progress=False)
    selections = _rank(acts, unembedding_dictionary(model, tok, concept_words("countries")),
                       n_atoms=n_atoms, criterion=criterion)
    evaluate = qa_evaluator(model, tok, [qa_prompt(q) for q in ev["question"]], ev["answers"], ev["group"],
                            prefix=QA_FEWSHOT, max_new_tokens=max_new_tokens)
    baseline = evaluate()
    groups = {g: list(ev["group"]).count(g) for g in sorted(set(ev["group"]))}
    info = f"n = {len(ev)} evaluation questions ({groups}), {len(sel)} selection questions"
    tables = {alpha: _sweep(model, evaluate, selections, ks, alpha, acts, n_random, seed, baseline)
              for alpha in (-1.0, 5.0)}
    return selections, baseline, info, tables


def toxicity_experiment(model, tok, *, ks, n_random, n_atoms, criterion, seed, max_new_tokens=16):
    """Toxic continuations; heads chosen with the selection words, scored with the held-out words."""
    sel = load_text_dataset("toxicity", split="selection")
    ev = load_text_dataset("toxicity", split="evaluation")
    acts = hp_mini.record_heads(model, tok, list(sel["prompt"]), progress=False)
    selection_words, held_out = toxic_words("selection"), toxic_words("held_out")
    assert not set(selection_words) & set(held_out)
    selections = _rank(acts, unembedding_dictionary(model, tok, selection_words), n_atoms=n_atoms, criterion=criterion)
    evaluate = toxicity_evaluator(model, tok, list(ev["prompt"]), held_out, max_new_tokens=max_new_tokens)
    baseline = evaluate()
    info = (f"n = {len(ev)} evaluation prompts, {len(sel)} selection prompts, {len(selection_words)} selection words, "
            f"{len(held_out)} held-out words")
    tables = {-1.0: _sweep(model, evaluate, selections, ks, -1.0, acts, n_random, seed, baseline)}
    return selections, baseline, info, tables


METRICS = {
    "qa": ["f1_country", "f1_other"],
    "toxicity": ["toxic_fraction", "toxicity", "lexical"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", choices=["qa", "toxicity"], default=None)
    parser.add_argument("--n-random", type=int, default=10)
    parser.add_argument("--n-atoms", type=int, default=50)
    parser.add_argument("--criterion", choices=["l1", "l2"], default="l1", help="SOMP criterion (the paper: l1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None, help="folder to write the tidy tables to")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tok = hp_mini.load_model(args.model)
    n_heads = sum(s.n_heads for s in hp_mini.attention_heads(model))
    ks = fractions_of_heads(n_heads)
    print(f"{args.model}: {n_heads} heads, editing k = {ks} (1%, 2%, 4%), {args.n_random} random draws, "
          f"criterion {args.criterion}, layers >= {SKIP_LAYERS}\n", flush=True)
    experiments = {"qa": qa_experiment, "toxicity": toxicity_experiment}
    for name, run in experiments.items():
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        print(f"running {name} ...", flush=True)
        selections, baseline, info, tables = run(model, tok, ks=ks, n_random=args.n_random, n_atoms=args.n_atoms,
                                                 criterion=args.criterion, seed=args.seed)
        print(f"\n## {name} ({time.perf_counter() - start:.0f} s)\n")
        print(info + "\n")
        for method, heads in selections.items():
            print(f"- {method} top heads: " + " ".join(hp_mini.head_label(*h) for h in heads[: ks[-1]]))
        print("- unedited: " + ", ".join(f"{m} = {v:.3f}" for m, v in baseline.items()) + "\n")
        for alpha, table in tables.items():
            print(f"### alpha = {alpha:g}: score / unedited score (random: median [IQR] of {args.n_random} draws)\n")
            print(markdown(edit_table(table, METRICS[name], iqr=True)) + "\n")
            if name == "toxicity":
                print("raw held-out word counts (random: median [IQR]):\n")
                print(markdown(edit_table(table, ["lexical_hits"], column="value", decimals=1, iqr=True)) + "\n")
            if args.csv:
                args.csv.mkdir(parents=True, exist_ok=True)
                table.to_csv(args.csv / f"editing_{name}_alpha{alpha:g}.csv", index=False)


if __name__ == "__main__":
    main()

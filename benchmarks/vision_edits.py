"""The paper's two vision experiments on a LLaVA of hp_mini: the MNIST row and captioning edits.

``--model smollm2-llava`` (the default) is a LLaVA whose language model is
SmolLM2-135M-Instruct, frozen (30 layers x 9 heads = 270 heads);
``--model gemma3-llava`` is the same recipe around Gemma-3-270M (18 layers x 4
heads = 72 heads). Only their CLIP vision towers and projectors were trained
(:mod:`hp_mini.vision.llava`).

MNIST row. Held-out MNIST test digits, ``--rank-per-class`` of each digit to
rank the heads and the next ``--per-class`` of each digit to score them. Each
head's write is pooled over the 17 image tokens (the paper's pooling) and,
as an extra, taken at the answer position (the last prompt position);
dictionary: the ten digit names and ten numerals in the language model's vocabulary
(:func:`hp_mini.experiments.vision.concept_dictionary`, first-piece rule).
SOMP (EVR after as many steps as the dictionary has atoms) and the logit lens
rank the heads; a fifth selection ranks heads by the share of their attention,
at the answer position, that falls on the image tokens
(:func:`hp_mini.experiments.vision.image_attention`). The top k heads
(:data:`SETTINGS`; on smollm2-llava k = 2, 4, 8, 16, 32: the paper's 8, 16,
32 heads and its shares 0.8, 1.6, 3.1% of 270 heads; on gemma3-llava k = 1,
2, 4, 8, 16, the same shares of 72 heads and beyond) are scaled by alpha = -1 and alpha = 0, and the exact-match
accuracy of the first answer token ("Which digit is this? Answer with its
name.") is divided by the unedited accuracy. Random controls: ``--n-random``
distinct sets per k drawn like the SOMP set layer by layer, avoiding it
(:func:`hp_mini.random_heads_like`, seed ``--seed + k``; where fewer distinct
sets exist, as for one head of Gemma's four per layer, each is edited once).

Captioning. Held-out scenes of :mod:`hp_mini.vision.shapes`: ``--scenes``
(seed 8) to rank and ``--scenes`` (seed 7) to caption. Concepts colour and
count (dictionaries of their words); the top 16 heads are inhibited
(alpha = -1) and the top 32 enhanced (alpha = 5), the paper's head counts, on
smollm2-llava; on gemma3-llava the same shares of its heads, 4 and 8. Scores: the concept's words
per caption and CIDEr-D (pycocoevalcap's scorer on lower-cased words,
:mod:`hp_mini.experiments.captioning`), both divided by the unedited captions'.

As in the text experiments, layer 0 is left out of every selection.
Writes ``vision_MODEL.csv`` (one row per edit and metric) and
``vision_MODEL.json`` (command, settings, seconds, threads, versions,
rankings, image attention, answers and captions of the unedited model and of
every non-random edit) into ``--out``, each written whole or not at all::

    python benchmarks/vision_edits.py --threads 1 --out hp_mini/data/results
    python benchmarks/vision_edits.py --model gemma3-llava --threads 2 --out hp_mini/data/results
    python benchmarks/vision_edits.py --rank-per-class 1 --per-class 1 --scenes 4 --n-random 2 --ks 2 --out /tmp/x   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import functools
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
from hp_mini.experiments import captioning, vision
from hp_mini.experiments.driver import evaluate_head_edits
from hp_mini.model.sites import head_label
from hp_mini.rank.controls import heads_moved
from hp_mini.vision import llava, shapes

SETTINGS = {
    # ks of the MNIST row; caption edits (alpha, k): the paper's inhibition and enhancement
    "smollm2-llava": {"ks": [2, 4, 8, 16, 32], "caption_edits": ((-1.0, 16), (5.0, 32))},
    "gemma3-llava": {"ks": [1, 2, 4, 8, 16], "caption_edits": ((-1.0, 4), (5.0, 8))},
}
SKIP_LAYERS = 1
TOP = 32  # head labels recorded per ranking
CAPTION_CONCEPTS = ("colour", "count")
COLUMNS = ["model", "experiment", "alpha", "method", "k", "draw", "heads", "metric", "value", "baseline", "normalised"]


def rankings(acts, dictionary) -> dict[str, list]:
    """SOMP and logit-lens rankings of recorded heads, layer 0 left out, as lists of heads."""
    found = vision.somp_and_lens_rankings(acts, dictionary, skip_layers=SKIP_LAYERS)
    return {name: list(r.heads) for name, r in found.items()}


def timed(seconds: dict, name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds[name] = round(time.perf_counter() - start, 2)
    print(f"  {name}: {seconds[name]:.1f} s", flush=True)
    return out


def distinct_draws(target, acts, n: int, seed: int) -> list[list]:
    """Up to ``n`` distinct random control sets drawn like ``target``, each once (fewer where fewer exist)."""
    draws = hp_mini.random_heads_like(target, acts, n_draws=n, seed=seed, fill="nearest")
    return [list(d) for d in dict.fromkeys(tuple(d) for d in draws)]


def edits(model, evaluate, selections, *, ks, alpha, acts, args, baseline, keep, experiment):
    """The selections' edits and, per k, ``--n-random`` distinct random sets drawn like the SOMP set.

    Returns the tidy rows, the outputs of the non-random edits, and per k the
    number of distinct random sets and of random heads moved to nearer layers.
    """
    run = functools.partial(evaluate_head_edits, model, evaluate, alpha=alpha, baseline=baseline, keep=keep,
                            progress=False)
    table = run(selections, ks=ks)
    outputs = {f"{m}|{k}": list(v) for (m, k, _d), v in table.attrs["outputs"].items()}
    frames, extra = [table], {"distinct_random": {}, "random_moved": {}}
    for k in ks:
        target = selections["SOMP"][:k]
        draws = distinct_draws(target, acts, args.n_random, args.seed + k)
        rand = run({f"random {d}": draw for d, draw in enumerate(draws)}, ks=[k])
        rand = rand[rand["method"] != "unedited"]
        frames.append(rand.assign(draw=[int(m.split()[1]) for m in rand["method"]], method="random"))
        extra["distinct_random"][str(k)] = len({tuple(d) for d in draws})
        extra["random_moved"][str(k)] = heads_moved(target, acts)
    table = pd.concat(frames, ignore_index=True).assign(model=args.model, experiment=experiment, alpha=float(alpha))
    return table[table["method"] != "unedited"][COLUMNS], outputs, extra


def mnist_row(model, processor, args, meta) -> list[pd.DataFrame]:
    seconds: dict[str, float] = {}
    ranking_digits, scoring_digits = vision.ranking_and_scoring_digits(args.rank_per_class, args.per_class)
    text = llava.prompt(processor, "name")
    prompts = [text] * len(ranking_digits["image"])
    acts = {pool: timed(seconds, f"record pool={pool}", hp_mini.record_heads, model, processor, prompts,
                        images=ranking_digits["image"], pool=pool, batch_size=50, progress=False)
            for pool in ("image", "last")}
    dictionary = vision.concept_dictionary(model, processor, "digits")
    ranked = {pool: timed(seconds, f"rank pool={pool}", rankings, acts[pool], dictionary) for pool in acts}
    reads = timed(seconds, "image attention", vision.image_attention, model, processor, ranking_digits["image"], text)
    selections = {"SOMP": ranked["image"]["SOMP"], "logit lens": ranked["image"]["logit lens"],
                  "SOMP (answer position)": ranked["last"]["SOMP"],
                  "logit lens (answer position)": ranked["last"]["logit lens"],
                  "image readers": [h for h in vision.top_heads(reads) if h[0] >= SKIP_LAYERS]}
    evaluate = llava.evaluator(model, processor, scoring_digits["image"], scoring_digits["label"], "name")
    baseline = timed(seconds, "unedited", evaluate)
    out = {"unedited": list(evaluate.answers)}
    frames, info = [], {}
    for alpha in args.alphas:
        table, outputs, extra = timed(seconds, f"edits alpha={alpha:g}", edits, model, evaluate, selections,
                                      ks=args.ks, alpha=alpha, acts=acts["image"], args=args, baseline=baseline,
                                      keep="answers", experiment="mnist")
        frames.append(table)
        out.update({f"{alpha:g}|{key}": v for key, v in outputs.items()})
        info[f"{alpha:g}"] = extra
    unedited = pd.DataFrame({"model": args.model, "experiment": "mnist", "alpha": float("nan"), "method": "unedited",
                             "k": 0, "draw": 0, "heads": "", "metric": list(baseline),
                             "value": list(baseline.values()), "baseline": list(baseline.values()),
                             "normalised": 1.0})
    meta["experiments"]["mnist"] = {
        "task": "name", "prompt": text, "rank_per_class": args.rank_per_class, "per_class": args.per_class,
        "n_ranking": len(ranking_digits["image"]),
        "n_scoring": len(scoring_digits["image"]), "ranking_index": [int(i) for i in ranking_digits["index"]],
        "scoring_index": [int(i) for i in scoring_digits["index"]], "labels": [int(y) for y in scoring_digits["label"]],
        "dictionary": list(dictionary.labels), "missing": list(getattr(dictionary, "missing", []) or []),
        "selections": {name: [head_label(*h) for h in heads[:TOP]] for name, heads in selections.items()},
        "image_attention": [[round(float(v), 6) for v in row] for row in reads],
        "random": info, "outputs": out, "seconds": seconds,
    }
    return [unedited, *frames]


def caption_edits(model, processor, args, meta) -> list[pd.DataFrame]:
    seconds: dict[str, float] = {}
    ranking_scenes = shapes.shapes_dataset(args.scenes, seed=8)
    scoring_scenes = shapes.shapes_dataset(args.scenes, seed=7)
    text = llava.prompt(processor, "caption")
    acts = timed(seconds, "record pool=image", hp_mini.record_heads, model, processor,
                 [text] * args.scenes, images=list(ranking_scenes["image"]), pool="image", batch_size=50,
                 progress=False)
    images, refs = list(scoring_scenes["image"]), list(scoring_scenes["caption"])
    frames, info = [], {}
    unedited_captions = timed(seconds, "unedited captions", llava.describe, model, processor, images)
    for concept in CAPTION_CONCEPTS:
        dictionary = vision.concept_dictionary(model, processor, concept)
        selections = timed(seconds, f"rank {concept}", rankings, acts, dictionary)
        evaluate = captioning.caption_evaluator(lambda: llava.describe(model, processor, images), refs,
                                                vision.CAPTION_CONCEPTS[concept])
        baseline = captioning.caption_evaluator(lambda: unedited_captions, refs, vision.CAPTION_CONCEPTS[concept])()
        frames.append(pd.DataFrame({"model": args.model, "experiment": f"caption {concept}", "alpha": float("nan"),
                                    "method": "unedited", "k": 0, "draw": 0, "heads": "", "metric": list(baseline),
                                    "value": list(baseline.values()), "baseline": list(baseline.values()),
                                    "normalised": 1.0}))
        info[concept] = {"dictionary": list(dictionary.labels), "baseline": baseline,
                         "selections": {n: [head_label(*h) for h in s[:TOP]] for n, s in selections.items()},
                         "random": {}, "outputs": {}}
        for alpha, k in args.caption_edits:
            table, outputs, extra = timed(seconds, f"{concept} alpha={alpha:g} k={k}", edits, model, evaluate,
                                          selections, ks=[k], alpha=alpha, acts=acts, args=args, baseline=baseline,
                                          keep="captions", experiment=f"caption {concept}")
            frames.append(table)
            info[concept]["outputs"].update({f"{alpha:g}|{key}": v for key, v in outputs.items()})
            info[concept]["random"][f"{alpha:g}"] = extra
    meta["experiments"]["caption"] = {"prompt": text, "n_ranking": args.scenes, "n_scoring": args.scenes,
                                      "ranking_seed": 8, "scoring_seed": 7, "edits": [list(e) for e in args.caption_edits],
                                      "references": refs, "unedited": unedited_captions, "concepts": info,
                                      "seconds": seconds}
    return frames


def write_whole(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank-per-class", type=int, default=10, help="digits per class to rank the heads")
    parser.add_argument("--per-class", type=int, default=6, help="further digits per class to score the edits")
    parser.add_argument("--scenes", type=int, default=60, help="scenes to rank, and as many to caption")
    parser.add_argument("--model", choices=list(SETTINGS), default="smollm2-llava")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="head counts (default: the model's SETTINGS)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[-1.0, 0.0])
    parser.add_argument("--n-random", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["mnist", "caption"], default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.ks = args.ks or SETTINGS[args.model]["ks"]
    args.caption_edits = SETTINGS[args.model]["caption_edits"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + (sys.argv[1:] if argv is None else argv)),
        "model": args.model, "ks": args.ks, "alphas": args.alphas, "n_random": args.n_random,
        "seed": args.seed, "skip_layers": SKIP_LAYERS, "random_fill": "nearest", "threads": args.threads,
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg()[0],
        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "pycocoevalcap", "hp_mini")},
        "weights_sha256": llava.llava_recipe(args.model).weights_sha256, "experiments": {},
    }
    model, processor = hp_mini.load_model(args.model, progress=False)
    meta["n_heads"] = sum(site.n_heads for site in hp_mini.attention_heads(model))
    frames = []
    for name, run in (("mnist", mnist_row), ("caption", caption_edits)):
        if args.only in (None, name):
            print(f"{name}:", flush=True)
            frames += run(model, processor, args, meta)
    meta["seconds"] = round(time.perf_counter() - start, 1)
    meta["load_average_end"] = os.getloadavg()[0]
    table = pd.concat(frames, ignore_index=True)[COLUMNS]
    write_whole(out / f"vision_{args.model}.csv", table.to_csv(index=False))
    write_whole(out / f"vision_{args.model}.json", json.dumps(meta, indent=1))
    print(f"done in {meta['seconds']:.0f} s; wrote {out}/vision_{args.model}.csv and .json")


if __name__ == "__main__":
    main()

"""digits-vlm on held-out real MNIST digits, and the paper's classification edit on it.

Usage::

    python benchmarks/digits_vlm.py                  # load (training once) hp_mini.load_model("digits-vlm")
    python benchmarks/digits_vlm.py --train          # train the default recipe afresh and time it
    python benchmarks/digits_vlm.py --draws 3        # fewer random control draws

Prints Markdown tables:

1. held-out accuracy of both questions (1,000 MNIST test digits, 100 per
   class, never seen in training), with the training time;
2. the paper's classification experiment (its Table 9, MNIST row): heads are
   recorded with ``pool="image"`` on the held-out images, ranked by SOMP on the
   dictionary of the ten digit names and the ten numerals
   (``hp_mini.rank_heads``, as many SOMP steps as atoms), and the top ``k`` are
   inverted (``alpha=-1``); the accuracy on the digit-name question is divided by
   the unedited accuracy. Controls: ten random head sets with the same number
   of heads per layer as the SOMP set and disjoint from it
   (``hp_mini.random_heads_like``, median and interquartile range), and the
   logit-lens top ``k``; beside the paper's MNIST row
   (``hp_mini.experiments.classification``). A second row scores the same
   edits by the right digit in either form ("7" or "seven"), a third by the
   share of answers in the form asked.

The paper (LLaVA-NeXT-7B, 1,024 heads) inverts 8 / 16 / 32 heads (0.8% / 1.6% /
3.1%); this model has 32 heads, so k = 1 / 2 / 3 / 4 (3% / 6% / 9% / 12.5%) are the
smallest comparable sets.
"""

from __future__ import annotations

import argparse
import time

import torch

import hp_mini
from hp_mini.experiments.driver import evaluate_head_edits
from hp_mini.experiments import classification as classification_edits
from hp_mini.vision import digits, digits_vlm


def dictionary_words() -> list[str]:
    return list(digits.DIGIT_WORDS) + list(digits.NUMERALS)


def edit_experiment(model, processor, images, labels, ks=(1, 2, 4), n_draws: int = 10, form: str = "word",
                    pool: str = "image"):
    """Rankings and the edit table (``evaluate_head_edits``) of SOMP, random and logit-lens inversions."""
    acts = hp_mini.record_heads(model, processor, [digits_vlm.question_prompt(form)] * len(images),
                                images=images, pool=pool, progress=False)
    dictionary = hp_mini.unembedding_dictionary(model, processor.tokenizer, dictionary_words())
    somp = hp_mini.rank_heads(acts, dictionary, method="somp", n_atoms=len(dictionary), progress=False)
    lens = hp_mini.rank_heads(acts, dictionary, method="logit_lens", progress=False)
    evaluate = digits_vlm.evaluator(model, processor, images, labels, form)
    table = evaluate_head_edits(model, evaluate, {"SOMP": somp.heads, "logit lens": lens.heads}, ks=ks,
                                control_pool=acts, n_random=n_draws, progress=False)
    return {"table": table, "somp": somp, "lens": lens, "n_heads": len(somp.heads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train afresh (not cached) and time it")
    parser.add_argument("--draws", type=int, default=10, help="random control draws (the paper: 10)")
    parser.add_argument("--pool", default="image", choices=["image", "last", "mean"],
                        help="where heads are pooled for the ranking (the paper: image tokens)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4], help="numbers of heads to invert")
    args = parser.parse_args()

    if args.train:
        cpu0, t0 = time.process_time(), time.perf_counter()
        model, processor, log = digits_vlm.train_digits_vlm(progress=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        how = f"trained now: {seconds:.0f} s wall, {cpu:.0f} s CPU, {log['threads']} thread"
    else:
        model, processor = hp_mini.load_model("digits-vlm")
        how = f"cached; trained in {model.config.hp_mini_training['seconds']:.0f} s wall (1 thread)"
    torch.set_num_threads(1)
    test = digits.digits_dataset("test")
    images, labels = test["image"], test["label"]

    print(f"## digits-vlm on {len(images)} held-out MNIST digits ({how})\n")
    print("| question | answer | accuracy | chance |")
    print("|---|---|---|---|")
    for form in digits_vlm.FORMS:
        acc = digits_vlm.evaluator(model, processor, images, labels, form)()["accuracy"]
        print(f"| {digits_vlm.QUESTIONS[form]} | {form} | {acc:.3f} | 0.100 |")

    t0 = time.perf_counter()
    res = edit_experiment(model, processor, images, labels, ks=args.k, n_draws=args.draws, pool=args.pool)
    table, n = res["table"], res["n_heads"]
    base = table.loc[(table["method"] == "unedited") & (table["metric"] == "accuracy"), "value"].item()
    print(f"\n## Inverting heads (alpha = -1): exact match on 'what digit is this ?' / unedited "
          f"(unedited {base:.3f}; {n} heads; pooled over {args.pool!r} positions; "
          f"random: median [IQR] of {args.draws} draws)\n")
    comparison = classification_edits.paper_comparison(table, name="digits-vlm", n_heads=n)
    print(comparison.to_markdown(disable_numparse=True))
    for metric, what in (("either_form", "the right digit in either form ('7' or 'seven')"),
                         ("asked_form", "answers in the form asked, right or wrong")):
        print(f"\n## The same edits: {what} / unedited (random: median and quartiles)\n")
        print(classification_edits.edit_summary(table, metric).round(2).to_markdown())
    top = res["somp"].to_frame(n_labels=3).head(max(args.k))
    print("\n## Top SOMP heads\n")
    print(top.to_markdown())
    print(f"\n(edit experiment: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

"""digits-clip: zero-shot classification of held-out real MNIST digits, and the paper's edit on it.

Usage::

    python benchmarks/digits_clip.py              # load (training once) the cached digits-clip
    python benchmarks/digits_clip.py --draws 3    # fewer random control draws

Prints Markdown tables: the zero-shot accuracy over the ten prompts "the digit
zero" ... "the digit nine" on the 1,000 held-out digits, then the classification
edit: the image encoder's heads are recorded on the CLS token in the joint space
(``record_image_heads(..., pool="cls", space="joint")``), ranked by SOMP on the
text embeddings of the ten prompts (10 steps) and by the logit lens (mean dot
product with them), and the top ``k`` are inverted (``alpha=-1``); zero-shot
accuracy is divided by the unedited accuracy. Random controls: same number of
heads per layer, disjoint from the SOMP set, median and IQR over the draws. The
table shows the paper's MNIST row beside ours
(``hp_mini.experiments.classification``); a second table removes the same heads
(``alpha=0``) instead of inverting them.
"""

from __future__ import annotations

import argparse
import time

import torch

import hp_mini
from hp_mini.experiments.driver import evaluate_head_edits
from hp_mini.experiments import classification as classification_edits
from hp_mini.vision import digits, digits_clip
from hp_mini.record.images import record_image_heads
from hp_mini.vision.zero_shot import text_dictionary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=10, help="random control draws (the paper: 10)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of heads to invert")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model, processor = digits_clip.load_digits_clip()
    test = digits.digits_dataset("test")
    images, labels = test["image"], test["label"]
    evaluate = digits_clip.evaluator(model, processor, images, labels)
    base = evaluate()
    print(f"## digits-clip zero-shot on {len(images)} held-out MNIST digits "
          f"(trained in {model.train_seconds:.0f} s wall, 1 thread)\n")
    print(f"| prompts | accuracy | chance |\n|---|---|---|\n| {', '.join(digits_clip.class_prompts()[:2])}, ... "
          f"| {base['accuracy']:.3f} | 0.100 |")

    t0 = time.perf_counter()
    acts = record_image_heads(model, processor, images, pool="cls", space="joint")
    dictionary = text_dictionary(model, processor, digits_clip.class_prompts())
    somp = hp_mini.rank_heads(acts, dictionary, n_atoms=len(dictionary), progress=False)
    lens = hp_mini.rank_heads(acts, dictionary, method="logit_lens", progress=False)
    n = len(somp.heads)
    selections = {"SOMP": somp.heads, "logit lens": lens.heads}
    inverted = evaluate_head_edits(model, evaluate, selections, ks=args.k, control_pool=acts, n_random=args.draws,
                                   baseline=base, progress=False)
    removed = evaluate_head_edits(model, evaluate, selections, ks=args.k, alpha=0.0, baseline=base, progress=False)
    print(f"\n## Inverting image-encoder heads (alpha = -1): zero-shot accuracy / unedited "
          f"(unedited {base['accuracy']:.3f}; {n} heads; random: median [IQR] of {args.draws} draws)\n")
    comparison = classification_edits.paper_comparison(inverted, name="digits-clip", n_heads=n)
    print(comparison.to_markdown(disable_numparse=True))
    print("\n## Removing the same heads (alpha = 0) instead: zero-shot accuracy / unedited\n")
    print(classification_edits.edit_summary(removed).round(2).to_markdown())
    print("\n## Share of images given the most frequent prediction, heads inverted "
          f"(unedited {base['top_class_share']:.3f})\n")
    print(classification_edits.edit_summary(inverted, "top_class_share", column="value").round(2).to_markdown())
    print("\n## Top SOMP heads\n")
    print(somp.to_frame(n_labels=3).head(max(args.k)).to_string())
    print(f"\n(edit experiment: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

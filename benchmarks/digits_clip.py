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
heads per layer, disjoint from the SOMP set, median and IQR over the draws.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import hp_mini
from hp_mini.vision import digits, digits_clip
from hp_mini.vision.image_heads import record_image_heads
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
    base = digits_clip.zero_shot_accuracy(model, processor, images, labels)
    print(f"## digits-clip zero-shot on {len(images)} held-out MNIST digits "
          f"(trained in {model.train_seconds:.0f} s wall, 1 thread)\n")
    print(f"| prompts | accuracy | chance |\n|---|---|---|\n| {', '.join(digits_clip.class_prompts()[:2])}, ... "
          f"| {base:.3f} | 0.100 |")

    t0 = time.perf_counter()
    acts = record_image_heads(model, processor, images, pool="cls", space="joint")
    dictionary = text_dictionary(model, processor, digits_clip.class_prompts())
    somp = hp_mini.rank_heads(acts, dictionary, n_atoms=len(dictionary), progress=False)
    lens = hp_mini.rank_heads(acts, dictionary, method="logit_lens", progress=False)
    n = len(somp.heads)

    def normalised(heads) -> float:
        with hp_mini.scale_heads(model, {h: -1.0 for h in heads}):
            return digits_clip.zero_shot_accuracy(model, processor, images, labels) / base

    rows: dict[str, list[str]] = {"SOMP": [], "random": [], "logit lens": []}
    for k in args.k:
        rows["SOMP"].append(f"{normalised(somp.top(k)):.2f}")
        draws = hp_mini.random_heads_like(somp.top(k), acts, n_draws=args.draws, seed=0)
        q1, med, q3 = np.percentile([normalised(d) for d in draws], [25, 50, 75])
        rows["random"].append(f"{med:.2f} [{q1:.2f}, {q3:.2f}]")
        rows["logit lens"].append(f"{normalised(lens.top(k)):.2f}")
    print(f"\n## Inverting image-encoder heads (alpha = -1): zero-shot accuracy / unedited "
          f"(unedited {base:.3f}; {n} heads; random: median [IQR] of {args.draws} draws)\n")
    print("| heads | " + " | ".join(f"k = {k} ({k / n:.1%})" for k in args.k) + " |")
    print("|---|" + "---|" * len(args.k))
    for name, vals in rows.items():
        print(f"| {name} | " + " | ".join(vals) + " |")
    print("\n## Top SOMP heads\n")
    print(somp.to_frame(n_labels=3).head(max(args.k)).to_string())
    print(f"\n(edit experiment: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

"""Train shapes-vlm from scratch and measure it: training time, answer accuracy, caption accuracy.

Usage::

    python benchmarks/shapes_vlm.py                    # train the default recipe (the one load_model caches)
    python benchmarks/shapes_vlm.py --set steps=300    # a variant of the recipe (numbers only)
    python benchmarks/shapes_vlm.py --cached           # evaluate hp_mini.load_model("shapes-vlm"), no training

Held-out scenes are seed 7 (training draws from seed 1000). Questions are
answered greedily with one new token and scored by exact match; captions are
read back with ``hp_mini.vision.metrics.parse_caption`` and count as right
only when all five attributes (count, size, colour, shape, position) are.
The targets of the project are 95% per classification question (colour,
shape, count) and 90% captions with every attribute right.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import hp_mini
from hp_mini.vision import metrics, shapes, vlm


def evaluate(model, processor, n: int = 500, seed: int = 7) -> dict[str, float]:
    ds = shapes.shapes_dataset(n, seed=seed)
    images, attrs = ds["image"], ds["attributes"]
    out: dict[str, float] = {}
    for k in shapes.ATTRIBUTES:
        j = shapes.ATTRIBUTES.index(k)
        out[f"answer_{k}"] = metrics.classification_accuracy(
            vlm.ask(model, processor, images, k), [a[j] for a in ds["answers"]]
        )
    caps = vlm.describe(model, processor, images)
    out.update({f"caption_{k}": v for k, v in metrics.caption_attribute_accuracy(caps, attrs).items()})
    out["caption_bleu"] = metrics.bleu(caps, ds["caption"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="override a numeric recipe field, e.g. steps=300")
    parser.add_argument("--cached", action="store_true", help="evaluate hp_mini.load_model('shapes-vlm') instead")
    parser.add_argument("--held-out", type=int, default=500, help="number of held-out scenes")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    result: dict[str, object] = {"threads": torch.get_num_threads()}
    if args.cached:
        model, processor = hp_mini.load_model("shapes-vlm")
        result["train_seconds_when_cached"] = model.config.hp_mini_training["seconds"]
    else:
        settings = {}
        for item in args.set:
            key, value = item.split("=", 1)
            if key not in vlm.TRAINING:
                parser.error(f"unknown recipe field {key!r}; fields: {', '.join(vlm.TRAINING)}")
            settings[key] = type(vlm.TRAINING[key])(value)
        cpu0, t0 = time.process_time(), time.perf_counter()
        model, processor, log = vlm.train_shapes_vlm(settings=settings, progress=not args.json)
        result["train_seconds"] = time.perf_counter() - t0
        result["train_cpu_seconds"] = time.process_time() - cpu0
        result["final_loss"] = sum(log["losses"][-20:]) / 20
        result["settings"] = settings
    t0 = time.perf_counter()
    result.update(evaluate(model, processor, n=args.held_out))
    result["eval_seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v:.3f}" if isinstance(v, float) else f"{k:>28}: {v}")


if __name__ == "__main__":
    main()

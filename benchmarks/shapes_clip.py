"""Train shapes-clip from scratch and measure it: training time and zero-shot accuracy per attribute.

Usage::

    python benchmarks/shapes_clip.py                      # the default recipe (the one load_model caches)
    python benchmarks/shapes_clip.py --set steps=300      # a variant of the recipe
    python benchmarks/shapes_clip.py --cached             # evaluate the cached model, no training

Held-out scenes are seed 1 (training uses seed 0). Zero-shot prompts are the
one-attribute descriptions of ``hp_mini.vision.scene_prompts.concept_prompts`` ("red
shapes", "circles", "three shapes", ...); chance is 1 / number of values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from hp_mini.vision.shapes import ATTRIBUTES, render_scene, scenes
from hp_mini.vision.shapes_clip import ShapesCLIPConfig, load_shapes_clip, train_shapes_clip
from hp_mini.vision.zero_shot import zero_shot_accuracies


def evaluate(model, processor, n: int = 1000, seed: int = 1) -> dict[str, float]:
    items = scenes(n, seed=seed)
    images = [render_scene(s) for s in items]
    return zero_shot_accuracies(model, processor, images, {a: [s.attributes()[a] for s in items] for a in ATTRIBUTES})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="override a recipe field, e.g. steps=300")
    parser.add_argument("--cached", action="store_true", help="evaluate hp_mini.load_model('shapes-clip') instead")
    parser.add_argument("--held-out", type=int, default=1000, help="number of held-out scenes")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    if args.cached:
        t0 = time.perf_counter()
        model, processor = load_shapes_clip(progress=False)
        seconds = getattr(model, "train_seconds", None)
        config = None
        cpu_seconds = None
        print(f"loaded in {time.perf_counter() - t0:.1f} s (training took {seconds:.1f} s when cached)")
    else:
        fields = {f.name: f.type for f in dataclasses.fields(ShapesCLIPConfig)}
        overrides = {}
        for item in args.set:
            key, value = item.split("=", 1)
            if key not in fields:
                parser.error(f"unknown recipe field {key!r}; fields: {', '.join(fields)}")
            overrides[key] = type(getattr(ShapesCLIPConfig(), key))(value)
        config = ShapesCLIPConfig(**overrides)
        cpu0 = time.process_time()
        model, processor, seconds = train_shapes_clip(config, progress=False)
        cpu_seconds = time.process_time() - cpu0
    acc = evaluate(model, processor, n=args.held_out)
    if args.json:
        print(json.dumps({"overrides": args.set, "threads": torch.get_num_threads(), "train_seconds": seconds, "train_cpu_seconds": cpu_seconds, **acc}))
        return
    print(f"threads: {torch.get_num_threads()}   training: {seconds:.1f} s wall"
          + (f", {cpu_seconds:.1f} s CPU (all threads)" if cpu_seconds is not None else ""))
    if config is not None:
        print("recipe:", dataclasses.asdict(config))
    print(f"zero-shot accuracy on {args.held_out} held-out scenes (seed 1):")
    for a, v in acc.items():
        print(f"  {a:9s} {v:.3f}")


if __name__ == "__main__":
    main()

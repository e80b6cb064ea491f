"""Step 2, read: what a head's write means, in the vocabulary.

- :mod:`~hp_mini.read.dictionary`: the logit-lens dictionary (:func:`unembedding_dictionary`)
  and the concept word lists.
- :mod:`~hp_mini.read.lens`: the logit lens of every head at once.
- :mod:`~hp_mini.read.copying`: copy scores (does a head write what it attends to?).
"""

from __future__ import annotations

from hp_mini.read.dictionary import Dictionary, concept_names, concept_words, unembedding_dictionary

__all__ = ["concept_names", "concept_words", "Dictionary", "unembedding_dictionary"]

"""hp_mini: Head Pursuit in miniature.

The pipeline, one module a step::

    models       load_model, prepare_model       a model and its tokenizer; the embedded models
    architectures model_parts, register_architecture  one declaration per model family
    hooks        Trace                           read or edit a module inside a with block
    heads        attention_heads                 where each layer's heads are
    activations  record_heads -> HeadActivations what each head writes, pooled per prompt
    dictionary   unembedding_dictionary          directions that decode to tokens; concept word lists
    pursuit      somp, omp, matching_pursuit     sparse codes of signals in a dictionary
    ranking      rank_heads, random_heads_like   heads ranked for a concept, and random controls
    editing      scale_heads                     scale chosen heads during forward passes
    generation   generate                        greedy text, with or without edits
"""

from __future__ import annotations

import os as _os

import torch as _torch

from .activations import HeadActivations, HeadMoments, record_heads
from .architectures import ModelParts, model_parts
from .hooks import Trace
from .dictionary import Dictionary, concept_names, concept_words, unembedding_dictionary
from .editing import scale_heads
from .generation import generate
from .heads import LayerHeads, attention_heads, head_label, parse_head_label, register_architecture
from .models import (
    DEFAULT_MODEL,
    GEMMA_TERMS_NOTICE,
    ModelNotAvailableError,
    cache_dir,
    load_model,
    model_names,
    prepare_model,
    register_model,
)
from .pursuit import FactoredSignals, PursuitResult, matching_pursuit, omp, somp, somp_factored
from .ranking import HeadRanking, pursue_heads, random_heads_like, rank_heads

# A small CPU box gets its cores' worth of threads, not more (set OMP_NUM_THREADS to override).
if "OMP_NUM_THREADS" not in _os.environ:
    _cores = len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else (_os.cpu_count() or 1)
    _torch.set_num_threads(max(1, min(_torch.get_num_threads(), _cores)))

__version__ = "0.1.0"


def __getattr__(name: str):
    # The scene generator lives in hp_mini.vision, imported only when asked for.
    if name == "shapes_dataset":
        from .vision.shapes import shapes_dataset

        return shapes_dataset
    raise AttributeError(f"module 'hp_mini' has no attribute {name!r}")

__all__ = [
    "shapes_dataset",
    "DEFAULT_MODEL",
    "Dictionary",
    "HeadActivations",
    "HeadMoments",
    "HeadRanking",
    "LayerHeads",
    "ModelParts",
    "Trace",
    "model_parts",
    "ModelNotAvailableError",
    "FactoredSignals",
    "PursuitResult",
    "attention_heads",
    "cache_dir",
    "concept_names",
    "concept_words",
    "generate",
    "head_label",
    "parse_head_label",
    "load_model",
    "model_names",
    "prepare_model",
    "GEMMA_TERMS_NOTICE",
    "matching_pursuit",
    "omp",
    "pursue_heads",
    "random_heads_like",
    "rank_heads",
    "record_heads",
    "register_architecture",
    "register_model",
    "scale_heads",
    "somp",
    "somp_factored",
    "unembedding_dictionary",
]

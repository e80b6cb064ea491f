"""hp_mini: Head Pursuit in miniature.

The package is laid out by pipeline step, one subpackage a step::

    model/        load_model, attention_heads, Trace   a model, its families, its heads, hooks, the cache
    record/       record_heads -> HeadActivations      what each head writes into the residual stream
    read/         unembedding_dictionary, logit lens   what a write means in the vocabulary
    pursuit/      somp, omp, matching_pursuit          sparse codes of signals in a dictionary
    rank/         rank_heads, random_heads_like        heads ranked for a concept, and controls
    edit/         scale_heads, generate                scale chosen heads; generate with the edits
    experiments/  evaluate_head_edits, QA, toxicity    the paper's experiments, data and tables
    viz/          widgets, heatmaps                    seeing the results
    vision/       scenes, digits, CLIP and LLaVA       the image data sets and the trained vision models
    exercises/    checkers and the grader              the book's exercises

Every name below is importable from ``hp_mini`` itself.
"""

from __future__ import annotations

from hp_mini.edit.generation import generate
from hp_mini.edit.scaling import scale_heads
from hp_mini.model.architectures import ModelParts, model_parts, register_architecture
from hp_mini.model.heads import attention_heads
from hp_mini.model.hooks import Trace
from hp_mini.model.loading import (
    DEFAULT_MODEL,
    GEMMA_TERMS_NOTICE,
    ModelNotAvailableError,
    cache_dir,
    load_model,
    model_names,
    prepare_model,
    register_model,
)
from hp_mini.model.sites import Head, LayerHeads, head_label, parse_head_label
from hp_mini.pursuit import FactoredSignals, PursuitResult, matching_pursuit, omp, somp, somp_factored
from hp_mini.rank.controls import random_heads_like
from hp_mini.rank.ranking import HeadRanking, pursue_heads, rank_heads
from hp_mini.read.dictionary import Dictionary, concept_names, concept_words, unembedding_dictionary
from hp_mini.record.activations import HeadActivations, HeadMoments, record_heads

__version__ = "0.1.0"


def __getattr__(name: str):
    # The scene generator lives in hp_mini.vision, imported only when asked for.
    if name == "shapes_dataset":
        from hp_mini.vision.shapes import shapes_dataset

        return shapes_dataset
    raise AttributeError(f"module 'hp_mini' has no attribute {name!r}")

__all__ = [
    "shapes_dataset",
    "Head",
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
